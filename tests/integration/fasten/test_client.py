"""FastenClient against real HTTP servers on loopback (fakes of Fasten's API and storage)."""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ehi_bridge.fasten.client import FastenClient
from ehi_bridge.fasten.errors import (
    DownloadError,
    DownloadRefused,
    ExportFileGone,
    FastenAuthError,
    FastenNotFound,
    FastenUnavailable,
)
from tests.integration.fasten.fakes import (
    BASIC,
    BEARER,
    PRIVATE_KEY,
    PUBLIC_ID,
    FakeApi,
    FakeStorage,
    fake_fasten,
)
from tests.integration.fasten.servers import serve
from tests.support import free_port

TASK = "task-1"


def _file(lines: int) -> bytes:
    return b"".join(
        b'{"resourceType":"Observation","id":"obs-%06d","valueQuantity":{"value":%d}}\n' % (i, i)
        for i in range(lines)
    )


FILE = _file(4000)  # ~300 KB


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture(scope="module")
def shared_fasten() -> Iterator[tuple[FakeApi, FakeStorage]]:
    with fake_fasten({TASK: FILE}) as pair:
        yield pair


@pytest.fixture
def fasten(shared_fasten: tuple[FakeApi, FakeStorage]) -> tuple[FakeApi, FakeStorage]:
    api, storage = shared_fasten
    api.reset()
    storage.reset({TASK: FILE})
    return api, storage


def make_client(
    api: FakeApi,
    sleeps: Sleeps,
    *,
    scheme: str = "basic",
    allowed: set[str] | None = None,
    max_attempts: int = 5,
    clock: float = 1_800_000_000.0,
    base_url: str | None = None,
) -> FastenClient:
    return FastenClient(
        base_url or f"{api.url}/v1",
        PUBLIC_ID,
        PRIVATE_KEY,
        auth_scheme=scheme,  # type: ignore[arg-type]
        # The API origin is always allowed; the storage its redirects point at is listed.
        allowed_hosts=allowed if allowed is not None else {urlsplit(api.storage.url).netloc},
        max_attempts=max_attempts,
        sleep=sleeps,
        rng=random.Random(7),
        clock=lambda: clock,
    )


def link(api: FakeApi, task: str = TASK) -> str:
    return f"{api.url}/v1/bridge/fhir/ehi-export/{task}/download/export.jsonl"


# --- API calls ---------------------------------------------------------------------------


async def test_create_export_sends_basic_auth_and_reads_task(
    fasten: tuple[FakeApi, FakeStorage],
) -> None:
    api, _ = fasten
    async with make_client(api, Sleeps()) as client:
        task = await client.create_export("org-9")
    assert (task.task_id, task.status) == ("task-org-9", "pending")
    assert [h.authorization for h in api.hits] == [BASIC]


async def test_bearer_scheme_sends_the_private_key_only(
    fasten: tuple[FakeApi, FakeStorage],
) -> None:
    api, _ = fasten
    api.accept = (BEARER,)
    async with make_client(api, Sleeps(), scheme="bearer") as client:
        task = await client.export_status("t-1")
    assert task.task_id == "t-1" and task.status == "success"
    assert [h.authorization for h in api.hits] == [BEARER]


async def test_wrong_scheme_is_an_auth_error_not_retried(
    fasten: tuple[FakeApi, FakeStorage],
) -> None:
    api, _ = fasten
    api.accept = (BEARER,)
    sleeps = Sleeps()
    async with make_client(api, sleeps, scheme="basic") as client:
        with pytest.raises(FastenAuthError) as info:
            await client.create_export("org-1")
    assert info.value.status_code == 401
    assert len(api.hits) == 1 and sleeps == []


async def test_org_connection_is_read_tolerantly(fasten: tuple[FakeApi, FakeStorage]) -> None:
    api, _ = fasten
    async with make_client(api, Sleeps()) as client:
        conn = await client.org_connection("oc-1")
    assert conn.org_connection_id == "oc-1"
    assert (conn.platform_type, conn.status, conn.api_mode) == ("epic", "authorized", "test")
    assert conn.consent_expires_at == "2027-01-01T00:00:00Z"


