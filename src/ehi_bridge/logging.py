"""Structured logging (structlog). Console or JSON; a scrubber drops fields that could leak.

Call sites log ids, counts, statuses and reasons only. As a second line of defence the
scrubber removes values under keys that name bodies, URLs, secrets or tokens.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

FORBIDDEN_KEY_PARTS = ("body", "url", "secret", "token", "password", "authorization", "key", "raw")
ALLOWED_KEYS = frozenset({"task_id", "event_id", "webhook_id", "export_id", "connection_id"})


def scrub(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    for key in list(event_dict):
        lowered = key.lower()
        if lowered in ALLOWED_KEYS:
            continue
        if any(part in lowered for part in FORBIDDEN_KEY_PARTS):
            event_dict[key] = "[redacted]"
    return event_dict


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is when a line is logged, not when logging was set up
    (a caller that swaps stderr for a while, e.g. a CLI runner, may close the old one)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "INFO", json: bool = False) -> None:
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        scrub,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*processors, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s %(message)s"
    )
    # uvicorn's access log prints full paths (query strings may carry tokens): keep it off.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Alembic says "Context impl SQLiteImpl." on every connection: stderr stays quiet on
    # success (`ehi-bridge db upgrade` says what it did).
    logging.getLogger("alembic").setLevel(logging.WARNING)
