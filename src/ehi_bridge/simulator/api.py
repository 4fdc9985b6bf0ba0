"""The simulated Fasten Connect REST API (``/v1/bridge/…``) and the app that serves it,
with the widget routes (``widget.py``) and the control API (``control.py``)."""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel

from ehi_bridge.config import Mode
from ehi_bridge.simulator.control import router as control_router
from ehi_bridge.simulator.state import Simulator, SimulatorError
from ehi_bridge.simulator.storage import signed_url
from ehi_bridge.simulator.widget import register as register_widget


class Unauthorized(Exception):
    pass


def _sim(request: Request) -> Simulator:
    sim: Simulator = request.app.state.sim
    return sim


SimDep = Annotated[Simulator, Depends(_sim)]


def authenticate(sim: Simulator, authorization: str | None) -> Mode:
    """The mode whose credentials are in ``Authorization`` (Basic public:private, or Bearer
    private key); raises :class:`Unauthorized` otherwise."""
    if not authorization:
        raise Unauthorized
    scheme, _, value = authorization.partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
            raise Unauthorized from exc
        public_id, sep, private_key = decoded.partition(":")
        if sep:
            for mode, cfg in sim.config.modes.items():
                if hmac.compare_digest(public_id, cfg.public_id) and hmac.compare_digest(
                    private_key.encode(), cfg.private_key.encode()
                ):
                    return mode
    elif scheme.lower() == "bearer":
        for mode, cfg in sim.config.modes.items():
            if value and hmac.compare_digest(value.encode(), cfg.private_key.encode()):
                return mode
    raise Unauthorized


def _mode(request: Request) -> Mode:
    return authenticate(_sim(request), request.headers.get("authorization"))


ModeDep = Annotated[Mode, Depends(_mode)]


class ExportRequest(BaseModel):
    org_connection_id: str


def _ok(data: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse({"success": True, "data": data}, status_code=status)


def create_app(sim: Simulator) -> FastAPI:

    app = FastAPI(title="Fasten Connect simulator", docs_url=None, redoc_url=None)
    app.state.sim = sim

    @app.exception_handler(Unauthorized)
    async def _unauthorized(request: Request, exc: Unauthorized) -> Response:
        return JSONResponse(
            {"success": False, "error": "unauthorized"},
            status_code=401,
            headers={"WWW-Authenticate": 'Basic realm="fasten"'},
        )

    @app.exception_handler(SimulatorError)
    async def _refused(request: Request, exc: SimulatorError) -> Response:
        return JSONResponse({"success": False, "error": exc.message}, status_code=exc.status)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/bridge/fhir/ehi-export")
    async def request_export(body: ExportRequest, mode: ModeDep, sim: SimDep) -> Response:
        export = sim.request_export(body.org_connection_id, mode)
        return _ok({"task_id": export.task_id, "status": export.status})

    @app.get("/v1/bridge/fhir/ehi-export/{task_id}")
    async def export_status(task_id: str, mode: ModeDep, sim: SimDep) -> Response:
        export = sim.export(task_id)
        if export.api_mode != mode:
            raise SimulatorError("task not found", 404)
        return _ok(export.api_view())

    @app.get("/v1/bridge/fhir/ehi-export/{task_id}/download/{file_name}")
    async def download(task_id: str, file_name: str, mode: ModeDep, sim: SimDep) -> Response:
        export = sim.export(task_id)
        if export.api_mode != mode or file_name != export.file_name:
            raise SimulatorError("file not found", 404)
        if export.status != "success":
            raise SimulatorError("export is not complete", 404)
        if not sim.file_available(export):
            raise SimulatorError("export file expired", 404)
        return RedirectResponse(
            signed_url(sim, export), status_code=302, headers={"Cache-Control": "no-store"}
        )

    @app.get("/v1/bridge/org_connection/{org_connection_id}")
    async def org_connection(org_connection_id: str, mode: ModeDep, sim: SimDep) -> Response:
        conn = sim.connection(org_connection_id)
        if conn.api_mode != mode:
            raise SimulatorError("org connection not found", 404)
        return _ok(conn.api_view())

    register_widget(app)
    app.include_router(control_router)
    return app