async def test_unknown_task_is_not_found(fasten: tuple[FakeApi, FakeStorage]) -> None:
    api, _ = fasten
    async with make_client(api, Sleeps()) as client:
        with pytest.raises(FastenNotFound):
            await client.export_status("missing")


async def test_429_waits_retry_after_seconds(fasten: tuple[FakeApi, FakeStorage]) -> None:
    api, _ = fasten
    api.script("create", (429, {"retry-after": "7"}))
    sleeps = Sleeps()
    async with make_client(api, sleeps) as client:
        task = await client.create_export("org-1")
    assert task.task_id == "task-org-1"
    assert sleeps == [7.0]
    assert [h.status for h in api.hits] == [429, 200]


async def test_503_waits_until_retry_after_http_date(fasten: tuple[FakeApi, FakeStorage]) -> None:
    api, _ = fasten
    now = 1_800_000_000.0
    when = format_datetime(datetime.fromtimestamp(now + 42, UTC), usegmt=True)
    api.script("status", (503, {"retry-after": when}))
    sleeps = Sleeps()
    async with make_client(api, sleeps, clock=now) as client:
        await client.export_status("t-1")
    assert sleeps == [42.0]


async def test_500s_then_success_with_jittered_exponential_backoff(
    fasten: tuple[FakeApi, FakeStorage],
) -> None:
    api, _ = fasten
    api.script("create", (500, {}), (502, {}), (500, {}))
    sleeps = Sleeps()
    async with make_client(api, sleeps) as client:
        task = await client.create_export("org-1")
    assert task.status == "pending"
    assert [h.status for h in api.hits] == [500, 502, 500, 200]
    assert len(sleeps) == 3
    for attempt, delay in enumerate(sleeps, start=1):
        assert 0.0 <= delay <= 1.0 * 2 ** (attempt - 1)


async def test_retries_are_bounded(fasten: tuple[FakeApi, FakeStorage]) -> None:
    api, _ = fasten
    api.script("create", *[(503, {})] * 10)
    sleeps = Sleeps()
    async with make_client(api, sleeps, max_attempts=3) as client:
        with pytest.raises(FastenUnavailable) as info:
            await client.create_export("org-1")
    assert (info.value.attempts, info.value.last_status) == (3, 503)
    assert len(api.hits) == 3 and len(sleeps) == 2


async def test_too_long_retry_after_is_handed_to_the_caller(
    fasten: tuple[FakeApi, FakeStorage],
) -> None:
    api, _ = fasten
    api.script("create", (429, {"retry-after": "3600"}))
    sleeps = Sleeps()
    async with make_client(api, sleeps) as client:
        with pytest.raises(FastenUnavailable) as info:
            await client.create_export("org-1")
    assert info.value.retry_after == 3600.0 and sleeps == []


async def test_network_errors_are_retried_then_reported() -> None:
    sleeps = Sleeps()
    base = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    client = FastenClient(base, PUBLIC_ID, PRIVATE_KEY, max_attempts=3, sleep=sleeps)
    async with client:
        with pytest.raises(FastenUnavailable) as info:
            await client.create_export("org-1")
    assert info.value.last_error == "ConnectError"
    assert len(sleeps) == 2


# --- downloads ---------------------------------------------------------------------------


async def test_download_streams_the_exact_bytes_without_forwarding_credentials(
    fasten: tuple[FakeApi, FakeStorage], tmp_path: Path
) -> None:
    api, storage = fasten
    progress: list[tuple[int, int | None]] = []
    dest = tmp_path / "deep" / "export-1.ndjson"
    async with make_client(api, Sleeps()) as client:
        result = await client.download(
            link(api), dest, progress=lambda n, total: progress.append((n, total))
        )
    assert dest.read_bytes() == FILE
    assert (result.bytes, result.path, result.resumes, result.restarts) == (len(FILE), dest, 0, 0)
    assert list(tmp_path.joinpath("deep").iterdir()) == [dest]  # no .part left behind
    assert [h.authorization for h in api.hits] == [BASIC]
    assert [(h.authorization, h.status) for h in storage.hits] == [(None, 200)]
    assert progress[-1] == (len(FILE), len(FILE))
    assert [n for n, _ in progress] == sorted(n for n, _ in progress)


