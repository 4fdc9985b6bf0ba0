"""The Connect widget stand-in: ``/stitch.js`` defines ``<fasten-stitch-element>``; its modal
calls ``/stitch/catalog`` and ``/stitch/connect`` (CORS: the app's page is another origin).

``/stitch.js`` query options: ``auto_login=1`` (a click connects the first brand and patient
without the modal), ``detail=string`` (event ``detail`` as a JSON string instead of an
object). ``/widget`` is a page hosting the element, for manual use.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from ehi_bridge.simulator import datasets
from ehi_bridge.simulator.state import Simulator, SimulatorError

STITCH_JS = Path(__file__).parent / "static" / "stitch.js"


class ConnectBody(BaseModel):
    public_id: str
    external_id: str | None = None
    external_state: str | None = None
    brand_id: str
    patient_index: int = Field(default=0, ge=0)
    reconnect_org_connection_id: str | None = None


def catalog(sim: Simulator, public_id: str) -> dict[str, Any]:
    mode = sim.config.mode_for_public_id(public_id)
    if mode is None:
        raise SimulatorError("unknown public id", 401)
    return {
        "api_mode": mode,
        "brands": [
            {"brand_id": b.brand_id, "name": b.name, "platform_type": b.platform_type}
            for b in sim.brands
        ],
        "patients": [{"index": p.index, "name": p.name} for p in datasets.list_patients()],
    }


def connect(sim: Simulator, body: ConnectBody) -> dict[str, Any]:
    """The patient logged in: a connection, its webhook, and the widget's events' data."""
    mode = sim.config.mode_for_public_id(body.public_id)
    if mode is None:
        raise SimulatorError("unknown public id", 401)
    conn = sim.connect(
        mode=mode,
        external_id=body.external_id or None,
        external_state=body.external_state,
        brand=body.brand_id,
        patient_index=body.patient_index,
        reconnect_org_connection_id=body.reconnect_org_connection_id,
    )
    complete = {
        "org_connection_id": conn.org_connection_id,
        "endpoint_id": conn.brand.endpoint_id,
        "brand_id": conn.brand.brand_id,
        "portal_id": conn.brand.portal_id,
        "platform_type": conn.brand.platform_type,
    }
    if conn.external_id is not None:
        complete["external_id"] = conn.external_id
    return {
        "api_mode": mode,
        "connection_success": conn.webhook_data(),
        "widget_complete": complete,
    }


def _sub_app(sim: Simulator) -> FastAPI:
    sub = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    sub.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["GET", "POST"],
        allow_headers=["content-type"],
    )

    @sub.exception_handler(SimulatorError)
    async def _refused(request: Request, exc: SimulatorError) -> Response:
        return JSONResponse({"success": False, "error": exc.message}, status_code=exc.status)

    @sub.get("/catalog")
    def get_catalog(public_id: str = "") -> dict[str, Any]:
        return catalog(sim, public_id)

    @sub.post("/connect")
    def post_connect(body: ConnectBody) -> dict[str, Any]:
        return connect(sim, body)

    return sub


def register(app: FastAPI) -> None:
    sim: Simulator = app.state.sim

    @app.get("/stitch.js")
    async def stitch_js() -> Response:
        return Response(
            STITCH_JS.read_bytes(),
            media_type="application/javascript",
            headers={"Access-Control-Allow-Origin": "*", "Cache-Control": "no-cache"},
        )

    @app.get("/widget")
    async def widget_page(public_id: str = "", external_id: str = "") -> HTMLResponse:
        public = public_id or sim.config.modes["test"].public_id
        page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Fasten Connect simulator widget</title>
<script src="/stitch.js"></script></head>
<body><h1>Fasten Connect simulator</h1>
<fasten-stitch-element id="stitch" public-id="{html.escape(public)}"
  external-id="{html.escape(external_id)}"></fasten-stitch-element>
<pre id="events"></pre>
<script>
document.getElementById("stitch").addEventListener("eventBus", function (e) {{
  var d = typeof e.detail === "string" ? e.detail : JSON.stringify(e.detail);
  document.getElementById("events").textContent += d + "\\n";
}});
</script></body></html>"""
        return HTMLResponse(page)

    app.mount("/stitch", _sub_app(sim))
