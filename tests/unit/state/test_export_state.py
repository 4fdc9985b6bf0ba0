import pytest

from ehi_bridge.exports.state import ExportEvent as E
from ehi_bridge.exports.state import ExportStatus as S
from ehi_bridge.exports.state import transition


def run(status: str, *events: str) -> str:
    for event in events:
        status = transition(status, event) or status
    return status


def test_happy_path() -> None:
    assert (
        run(S.REQUESTED, E.TASK_CREATED, E.SUCCEEDED, E.DOWNLOADED, E.INGESTED_COMPLETE)
        == S.COMPLETE
    )


def test_success_twice_does_not_restart_a_download() -> None:
    assert transition(S.DOWNLOADING, E.SUCCEEDED) is None
    assert transition(S.COMPLETE, E.SUCCEEDED) is None


def test_success_after_timeout_is_still_processed() -> None:
    assert run(S.PENDING, E.DEADLINE_PASSED) == S.TIMED_OUT
    assert run(S.TIMED_OUT, E.SUCCEEDED, E.DOWNLOADED, E.INGESTED_PARTIAL) == S.PARTIAL


def test_deadline_after_success_changes_nothing() -> None:
    assert transition(S.DOWNLOADING, E.DEADLINE_PASSED) is None
    assert transition(S.COMPLETE, E.DEADLINE_PASSED) is None


def test_failure_does_not_undo_a_completed_export() -> None:
    assert transition(S.COMPLETE, E.FAILED) is None
    assert run(S.PENDING, E.FAILED) == S.FAILED


def test_file_gone_expires_and_a_new_success_can_recover() -> None:
    assert run(S.DOWNLOADING, E.FILE_GONE) == S.EXPIRED
    assert transition(S.EXPIRED, E.SUCCEEDED) == S.DOWNLOADING


@pytest.mark.parametrize("status", S.ACTIVE)
def test_revocation_cancels_every_unfinished_export(status: str) -> None:
    assert transition(status, E.REVOKED) == S.CANCELLED


@pytest.mark.parametrize("status", [*S.DONE, S.FAILED, S.EXPIRED, S.CANCELLED])
def test_revocation_leaves_finished_exports(status: str) -> None:
    assert transition(status, E.REVOKED) is None


def test_task_created_only_from_requested() -> None:
    assert transition(S.REQUESTED, E.TASK_CREATED) == S.PENDING
    assert transition(S.DOWNLOADING, E.TASK_CREATED) is None