async def test_download_with_bearer_scheme(
    fasten: tuple[FakeApi, FakeStorage], tmp_path: Path
) -> None:
    api, storage = fasten
    api.accept = (BEARER,)
    async with make_client(api, Sleeps(), scheme="bearer") as client:
        await client.download(link(api), tmp_path / "f")
    assert [h.authorization for h in api.hits] == [BEARER]
    assert [h.authorization for h in storage.hits] == [None]


async def test_expired_url_mid_download_continues_from_a_fresh_url_with_range(
    fasten: tuple[FakeApi, FakeStorage], tmp_path: Path
) -> None:
    api, storage = fasten
    # The first URL breaks after 50 000 bytes; the next one has already expired (403).
    storage.script = ["cut:50000", "403"]
    sleeps = Sleeps()
    dest = tmp_path / "f"
    async with make_client(api, sleeps) as client:
        result = await client.download(link(api), dest)
    assert dest.read_bytes() == FILE
    assert [(h.range, h.status) for h in storage.hits] == [
        (None, 200),
        ("bytes=50000-", 403),
        ("bytes=50000-", 206),
    ]
    signatures = {h.query.split("&")[0] for h in storage.hits}
    assert len(signatures) == 3  # a fresh signed URL each time
    assert len(api.hits) == 3 and result.resumes == 1 and result.restarts == 0
    assert all(h.authorization is None for h in storage.hits)


async def test_truncated_transfer_is_detected_and_resumed(
    fasten: tuple[FakeApi, FakeStorage], tmp_path: Path
) -> None:
    api, storage = fasten
    # Declares the full Content-Length, sends 70 000 bytes and ends the response.
    storage.script = ["short:70000"]
    dest = tmp_path / "f"
    async with make_client(api, Sleeps()) as client:
        result = await client.download(link(api), dest)
    assert dest.read_bytes() == FILE
    assert [h.range for h in storage.hits] == [None, "bytes=70000-"]
    assert result.resumes == 1


async def test_server_ignoring_range_restarts_from_zero(
    fasten: tuple[FakeApi, FakeStorage], tmp_path: Path
) -> None:
    api, storage = fasten
    storage.script = ["cut:40000", "ignore_range"]
    dest = tmp_path / "f"
    async with make_client(api, Sleeps()) as client:
        result = await client.download(link(api), dest)
    assert dest.read_bytes() == FILE
    assert [(h.range, h.status) for h in storage.hits] == [(None, 200), ("bytes=40000-", 200)]
    assert result.restarts == 1


async def test_storage_503_honours_retry_after(
    fasten: tuple[FakeApi, FakeStorage], tmp_path: Path
) -> None:
    api, storage = fasten
    storage.script = ["503ra:11"]
    sleeps = Sleeps()
    async with make_client(api, sleeps) as client:
        await client.download(link(api), tmp_path / "f")
    assert sleeps == [11.0]
    assert (tmp_path / "f").read_bytes() == FILE


async def test_storage_that_keeps_refusing_gives_up_and_leaves_no_file(
    fasten: tuple[FakeApi, FakeStorage], tmp_path: Path
) -> None:
    api, storage = fasten
    storage.script = ["403"] * 10
    async with make_client(api, Sleeps(), max_attempts=3) as client:
        with pytest.raises(DownloadError) as info:
            await client.download(link(api), tmp_path / "f")
    assert info.value.reason == "storage_denied"
    assert len(storage.hits) == 3
    assert list(tmp_path.iterdir()) == []


