"""The control API under ``/_sim/…`` (JSON): scenarios for tests, the demo and local dev.

Protected by ``X-Sim-Token`` when the simulator has a control token, else open to loopback
clients only.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from ehi_bridge.config import Mode
from ehi_bridge.simulator import datasets
from ehi_bridge.simulator.clock import iso
from ehi_bridge.simulator.state import Simulator, SimulatorError


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _control(request: Request) -> Simulator:
    sim: Simulator = request.app.state.sim
    token = sim.config.control_token
    if token:
        given = request.headers.get("x-sim-token", "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "control token required")
    elif not _is_loopback(request.client.host if request.client else None):
        raise HTTPException(403, "the control API answers loopback clients only")
    return sim


Sim = Annotated[Simulator, Depends(_control)]
router = APIRouter(prefix="/_sim", tags=["control"])


class ConnectBody(BaseModel):
    count: int = Field(default=1, ge=1, le=10_000)
    mode: Mode = "test"
    external_id: str | None = None
    external_ids: list[str] | None = None
    external_state: str | None = None
    platform: str | None = Field(default=None, description="brand id, platform_type or name")
    patient_index: int | None = None
    behaviour: dict[str, Any] | None = None
    send_webhook: bool = True
    rejected: bool = False
    tefca: bool = False


class RevokeBody(BaseModel):
    org_connection_ids: list[str] | None = None
    count: int | None = Field(default=None, ge=1)
    all: bool = False
    mode: Mode | None = None


class ExportBody(BaseModel):
    org_connection_id: str


class ModeBody(BaseModel):
    mode: Mode = "test"


class EventBody(BaseModel):
    mode: Mode = "test"
    type: str
    data: dict[str, Any] = {}


class ReleaseBody(BaseModel):
    order: Literal["fifo", "reverse", "shuffle"] = "reverse"
    seed: int = 0


class AdvanceBody(BaseModel):
    seconds: float = Field(ge=0)


def _clock(sim: Simulator) -> dict[str, Any]:
    now = sim.clock.now()
    return {"now": now, "now_iso": iso(now), "offset_seconds": sim.clock.offset}


@router.get("/state")
def state(sim: Sim) -> dict[str, Any]:
    return {
        "clock": _clock(sim),
        "api_url": sim.api_base_url,
        "storage_url": sim.storage_base_url,
        "connections": len(sim.list_connections()),
        "exports": len(sim.list_exports()),
        "deliveries": len(sim.list_deliveries()),
    }


@router.get("/patients")
def patients(sim: Sim) -> list[dict[str, Any]]:
    return [
        {"index": p.index, "name": p.name, "resource_count": p.resource_count}
        for p in datasets.list_patients()
    ]


@router.get("/brands")
def brands(sim: Sim) -> list[dict[str, Any]]:
    return [
        {"brand_id": b.brand_id, "name": b.name, "platform_type": b.platform_type}
        for b in sim.brands
    ]


@router.post("/connections")
def connect(body: ConnectBody, sim: Sim) -> list[dict[str, Any]]:
    conns = sim.connect_many(
        body.count,
        mode=body.mode,
        external_id=body.external_id,
        external_ids=body.external_ids,
        external_state=body.external_state,
        brand=body.platform,
        patient_index=body.patient_index,
        behaviour=body.behaviour,
        send_webhook=body.send_webhook,
        rejected=body.rejected,
        tefca=body.tefca,
    )
    return [c.to_dict() for c in conns]


@router.get("/connections")
def list_connections(sim: Sim) -> list[dict[str, Any]]:
    return [c.to_dict() for c in sim.list_connections()]


@router.get("/connections/{org_connection_id}")
def get_connection(org_connection_id: str, sim: Sim) -> dict[str, Any]:
    return sim.connection(org_connection_id).to_dict()


@router.patch("/connections/{org_connection_id}/behaviour")
def set_behaviour(org_connection_id: str, changes: dict[str, Any], sim: Sim) -> dict[str, Any]:
    sim.set_behaviour(org_connection_id, **changes)
    return sim.connection(org_connection_id).to_dict()


@router.get("/behaviour/default")
def get_default_behaviour(sim: Sim) -> dict[str, Any]:
    return asdict(sim.default_behaviour)


@router.patch("/behaviour/default")
def set_default_behaviour(changes: dict[str, Any], sim: Sim) -> dict[str, Any]:
    return asdict(sim.set_default_behaviour(**changes))


@router.post("/revoke")
def revoke(body: RevokeBody, sim: Sim) -> list[dict[str, Any]]:
    ids = list(body.org_connection_ids or [])
    if body.all or body.count:
        candidates = [
            c.org_connection_id
            for c in sim.list_connections()
            if c.status == "authorized" and (body.mode is None or c.api_mode == body.mode)
        ]
        ids += candidates if body.all else candidates[: body.count]
    if not ids:
        raise SimulatorError("nothing to revoke")
    return [c.to_dict() for c in sim.revoke(ids)]


@router.post("/exports")
def request_export(body: ExportBody, sim: Sim) -> dict[str, Any]:
    conn = sim.connection(body.org_connection_id)
    return sim.request_export(conn.org_connection_id, conn.api_mode).to_dict()


@router.get("/exports")
def list_exports(sim: Sim) -> list[dict[str, Any]]:
    return [e.to_dict() for e in sim.list_exports()]


@router.post("/webhooks/test")
def webhook_test(sim: Sim, body: ModeBody | None = None) -> dict[str, Any]:
    return {"event_id": sim.send_test_webhook((body or ModeBody()).mode)}


@router.post("/webhooks/event")
def webhook_event(body: EventBody, sim: Sim) -> dict[str, Any]:
    deliveries = sim.emit(body.mode, body.type, body.data)
    return {"event_id": deliveries[0].event_id}


@router.post("/webhooks/hold")
def hold(sim: Sim) -> dict[str, Any]:
    sim.hold_webhooks()
    return {"holding": True}


@router.post("/webhooks/release")
def release(sim: Sim, body: ReleaseBody | None = None) -> dict[str, Any]:
    body = body or ReleaseBody()
    released = sim.release_webhooks(body.order, body.seed)
    return {"released": [d.to_dict() for d in released]}


class EnableBody(BaseModel):
    recover: bool = False


@router.get("/endpoints")
def endpoints(sim: Sim) -> dict[str, Any]:
    return {
        mode: {"url": cfg.webhook_url, "disabled": mode in sim.disabled_endpoints}
        for mode, cfg in sim.config.modes.items()
    }


@router.post("/endpoints/{mode}/enable")
def enable_endpoint(mode: Mode, sim: Sim, body: EnableBody | None = None) -> dict[str, Any]:
    recovered = sim.enable_endpoint(mode, recover=(body or EnableBody()).recover)
    return {"enabled": mode, "recovered": len(recovered)}


@router.get("/deliveries")
def deliveries(
    sim: Sim, event_type: str | None = None, org_connection_id: str | None = None
) -> list[dict[str, Any]]:
    return [d.to_dict() for d in sim.list_deliveries(event_type, org_connection_id)]


@router.get("/storage/requests")
def storage_requests(sim: Sim) -> list[dict[str, Any]]:
    return [r.to_dict() for r in sim.list_storage_requests()]


@router.get("/clock")
def clock(sim: Sim) -> dict[str, Any]:
    return _clock(sim)


@router.post("/clock/advance")
def advance(body: AdvanceBody, sim: Sim) -> dict[str, Any]:
    sim.advance_clock(body.seconds)
    return _clock(sim)


@router.post("/reset")
def reset(sim: Sim) -> dict[str, Any]:
    sim.reset()
    return {"reset": True}
