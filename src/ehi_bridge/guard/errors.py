"""Validation errors answered without the input: FastAPI's default 422 echoes every
invalid value back (a 50 MB body came back whole). Each error keeps its location, type and
message; the dashboard's pages answer 400, the API keeps 422."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

MAX_ERRORS = 20


def _sanitised(errors: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for error in list(errors)[:MAX_ERRORS]:
        loc = [part if isinstance(part, int) else str(part)[:64] for part in error.get("loc", ())]
        out.append(
            {
                "loc": loc,
                "type": str(error.get("type", ""))[:64],
                "msg": str(error.get("msg", ""))[:200],
            }
        )
    return out


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    status = 400 if request.url.path.startswith("/dashboard") else 422
    return JSONResponse({"detail": _sanitised(exc.errors())}, status_code=status)
