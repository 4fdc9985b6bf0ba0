"""An export that never reports back: deadline, status poll, timed_out, alert, late success."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import LiveStack
from tests.e2e.exports.test_pipeline import _alert, finished, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def stack_env() -> dict[str, str]:
    # 3 seconds, for every platform
    return {
        "EHI_EXPORT_DEADLINE_MINUTES": "0.05",
        "EHI_EXPORT_DEADLINE_MINUTES_BY_PLATFORM": '{"epic": 0.05}',
    }


def test_deadline_polls_status_times_out_alerts_and_late_success_is_ingested(
    live_stack: LiveStack,
) -> None:
    stack = live_stack
    conn = stack.sim.sim.connect(behaviour={"slow": True})  # epic: 35 simulated minutes
    export = wait_for(finished(stack, conn.org_connection_id, ("timed_out",)), what="timeout")
    assert "pending" in (export.last_error or "")
    wait_for(lambda: _alert(stack, "export_timed_out"), what="timed-out alert")
    stack.sim.sim.advance_clock(36 * 60)
    export = wait_for(finished(stack, conn.org_connection_id, ("complete",)), what="late success")
    assert export.ingested_total == export.stats_total
