"""Platform definitions and the institution catalog: data, loaded into pydantic models.

A *platform* is an EHR product (Epic, Oracle Health, athenahealth, …): how its SMART
authorization works, which token-endpoint authentication it wants, and the quirks of its
FHIR searches. An *institution* is one hospital's FHIR base URL on a platform. Both ship as
JSON beside this module (``platforms/``); more institutions can be listed in a file named
by ``EHI_SOURCES_CATALOG_FILE`` (same shape as ``platforms/catalog.json``), so a user can
add their hospital without code; more platforms in a file named by
``EHI_SOURCES_DEFINITIONS_FILE`` (a JSON list of platforms; the developer console saves
working registrations there; see :func:`use_user_definitions`). Pure apart from reading
those files.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

TokenAuth = Literal["none", "client_secret_basic", "private_key_jwt"]

PLATFORMS_FILE = Path(__file__).parent / "platforms" / "platforms.json"
CATALOG_FILE = Path(__file__).parent / "platforms" / "catalog.json"


class Platform(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    name: str
    docs_url: str | None = None
    discovery: bool = True
    """Read the endpoints from ``{base}/.well-known/smart-configuration`` (then ``metadata``)."""
    authorize_endpoint: str | None = None
    """Explicit endpoint; ``{origin}`` is the FHIR base URL's scheme and host."""
    token_endpoint: str | None = None
    scopes: tuple[str, ...]
    pkce: bool = True
    confidential: bool = False
    token_auth: TokenAuth = "none"
    signing_algs: tuple[str, ...] = ("ES384", "RS384")
    headers: dict[str, str] = {}
    """Extra headers on every FHIR request; ``{client_id}`` is replaced."""
    requests_per_second: float = Field(default=0, ge=0)
    """Pace of FHIR requests per sync (0: unpaced)."""
    max_in_flight: int = Field(default=5, ge=1, le=5)
    everything: bool = False
    """Whether ``Patient/{id}/$everything`` works; otherwise one search per resource type."""
    resource_types: tuple[str, ...] | None = None
    """Types searched (default: the US Core list)."""
    search_params: dict[str, tuple[dict[str, str], ...]] = {}
    """Per type, the searches needed (each one a set of extra parameters)."""
    patient_param_on_every_search: bool = False
    page_size: int = Field(default=50, ge=1, le=1000)
    follow_references: bool = True
    sandbox_profile: str | None = None
    """A profile of the simulator's SMART sandbox: its base URL comes from the setting."""
    default_client_id: str | None = None
    response_mode: Literal["query", "fragment"] | None = None
    """Ask for the code in the redirect's query (default) or fragment (``response_mode``)."""

    def endpoint(self, template: str | None, fhir_base_url: str) -> str | None:
        if template is None:
            return None
        parts = urlsplit(fhir_base_url)
        return template.replace("{origin}", f"{parts.scheme}://{parts.netloc}")

    def types(self, us_core: tuple[str, ...]) -> tuple[str, ...]:
        return self.resource_types if self.resource_types is not None else us_core


class Institution(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    name: str
    platform: str
    fhir_base_url: str

    @field_validator("fhir_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("fhir_base_url must be an http(s) URL")
        return value.rstrip("/")


class Definitions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    us_core_types: tuple[str, ...]
    platforms: tuple[Platform, ...]

    def platform(self, platform_id: str) -> Platform:
        for platform in self.platforms:
            if platform.id == platform_id:
                return platform
        raise KeyError(platform_id)


class CatalogError(ValueError):
    """The catalog file is unreadable or names an unknown platform."""


_user_file: Path | None = None


def use_user_definitions(path: Path | None) -> None:
    """Also load the platforms of ``path`` (a JSON list; same id as a shipped one: the
    file's wins). Called once at start with the setting."""
    global _user_file
    if path != _user_file:
        _user_file = path
        definitions.cache_clear()


def read_user_platforms(path: Path) -> list[Platform]:
    """The platforms of a user definitions file (none when it does not exist yet)."""
    try:
        raw = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise CatalogError(f"{path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(raw, list):
        raise CatalogError(f"{path}: expected a JSON list of platforms")
    try:
        return [Platform.model_validate(p) for p in raw]
    except ValueError as exc:
        raise CatalogError(f"{path}: {exc}") from exc


@cache
def definitions() -> Definitions:
    shipped = Definitions.model_validate_json(PLATFORMS_FILE.read_bytes())
    if _user_file is None:
        return shipped
    extra = read_user_platforms(_user_file)
    ids = {p.id for p in extra}
    platforms = tuple(p for p in shipped.platforms if p.id not in ids) + tuple(extra)
    return shipped.model_copy(update={"platforms": platforms})


def load_catalog(extra_file: Path | None = None) -> list[Institution]:
    """The shipped institutions, then those of ``extra_file`` (same id: the file wins)."""
    entries = [Institution.model_validate(e) for e in json.loads(CATALOG_FILE.read_bytes())]
    if extra_file is not None:
        try:
            raw = json.loads(Path(extra_file).read_bytes())
            if not isinstance(raw, list):
                raise CatalogError(f"{extra_file}: expected a JSON list of institutions")
            extra = [Institution.model_validate(e) for e in raw]
        except (OSError, ValueError) as exc:
            if isinstance(exc, CatalogError):
                raise
            raise CatalogError(f"{extra_file}: {type(exc).__name__}: {exc}") from exc
        ids = {e.id for e in extra}
        entries = [e for e in entries if e.id not in ids] + extra
    known = {p.id for p in definitions().platforms}
    for entry in entries:
        if entry.platform not in known:
            raise CatalogError(
                f"institution {entry.id!r} names unknown platform {entry.platform!r}"
            )
    return entries


def sandbox_base_url(sandbox_url: str, platform: Platform) -> str | None:
    """The FHIR base of a sandbox profile on the sandbox at ``sandbox_url``."""
    if platform.sandbox_profile is None or not sandbox_url:
        return None
    return f"{sandbox_url.rstrip('/')}/{platform.sandbox_profile}/fhir"