async def test_link_off_the_allow_list_is_refused_before_any_request(
    fasten: tuple[FakeApi, FakeStorage], tmp_path: Path
) -> None:
    api, storage = fasten
    evil = link(api).replace("127.0.0.1", "localhost")
    async with make_client(api, Sleeps(), allowed={"127.0.0.1"}) as client:
        with pytest.raises(DownloadRefused) as info:
            await client.download(evil, tmp_path / "f")
    assert (info.value.host, info.value.reason) == ("localhost", "host_not_allowed")
    assert api.hits == [] and storage.hits == []
    assert list(tmp_path.iterdir()) == []


async def test_redirect_carrying_userinfo_is_refused(
    fasten: tuple[FakeApi, FakeStorage], tmp_path: Path
) -> None:
    api, storage = fasten
    api.redirect_override = storage.url.replace("//", "//user:pw@") + "/bucket/task-1?sig=x"
    async with make_client(api, Sleeps()) as client:
        with pytest.raises(DownloadRefused) as info:
            await client.download(link(api), tmp_path / "f")
    assert info.value.reason == "bad_redirect"
    assert storage.hits == []


@pytest.mark.parametrize("status", [404, 410])
async def test_gone_file_raises_export_file_gone(
    fasten: tuple[FakeApi, FakeStorage], tmp_path: Path, status: int
) -> None:
    api, storage = fasten
    api.gone[TASK] = status
    async with make_client(api, Sleeps()) as client:
        with pytest.raises(ExportFileGone) as info:
            await client.download(link(api), tmp_path / "f")
    assert info.value.status_code == status
    assert storage.hits == [] and list(tmp_path.iterdir()) == []


async def test_file_expiring_during_a_resume_raises_export_file_gone(
    fasten: tuple[FakeApi, FakeStorage], tmp_path: Path
) -> None:
    api, storage = fasten
    storage.script = ["cut:30000"]
    # The file's 24 h end while the first transfer runs: the fresh-URL call answers 404.
    storage.on_hit = lambda: api.gone.__setitem__(TASK, 404)
    async with make_client(api, Sleeps()) as client:
        with pytest.raises(ExportFileGone):
            await client.download(link(api), tmp_path / "f")
    assert len(storage.hits) == 1 and len(api.hits) == 2
    assert list(tmp_path.iterdir()) == []


async def test_download_memory_stays_bounded(
    tmp_path: Path,
) -> None:
    big = _file(400_000)  # ~32 MB
    with fake_fasten({TASK: big}) as (api, storage):
        storage.chunk = 256 * 1024
        async with make_client(api, Sleeps()) as client:
            tracemalloc.start()
            try:
                result = await client.download(link(api), tmp_path / "big")
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert result.bytes == len(big)
    assert (tmp_path / "big").stat().st_size == len(big)
    # The fake server shares this process; still far below the file's size.
    assert peak < len(big) // 4, peak


async def test_redirect_to_an_allowed_host_on_another_port_is_not_fetched(
    fasten: tuple[FakeApi, FakeStorage], tmp_path: Path
) -> None:
    """The API's redirect points at an internal service on the same host, another port."""
    api, storage = fasten
    with serve(FakeStorage(objects={TASK: FILE})) as internal_url:
        api.redirect_override = f"{internal_url}/bucket/{TASK}?sig=x"
        # Only the API origin and the real storage (host:port) are allowed.
        async with make_client(api, Sleeps()) as client:
            with pytest.raises(DownloadRefused) as info:
                await client.download(link(api), tmp_path / "f")
    assert info.value.reason == "redirect_not_allowed"
    assert storage.hits == []
    assert list(tmp_path.iterdir()) == []


async def test_a_bare_host_entry_allows_only_the_default_port(
    fasten: tuple[FakeApi, FakeStorage], tmp_path: Path
) -> None:
    api, storage = fasten
    async with make_client(api, Sleeps(), allowed={"127.0.0.1"}) as client:
        with pytest.raises(DownloadRefused) as info:
            await client.download(link(api), tmp_path / "f")
    assert info.value.reason == "redirect_not_allowed"
    assert storage.hits == []
