"""The SMART sandbox's HTTP app (FastAPI) and :class:`SmartSandbox`, which runs it with uvicorn
on a background thread.

    with SmartSandbox(SmartConfig()) as sandbox:
        sandbox.url, sandbox.fhir_base("epic"), sandbox.state.add_fault(...)

Routes: ``/{profile}/fhir/…`` (discovery, metadata, FHIR), ``/{profile}/oauth/authorize`` and
``/token``, and the control API ``/_smart/…`` (loopback only). Nothing here logs tokens,
codes, secrets, assertions or resource content.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
import re
import socket
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import httpx
import jinja2
import orjson
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from markupsafe import escape
from pydantic import BaseModel, Field

from ehi_bridge.simulator.server import bind_listener
from ehi_bridge.simulator.smart import fhir, oauth
from ehi_bridge.simulator.smart.config import PROFILES, SmartConfig
from ehi_bridge.simulator.smart.state import (
    DEFAULT_TIMES,
    FAULT_KINDS,
    Client,
    Fault,
    Grant,
    PendingAuthorization,
    SmartState,
)
from ehi_bridge.simulator.smart.store import Store, default_store

log = logging.getLogger("ehi_bridge.simulator.smart")
_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
)
_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]+$")
US_CORE_TYPES = (
    "AllergyIntolerance",
    "Binary",
    "CarePlan",
    "CareTeam",
    "Condition",
    "Device",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "Goal",
    "Immunization",
    "Location",
    "Medication",
    "MedicationRequest",
    "Observation",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
)
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class Sandbox:
    """What the routes share: state, data, and the origin (``http://host:port``)."""

    def __init__(self, state: SmartState, store: Store, origin: str = "") -> None:
        self.state = state
        self.store = store
        self.origin = origin

    def fhir_base(self, profile: str) -> str:
        return f"{self.origin}/{profile}/fhir"

    def token_url(self, profile: str) -> str:
        return f"{self.origin}/{profile}/oauth/token"


def path_kind(path: str) -> str:
    """What a request path is, for ``/_smart/stats`` ``by_path_kind``."""
    if path.endswith("/.well-known/smart-configuration"):
        return "discovery"
    if path.endswith("/oauth/authorize"):
        return "authorize"
    if path.endswith("/oauth/token"):
        return "token"
    _, sep, rest = path.partition("/fhir/")
    if not sep:
        return "other"
    parts = rest.split("/")
    if parts == ["metadata"]:
        return "metadata"
    if len(parts) == 3 and parts[2] == "$everything":
        return "everything"
    if len(parts) == 2:
        return "binary" if parts[0] == "Binary" else "read"
    return "search" if len(parts) == 1 else "other"


class _Track:
    """Counts requests per kind and the requests in flight per client host."""

    def __init__(self, app: Any, state: SmartState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_smart"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        host = str(client[0]) if client else "unknown"
        self.state.enter(host, path_kind(scope["path"]))
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.leave(host)


# --- helpers --------------------------------------------------------------------------------


def _sandbox(request: Request) -> Sandbox:
    sandbox: Sandbox = request.app.state.sandbox
    return sandbox


def _profile(profile: str) -> str:
    if profile not in PROFILES:
        raise HTTPException(404, "unknown profile")
    return profile


def _fhir(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status, media_type=fhir.FHIR_JSON, headers=headers)


def _outcome(status: int, code: str, diagnostics: str, **headers: str) -> Response:
    return _fhir(fhir.operation_outcome(code, diagnostics), status, headers or None)


def _oauth_error(error: oauth.OAuthError) -> JSONResponse:
    headers = dict(NO_STORE)
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="smart-sandbox"'
    return JSONResponse(
        {"error": error.error, "error_description": error.description},
        status_code=error.status,
        headers=headers,
    )


def _page(title: str, message: str, status: int = 400) -> HTMLResponse:
    template = "<!doctype html><title>{t}</title><h1>{t}</h1><p>{m}</p>"
    return HTMLResponse(template.format(t=escape(title), m=escape(message)), status)


def _redirect(uri: str, params: dict[str, str | None], mode: str) -> RedirectResponse:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    if mode == "fragment":
        target = f"{uri}#{query}"
    else:
        target = f"{uri}{'&' if urlsplit(uri).query else '?'}{query}"
    return RedirectResponse(target, status_code=303)


def _form_str(form: Any, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


def _accepts_fhir_json(accept: str | None) -> bool:
    accept = accept or ""
    return "fhir+json" in accept or "application/json" in accept


def _params(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.query_params.multi_items()}


# --- discovery ------------------------------------------------------------------------------

discovery = APIRouter()


@discovery.get("/{profile}/fhir/.well-known/smart-configuration")
async def smart_configuration(profile: str, request: Request) -> Response:
    box = _sandbox(request)
    body = fhir.smart_configuration(_profile(profile), box.origin, oauth.AUTH_METHODS)
    return Response(body, media_type="application/json")


@discovery.get("/{profile}/fhir/metadata")
async def metadata(profile: str, request: Request) -> Response:
    box = _sandbox(request)
    return _fhir(fhir.capability_statement(_profile(profile), box.origin, US_CORE_TYPES))


# --- authorize ------------------------------------------------------------------------------

authorization = APIRouter()


@authorization.get("/{profile}/oauth/authorize")
async def authorize(profile: str, request: Request) -> Response:
    box = _sandbox(request)
    _profile(profile)
    q = request.query_params
    client = box.state.client(profile, q.get("client_id", ""))
    if client is None:
        return _page("Unknown app", "This client_id is not registered with the sandbox.")
    redirect_uri = q.get("redirect_uri", "")
    if not redirect_uri or not oauth.redirect_allowed(client.redirect_uris, redirect_uri):
        return _page("Bad redirect", "The redirect_uri is not registered for this app.")
    mode = q.get("response_mode", "query")
    state_value = q.get("state")

    def fail(error: str, description: str) -> Response:
        params = {"error": error, "error_description": description, "state": state_value}
        return _redirect(redirect_uri, params, "fragment" if mode == "fragment" else "query")

    if mode not in ("query", "fragment"):
        return fail("invalid_request", "response_mode must be query or fragment")
    if q.get("response_type") != "code":
        return fail("unsupported_response_type", "response_type must be code")
    challenge = q.get("code_challenge", "")
    if q.get("code_challenge_method") != "S256" or not challenge:
        return fail("invalid_request", "PKCE with code_challenge_method=S256 is required")
    if q.get("aud", "").rstrip("/") != box.fhir_base(profile):
        return fail("invalid_request", "aud must be this server's FHIR base URL")
    scopes = oauth.parse_scopes(q.get("scope"))
    if not scopes:
        return fail("invalid_scope", "scope is required")
    pending = PendingAuthorization(
        profile=profile,
        client_id=client.client_id,
        redirect_uri=redirect_uri,
        scopes=scopes,
        state=state_value,
        code_challenge=challenge,
        response_mode=mode,
        expires_at=box.state.now() + box.state.config.authorize_request_ttl_seconds,
    )
    request_id = box.state.add_pending(pending)
    patients = [p.info for p in box.store.patients]
    if box.state.fixed_patient_id:
        patients = [p for p in patients if p.id == box.state.fixed_patient_id]
    html = _TEMPLATES.get_template("consent.html").render(
        profile=profile,
        client_id=client.client_id,
        redirect_host=urlsplit(redirect_uri).netloc,
        request_id=request_id,
        patients=patients,
        scopes=scopes,
    )
    return HTMLResponse(html, headers=NO_STORE)


@authorization.post("/{profile}/oauth/authorize")
async def consent(profile: str, request: Request) -> Response:
    box = _sandbox(request)
    _profile(profile)
    form = await request.form()
    pending = box.state.take_pending(_form_str(form, "request_id") or "")
    if pending is None or pending.profile != profile:
        return _page("Expired", "This authorization request is unknown or has expired.")
    if _form_str(form, "decision") != "allow":
        params = {"error": "access_denied", "state": pending.state}
        return _redirect(pending.redirect_uri, params, pending.response_mode)
    patient_id = _form_str(form, "patient") or ""
    fixed = box.state.fixed_patient_id
    if box.store.patient(patient_id) is None or (fixed and patient_id != fixed):
        return _page("Unknown patient", "Choose one of the listed patients.")
    ticked = {v for v in form.getlist("scope") if isinstance(v, str)}
    scopes = [s for s in pending.scopes if s in ticked]
    code = box.state.issue_code(pending, patient_id, scopes)
    log.info("smart consent given", extra={"profile": profile, "client_id": pending.client_id})
    return _redirect(
        pending.redirect_uri, {"code": code, "state": pending.state}, pending.response_mode
    )


# --- token ----------------------------------------------------------------------------------


async def _fetch_jwks(url: str, seconds: float) -> dict[str, Any]:
    try:
        async with httpx.AsyncClient(timeout=seconds) as http:
            response = await http.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        jwks = orjson.loads(response.content)
    except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
        raise oauth.OAuthError(
            "invalid_client", "the client's JWKS could not be fetched", 401
        ) from exc
    if not isinstance(jwks, dict):
        raise oauth.OAuthError("invalid_client", "the client's JWKS is not a JSON object", 401)
    return jwks


def _unverified_issuer(assertion: str) -> str | None:
    """The ``iss`` of a JWT, unverified: only to find whose keys verify it."""
    try:
        payload = assertion.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, orjson.JSONDecodeError):
        return None
    iss = claims.get("iss") if isinstance(claims, dict) else None
    return iss if isinstance(iss, str) else None


async def _authenticate_client(box: Sandbox, profile: str, request: Request, form: Any) -> Client:
    invalid = oauth.OAuthError("invalid_client", "client authentication failed", 401)
    form_client_id = _form_str(form, "client_id")
    basic = oauth.parse_basic(request.headers.get("authorization"))
    assertion = _form_str(form, "client_assertion")
    if basic is not None:
        client_id, secret = basic
        client = box.state.client(profile, client_id)
        if (
            client is None
            or client.auth_method != "client_secret_basic"
            or not oauth.secret_matches(secret, client.client_secret)
            or (form_client_id and form_client_id != client_id)
        ):
            raise invalid
        return client
    if assertion is not None:
        if _form_str(form, "client_assertion_type") != oauth.ASSERTION_TYPE:
            raise oauth.OAuthError("invalid_client", "unsupported client_assertion_type", 401)
        client_id = form_client_id or _unverified_issuer(assertion) or ""
        client = box.state.client(profile, client_id)
        if client is None or client.auth_method != "private_key_jwt":
            raise invalid
        cfg = box.state.config
        jwks = client.jwks
        if jwks is None:
            if not client.jwks_url:
                raise invalid
            jwks = await _fetch_jwks(client.jwks_url, cfg.jwks_fetch_timeout_seconds)
        claims = oauth.verify_client_assertion(
            assertion,
            jwks,
            client_id=client_id,
            audience=box.token_url(profile),
            now=box.state.now(),
            max_lifetime=cfg.max_assertion_lifetime_seconds,
            leeway=cfg.assertion_leeway_seconds,
        )
        if not box.state.remember_jti(client_id, claims.jti, claims.exp):
            raise oauth.OAuthError("invalid_client", "the assertion's jti was used before", 400)
        return client
    client = box.state.client(profile, form_client_id or "")
    if client is None or client.auth_method != "none":
        raise invalid
    return client


def _exchange_code(box: Sandbox, profile: str, client: Client, form: Any) -> Grant:
    found = box.state.redeem_code(_form_str(form, "code") or "")
    bad = "the authorization code is invalid, expired or used"
    if found is None or found.profile != profile or found.client_id != client.client_id:
        raise oauth.OAuthError("invalid_grant", bad)
    if _form_str(form, "redirect_uri") != found.redirect_uri:
        raise oauth.OAuthError("invalid_grant", "redirect_uri does not match the authorization")
    if not oauth.verify_pkce(_form_str(form, "code_verifier"), found.code_challenge):
        raise oauth.OAuthError("invalid_grant", "the PKCE code_verifier does not match")
    return box.state.new_grant(found)


def _refresh(box: Sandbox, profile: str, client: Client, form: Any) -> Grant:
    grant = box.state.use_refresh(_form_str(form, "refresh_token") or "")
    if grant is None or grant.profile != profile or grant.client_id != client.client_id:
        raise oauth.OAuthError("invalid_grant", "the refresh token is invalid or was used")
    if box.state.take_fault("invalid_grant", profile, None) is not None:
        box.state.revoke_grant(grant.grant_id)
        raise oauth.OAuthError("invalid_grant", "the grant was revoked")
    return grant


token_router = APIRouter()


@token_router.post("/{profile}/oauth/token")
async def token(profile: str, request: Request) -> Response:
    box = _sandbox(request)
    _profile(profile)
    box.state.count_token_request(profile)
    form = await request.form()
    grant_type = _form_str(form, "grant_type")
    try:
        client = await _authenticate_client(box, profile, request, form)
        if grant_type == "authorization_code":
            grant = _exchange_code(box, profile, client, form)
        elif grant_type == "refresh_token":
            grant = _refresh(box, profile, client, form)
        else:
            raise oauth.OAuthError("unsupported_grant_type", "unsupported grant_type")
    except oauth.OAuthError as exc:
        log.info("smart token refused", extra={"profile": profile, "error": exc.error})
        return _oauth_error(exc)
    access, refresh, ttl = box.state.issue_tokens(grant)
    body: dict[str, Any] = {
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": int(ttl) if float(ttl).is_integer() else ttl,
        "scope": " ".join(grant.scopes),
        "patient": grant.patient_id,
        "need_patient_banner": False,
    }
    if refresh is not None:
        body["refresh_token"] = refresh
    log.info("smart token issued", extra={"profile": profile, "grant_type": grant_type})
    return JSONResponse(body, headers=NO_STORE)


# --- FHIR -----------------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


async def _gate(box: Sandbox, profile: str, request: Request, rtype: str | None) -> Grant:
    """Faults that come before the answer (slow, rate_limit), the bearer token, forbidden_type."""
    slow = box.state.take_fault("slow", profile, rtype)
    if slow is not None and slow.delay_ms > 0:
        await asyncio.sleep(slow.delay_ms / 1000)
    limited = box.state.take_fault("rate_limit", profile, rtype)
    if limited is not None:
        raise _Refused(
            _outcome(
                429, "throttled", "too many requests", **{"Retry-After": str(limited.retry_after)}
            )
        )
    realm = 'Bearer realm="smart-sandbox"'
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise _Refused(
            _outcome(401, "login", "a bearer token is required", **{"WWW-Authenticate": realm})
        )
    grant, why = box.state.access(value.strip())
    if grant is None or grant.profile != profile:
        why = why or "the token belongs to another server"
        header = f'{realm}, error="invalid_token", error_description="{why}"'
        raise _Refused(_outcome(401, "login", why, **{"WWW-Authenticate": header}))
    if rtype is not None and box.state.take_fault("forbidden_type", profile, rtype) is not None:
        raise _Refused(_outcome(403, "forbidden", f"access to {rtype} is not allowed"))
    return grant


def _finish(box: Sandbox, profile: str, rtype: str, body: bytes) -> Response:
    if box.state.take_fault("malformed_json", profile, rtype) is not None:
        body = body[: max(1, len(body) // 2)]
    return _fhir(body)


fhir_router = APIRouter()


@fhir_router.get("/{profile}/fhir/Patient/{patient_id}/$everything")
async def everything(profile: str, patient_id: str, request: Request) -> Response:
    box = _sandbox(request)
    _profile(profile)
    try:
        grant = await _gate(box, profile, request, "Patient")
    except _Refused as refused:
        return refused.response
    if not fhir.everything_supported(profile):
        return _outcome(400, "not-supported", "Patient/$everything is not supported")
    if patient_id != grant.patient_id:
        return _outcome(403, "forbidden", "the token is for another patient")
    if not oauth.scope_allows(grant.scopes, "*", "search"):
        return _outcome(403, "forbidden", "$everything needs patient/*.read")
    records = box.store.patient(patient_id)
    if records is None:
        return _outcome(404, "not-found", "unknown patient")
    params = _params(request)
    try:
        count = fhir.page_size(params, box.state.config.default_page_size)
        key = fhir.search_key(profile, "$everything", patient_id, str(count))
        token_value = params.get(fhir.PAGE_PARAM)
        offset = fhir.decode_page_token(token_value, key) if token_value else 0
    except fhir.FhirError as exc:
        return _fhir(exc.body(), exc.status)
    base = box.fhir_base(profile)
    url = f"{base}/Patient/{patient_id}/$everything"
    entries = fhir.everything_docs(records)
    page = fhir.paginate([doc for doc, _ in entries], offset, count)
    modes = entries[offset : offset + count]
    query = list(request.query_params.multi_items())
    self_url = fhir.page_url(url, query, token_value)
    next_url = None
    if page.next_offset is not None:
        next_url = fhir.page_url(url, query, fhir.encode_page_token(page.next_offset, key))
    body = fhir.searchset(base, modes, total=page.total, self_url=self_url, next_url=next_url)
    return _finish(box, profile, "Patient", body)


@fhir_router.get("/{profile}/fhir/{rtype}/{rid}")
async def read(profile: str, rtype: str, rid: str, request: Request) -> Response:
    box = _sandbox(request)
    _profile(profile)
    if not _TYPE_RE.match(rtype):
        return _outcome(404, "not-found", "unknown resource type")
    try:
        grant = await _gate(box, profile, request, rtype)
    except _Refused as refused:
        return refused.response
    doc = box.store.get(rtype, rid)
    if doc is None:
        return _outcome(404, "not-found", f"{rtype}/{rid} is not known")
    if grant.patient_id not in box.store.owners.get(doc.key, frozenset()):
        return _outcome(403, "forbidden", "the resource belongs to another patient")
    if not oauth.scope_allows(grant.scopes, rtype, "read"):
        return _outcome(403, "forbidden", f"the granted scopes do not cover {rtype}")
    body = doc.render(box.fhir_base(profile))
    if rtype == "Binary" and not _accepts_fhir_json(request.headers.get("accept")):
        binary = orjson.loads(body)
        content = base64.b64decode(binary.get("data", ""))
        if box.state.take_fault("malformed_json", profile, rtype) is not None:
            content = content[: max(1, len(content) // 2)]
        return Response(content, media_type=binary.get("contentType") or "application/octet-stream")
    return _finish(box, profile, rtype, body)


@fhir_router.get("/{profile}/fhir/{rtype}")
async def search(profile: str, rtype: str, request: Request) -> Response:
    box = _sandbox(request)
    _profile(profile)
    if not _TYPE_RE.match(rtype):
        return _outcome(404, "not-found", "unknown resource type")
    try:
        grant = await _gate(box, profile, request, rtype)
    except _Refused as refused:
        return refused.response
    params = _params(request)
    quirk = fhir.search_quirk(profile, rtype, params)
    if quirk is not None:
        return _outcome(400, "invalid", quirk)
    asked = fhir.patient_param(params)
    if asked is not None and asked != grant.patient_id:
        return _outcome(403, "forbidden", "the token is for another patient")
    if not oauth.scope_allows(grant.scopes, rtype, "search"):
        return _outcome(403, "forbidden", f"the granted scopes do not cover {rtype}")
    records = box.store.patient(grant.patient_id)
    if records is None:
        return _outcome(404, "not-found", "unknown patient")
    try:
        count = fhir.page_size(params, box.state.config.default_page_size)
        filters = sorted((k, v) for k, v in params.items() if k not in ("_count", fhir.PAGE_PARAM))
        key = fhir.search_key(profile, rtype, grant.patient_id, repr(filters), str(count))
        token_value = params.get(fhir.PAGE_PARAM)
        offset = fhir.decode_page_token(token_value, key) if token_value else 0
    except fhir.FhirError as exc:
        return _fhir(exc.body(), exc.status)
    docs = fhir.search(records, rtype, params)
    page = fhir.paginate(docs, offset, count)
    base = box.fhir_base(profile)
    url = f"{base}/{rtype}"
    query = list(request.query_params.multi_items())
    self_url = fhir.page_url(url, query, token_value)
    if box.state.take_fault("paging_loop", profile, rtype) is not None:
        next_url: str | None = self_url
    elif page.next_offset is not None:
        next_url = fhir.page_url(url, query, fhir.encode_page_token(page.next_offset, key))
    else:
        next_url = None
    entries = [(doc, "match") for doc in page.docs]
    body = fhir.searchset(base, entries, total=page.total, self_url=self_url, next_url=next_url)
    return _finish(box, profile, rtype, body)


# --- control API ----------------------------------------------------------------------------


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _control(request: Request) -> Sandbox:
    if not _is_loopback(request.client.host if request.client else None):
        raise HTTPException(403, "the control API answers loopback clients only")
    return _sandbox(request)


class ClientBody(BaseModel):
    client_id: str = Field(min_length=1, max_length=200)
    profile: str = "*"
    auth_method: Literal["none", "client_secret_basic", "private_key_jwt"]
    client_secret: str | None = None
    jwks_url: str | None = None
    jwks: dict[str, Any] | None = None
    redirect_uris: list[str] = []


class FaultBody(BaseModel):
    kind: str
    profile: str | None = None
    resource_type: str | None = None
    times: int | None = Field(default=None, ge=1)
    retry_after: int = Field(default=1, ge=0)
    delay_ms: int = Field(default=0, ge=0, le=120_000)


class SettingsBody(BaseModel):
    access_token_ttl_seconds: float | None = Field(default=None, gt=0)
    fixed_patient_id: str | None = None
    clear_fixed_patient: bool = False


control = APIRouter(prefix="/_smart")


@control.post("/clients", status_code=201)
def register_client(body: ClientBody, box: Sandbox = Depends(_control)) -> dict[str, Any]:
    if body.profile != "*" and body.profile not in PROFILES:
        raise HTTPException(422, "profile must be one of the profiles or *")
    if body.auth_method == "client_secret_basic" and not body.client_secret:
        raise HTTPException(422, "client_secret_basic needs client_secret")
    if body.auth_method == "private_key_jwt" and not (body.jwks or body.jwks_url):
        raise HTTPException(422, "private_key_jwt needs jwks or jwks_url")
    box.state.register_client(
        Client(
            client_id=body.client_id,
            profile=body.profile,
            auth_method=body.auth_method,
            client_secret=body.client_secret,
            jwks_url=body.jwks_url,
            jwks=body.jwks,
            redirect_uris=list(body.redirect_uris),
        )
    )
    return {"client_id": body.client_id, "profile": body.profile}


@control.post("/faults", status_code=201)
def add_fault(body: FaultBody, box: Sandbox = Depends(_control)) -> dict[str, Any]:
    if body.kind not in FAULT_KINDS:
        raise HTTPException(422, f"kind must be one of {', '.join(FAULT_KINDS)}")
    if body.profile is not None and body.profile not in PROFILES:
        raise HTTPException(422, "unknown profile")
    if body.kind == "expire_tokens":
        return {"kind": body.kind, "expired": box.state.expire_access_tokens()}
    times = body.times if body.times is not None else DEFAULT_TIMES[body.kind]
    box.state.add_fault(
        Fault(
            kind=body.kind,
            profile=body.profile,
            resource_type=body.resource_type,
            remaining=times,
            retry_after=body.retry_after,
            delay_ms=body.delay_ms,
        )
    )
    return {"kind": body.kind, "times": times}


@control.get("/faults")
def list_faults(box: Sandbox = Depends(_control)) -> list[dict[str, Any]]:
    return box.state.faults()


@control.delete("/faults")
def clear_faults(box: Sandbox = Depends(_control)) -> dict[str, Any]:
    box.state.clear_faults()
    return {"cleared": True}


@control.post("/settings")
def settings(body: SettingsBody, box: Sandbox = Depends(_control)) -> dict[str, Any]:
    if body.access_token_ttl_seconds is not None:
        box.state.access_token_ttl_seconds = body.access_token_ttl_seconds
    if body.fixed_patient_id is not None:
        if box.store.patient(body.fixed_patient_id) is None:
            raise HTTPException(404, "unknown patient")
        box.state.fixed_patient_id = body.fixed_patient_id
    elif body.clear_fixed_patient:
        box.state.fixed_patient_id = None
    return {
        "access_token_ttl_seconds": box.state.access_token_ttl_seconds,
        "fixed_patient_id": box.state.fixed_patient_id,
    }


@control.get("/stats")
def stats(box: Sandbox = Depends(_control)) -> dict[str, Any]:
    return box.state.stats()


@control.post("/stats/reset")
def reset_stats(box: Sandbox = Depends(_control)) -> dict[str, Any]:
    box.state.reset_stats()
    return box.state.stats()


@control.get("/patients")
def patients(box: Sandbox = Depends(_control)) -> list[dict[str, Any]]:
    return [
        {"id": p.info.id, "name": p.info.name, "resource_count": len(p.docs)}
        for p in box.store.patients
    ]


@control.get("/patients/{patient_id}/resources")
def patient_resources(patient_id: str, box: Sandbox = Depends(_control)) -> list[list[str]]:
    records = box.store.patient(patient_id)
    if records is None:
        raise HTTPException(404, "unknown patient")
    return [[doc.rtype, doc.id] for doc in records.docs]


def create_app(box: Sandbox) -> Any:
    """The ASGI app: FastAPI behind the request tracker."""
    app = FastAPI(title="ehi-bridge SMART sandbox", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sandbox = box
    for router in (control, discovery, authorization, token_router, fhir_router):
        app.include_router(router)
    return _Track(app, box.state)


# --- running it -----------------------------------------------------------------------------


class SmartSandbox:
    """The sandbox on a background thread (uvicorn in its own event loop)."""

    def __init__(self, config: SmartConfig | None = None, store: Store | None = None) -> None:
        self.config = config or SmartConfig()
        self.state = SmartState(self.config)
        self.box = Sandbox(self.state, store or default_store())
        self.url = ""
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._sock: socket.socket | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def fhir_base(self, profile: str) -> str:
        return self.box.fhir_base(profile)

    def start(self, timeout: float = 15.0) -> str:
        """Start serving; the base URL (``http://host:port``)."""
        cfg = self.config
        self._sock = bind_listener(cfg.host, cfg.port)
        port = self._sock.getsockname()[1]
        host = f"[{cfg.public_host}]" if ":" in cfg.public_host else cfg.public_host
        self.url = (cfg.url_override or f"http://{host}:{port}").rstrip("/")
        self.box.origin = self.url
        uv_config = uvicorn.Config(
            create_app(self.box),
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(uv_config)
        self._thread = threading.Thread(target=self._run, name="smart-sandbox", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the SMART sandbox did not start")
        if self._error is not None:
            raise RuntimeError("the SMART sandbox failed to start") from self._error
        return self.url

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        assert self._server is not None and self._sock is not None
        task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if task.done():
                task.result()
                raise RuntimeError("the SMART sandbox stopped during start-up")
            await asyncio.sleep(0.01)
        self._ready.set()
        await task

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def __enter__(self) -> SmartSandbox:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
