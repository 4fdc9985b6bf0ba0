"""docs/configuration.md, generated from :class:`ehi_bridge.config.Settings`.

Every setting's environment variable, type, default and meaning come from the class itself
(the meaning is the docstring under the field), so the reference cannot drift from the code:
``make docs`` rewrites the file and a test fails when it is stale or a setting has no
description.

    python -m ehi_bridge.config_reference            # rewrite docs/configuration.md
    python -m ehi_bridge.config_reference --check    # exit 1 when it is stale
"""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from ehi_bridge.config import Settings

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
PREFIX = str(Settings.model_config.get("env_prefix", ""))

HEADER = f"""# Configuration reference

<!-- Generated from ehi_bridge.config.Settings by `make docs`; do not edit by hand. -->

Every setting is an environment variable with the prefix `{PREFIX}`, or a line in a `.env`
file in the working directory (`{PREFIX}LOG_LEVEL=DEBUG`); the environment wins over the
file. Secrets are never printed or logged. Lists are comma-separated; a dictionary is a
JSON object.

| variable | type | default | meaning |
|---|---|---|---|
"""


def env_name(field: str) -> str:
    return f"{PREFIX}{field.upper()}"


def _type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is Literal:
        return " or ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        kept = [a for a in args if a is not type(None)]
        return " or ".join(_type(a) for a in kept)
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return "JSON object"
    names = {SecretStr: "secret", Path: "path", str: "string", int: "integer", float: "number"}
    if annotation is bool:
        return "`true` or `false`"
    return names.get(annotation, str(getattr(annotation, "__name__", annotation)))


def _default(value: Any) -> str:
    if value is None or value == [] or value == "" or value == {}:
        return "unset"
    if isinstance(value, SecretStr):
        return "unset" if not value.get_secret_value() else "(secret)"
    if isinstance(value, Path) and not value.is_absolute():
        return f"`./{value.as_posix()}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict):
        return f"`{json.dumps(value)}`"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def undocumented() -> list[str]:
    """Settings without a description (the docstring under the field)."""
    return [name for name, field in Settings.model_fields.items() if not field.description]


def row(name: str, field: FieldInfo) -> str:
    return (
        f"| `{env_name(name)}` | {_type(field.annotation)} | {_default(field.default)} "
        f"| {_cell(field.description or '')} |"
    )


def render() -> str:
    rows = [row(name, field) for name, field in Settings.model_fields.items()]
    return HEADER + "\n".join(rows) + "\n"


def main(argv: list[str]) -> int:
    missing = undocumented()
    if missing:
        print(f"settings without a description: {', '.join(missing)}", file=sys.stderr)
        return 1
    text = render()
    if argv == ["--check"]:
        current = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.exists() else ""
        if current != text:
            print(f"{DOC_PATH} is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    DOC_PATH.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
