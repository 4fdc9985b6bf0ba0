"""Latency of the REST API's list endpoints on a large database.

Seeds (once; reused when already there) 100k connections, 10M resources, events and
exports, starts ehi-bridge's ASGI app under uvicorn (no background runtime), and measures
p50/p99 of the main list endpoints over HTTP with one keep-alive client. Target: p99 ≤ 50 ms.

    .venv/bin/python bench/api_lists.py                                   # SQLite, full size
    .venv/bin/python bench/api_lists.py --resources 200000                # quick
    .venv/bin/python bench/api_lists.py --database-url postgresql://postgres@127.0.0.1/ehi_bench
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import func, select, text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from ehi_bridge.api.repository import encode_cursor  # noqa: E402
from ehi_bridge.auth.service import create_api_token  # noqa: E402
from ehi_bridge.connections.models import Connection  # noqa: E402
from ehi_bridge.db.engine import Database  # noqa: E402
from ehi_bridge.db.migrate import upgrade  # noqa: E402

T0 = datetime(2025, 1, 1, tzinfo=UTC)
TYPES = ("Observation", "Condition", "Encounter", "MedicationRequest", "Patient")
STATUSES = ("authorized", "authorized", "authorized", "revoked", "rejected")
PLATFORMS = ("epic", "cerner", "athena", "nextgen", "medicare")
EXPORT_STATUSES = ("complete", "complete", "partial", "failed", "pending", "timed_out")
EVENT_TYPES = (
    "patient.connection_success",
    "patient.ehi_export_success",
    "patient.ehi_export_failed",
    "patient.authorization_revoked",
)
TARGET_P99_MS = 50.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- seeding ----------------------------------------------------------------------------------


def connection_rows(count: int) -> list[dict[str, object]]:
    rows = []
    for n in range(count):
        at = T0 + timedelta(seconds=37 * n)
        rows.append(
            {
                "id": uuid.UUID(int=random.getrandbits(128)).hex,
                "org_connection_id": f"org-{n:08d}",
                "external_id": f"user-{n // 2:07d}",
                "api_mode": "live" if n % 10 == 0 else "test",
                "source": "fasten",
                "status": STATUSES[n % len(STATUSES)],
                "status_changed_at": at,
                "platform_type": PLATFORMS[n % len(PLATFORMS)],
                "created_at": at,
                "updated_at": at,
            }
        )
    return rows


def resource_rows(connection_ids: list[str], total: int) -> Iterator[tuple[object, ...]]:
    """``total`` small resources spread evenly over the connections, five types each."""
    per = max(1, total // len(connection_ids))
    at = T0
    made = 0
    for cid in connection_ids:
        for k in range(per):
            if made >= total:
                return
            rtype = TYPES[k % len(TYPES)]
            rid = f"r{k}"
            raw = b'{"resourceType":"%s","id":"%s","status":"final"}' % (
                rtype.encode(),
                rid.encode(),
            )
            yield (cid, rtype, rid, raw, hashlib.sha256(raw).digest(), 1, at, False)
            made += 1


RESOURCE_COLUMNS = (
    "connection_id, resource_type, resource_id, raw, content_hash, version, ingested_at, revoked"
)


def seed(db: Database, connections: int, resources: int, events: int, exports: int) -> None:
    random.seed(7)
    with db.read_session() as session:
        have = session.scalar(select(func.count()).select_from(Connection)) or 0
        have_resources = session.scalar(text("SELECT count(*) FROM resources")) or 0
    if have >= connections and have_resources >= resources:
        log(f"reusing seeded database ({have} connections, {have_resources} resources)")
        return
    if have or have_resources:
        raise SystemExit("database partly seeded with other sizes; use a fresh one")
    started = time.monotonic()
    rows = connection_rows(connections)
    with db.session() as session:
        session.execute(Connection.__table__.insert(), rows)
        log(f"{connections} connections")
        ids = [r["id"] for r in rows]
        session.execute(
            text(
                'INSERT INTO exports (connection_id, task_id, status, "trigger", bytes_downloaded,'
                " attempts, created_at, updated_at) VALUES (:c, :t, :s, 'auto', 0, 1, :at, :at)"
            ),
            [
                {
                    "c": ids[n % len(ids)],
                    "t": f"task-{n}",
                    "s": EXPORT_STATUSES[n % len(EXPORT_STATUSES)],
                    "at": T0 + timedelta(seconds=11 * n),
                }
                for n in range(exports)
            ],
        )
        log(f"{exports} exports")
        session.execute(
            text(
                "INSERT INTO inbox_events (event_id, webhook_id, event_type, api_mode, body,"
                " received_at, last_received_at, delivery_count, status, org_connection_id,"
                " attempts, apply_count, replays) VALUES (:e, :w, :t, :m, :b, :at, :at, 1, :s,"
                " :o, 1, 1, 0)"
            ),
            [
                {
                    "e": f"evt-{n}",
                    "w": f"msg-{n}",
                    "t": EVENT_TYPES[n % len(EVENT_TYPES)],
                    "m": "live" if n % 10 == 0 else "test",
                    "b": b'{"id":"evt-%d"}' % n,
                    "at": T0 + timedelta(seconds=5 * n),
                    "s": "parked" if n % 500 == 0 else "applied",
                    "o": f"org-{n % connections:08d}",
                }
                for n in range(events)
            ],
        )
        log(f"{events} events")
    order = sorted(ids)
    if db.is_sqlite:
        seed_resources_sqlite(db, order, resources)
    else:
        seed_resources_postgres(db, order, resources)
    log(f"{resources} resources; seeding took {time.monotonic() - started:.0f}s")


def seed_resources_sqlite(db: Database, ids: list[str], total: int) -> None:
    raw = db.engine.raw_connection()
    try:
        dbapi = raw.driver_connection
        assert dbapi is not None
        dbapi.execute("PRAGMA synchronous=OFF")
        dbapi.execute("BEGIN")
        batch: list[tuple[object, ...]] = []
        done = 0
        sql = f"INSERT INTO resources ({RESOURCE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        for row in resource_rows(ids, total):
            at = row[6]
            assert isinstance(at, datetime)
            batch.append((*row[:6], at.strftime("%Y-%m-%d %H:%M:%S.%f"), 0))
            if len(batch) == 100_000:
                dbapi.executemany(sql, batch)
                done += len(batch)
                batch.clear()
                if done % 1_000_000 == 0:
                    log(f"  {done} resources")
        dbapi.executemany(sql, batch)
        dbapi.execute("COMMIT")
        dbapi.execute("PRAGMA synchronous=FULL")
        dbapi.execute("ANALYZE")
    finally:
        raw.close()


def seed_resources_postgres(db: Database, ids: list[str], total: int) -> None:
    raw = db.engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert conn is not None
        with conn.cursor() as cur:
            done = 0
            with cur.copy(f"COPY resources ({RESOURCE_COLUMNS}) FROM STDIN") as copy:
                for row in resource_rows(ids, total):
                    copy.write_row(row)
                    done += 1
                    if done % 1_000_000 == 0:
                        log(f"  {done} resources")
        conn.commit()
        with conn.cursor() as cur:
            cur.execute("ANALYZE")
        conn.commit()
    finally:
        raw.close()


# --- measuring --------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def measure(
    client: httpx.Client, name: str, make_url: Callable[[], str], requests: int
) -> dict[str, object]:
    for _ in range(max(5, requests // 10)):  # warm-up
        assert client.get(make_url()).status_code == 200
    times = []
    items = 0
    for _ in range(requests):
        url = make_url()
        started = time.perf_counter()
        response = client.get(url)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise SystemExit(f"{name}: {url} answered {response.status_code}: {response.text}")
        items += len(response.json()["items"])
        times.append(elapsed)
    return {
        "name": name,
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(percentile(times, 0.99), 2),
        "max_ms": round(max(times), 2),
        "avg_items": round(items / requests, 1),
    }


def scenarios(db: Database) -> list[tuple[str, Callable[[], str]]]:
    with db.read_session() as session:
        ids = list(session.scalars(select(Connection.id).order_by(Connection.id).limit(5000)))
        users = list(
            session.scalars(select(Connection.external_id).order_by(Connection.id).limit(5000))
        )
        total = session.scalar(select(func.count()).select_from(Connection)) or 0
        deep = session.execute(
            select(Connection.created_at, Connection.id)
            .order_by(Connection.created_at.desc(), Connection.id.desc())
            .offset(int(total * 0.9))
            .limit(1)
        ).one()
        max_event = session.scalar(text("SELECT max(id) FROM inbox_events")) or 1
    deep_cursor = encode_cursor("c", [deep[0].isoformat(), deep[1]])

    def pick(values: list[str]) -> str:
        return random.choice(values)

    return [
        ("connections", lambda: "/api/connections"),
        ("connections?status=revoked", lambda: "/api/connections?status=revoked"),
        (
            "connections?platform=epic&mode=live",
            lambda: "/api/connections?platform=epic&mode=live",
        ),
        ("connections?external_id=…", lambda: f"/api/connections?external_id={pick(users)}"),
        ("connections deep cursor (90%)", lambda: f"/api/connections?cursor={deep_cursor}"),
        ("connections limit=500", lambda: "/api/connections?limit=500"),
        ("resources?connection_id=…", lambda: f"/api/resources?connection_id={pick(ids)}"),
        (
            "resources?connection_id=…&type=…",
            lambda: f"/api/resources?connection_id={pick(ids)}&type={random.choice(TYPES)}",
        ),
        ("resources?external_id=…", lambda: f"/api/resources?external_id={pick(users)}"),
        ("events", lambda: "/api/events"),
        ("events?status=parked", lambda: "/api/events?status=parked"),
        (
            "events deep cursor",
            lambda: (
                "/api/events?cursor="
                + encode_cursor("e", [random.randint(1, max(2, max_event // 10))])
            ),
        ),
        ("exports", lambda: "/api/exports"),
        ("exports?status=failed", lambda: "/api/exports?status=failed"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", help="default: a SQLite file under --data-dir")
    parser.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "ehi-bench"))
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--resources", type=int, default=10_000_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--exports", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300, help="per scenario")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--only", help="run only scenarios whose name contains this")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() after building the app (shows what GC pauses cost)",
    )
    args = parser.parse_args()

    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    url = args.database_url or (
        f"sqlite:///{data_dir / f'bench-{args.connections}-{args.resources}.sqlite3'}"
    )
    upgrade(url)
    db = Database(url)
    seed(db, args.connections, args.resources, args.events, args.exports)
    with db.session() as session:
        _, token = create_api_token(session, "bench")

    env = {**os.environ, "EHI_DATABASE_URL": url, "EHI_DATA_DIR": str(data_dir)}
    if args.gc_freeze:
        env["EHI_BENCH_GC_FREEZE"] = "1"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "bench.api_lists:app",
            "--app-dir",
            str(REPO),
            "--port",
            str(args.port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=REPO,
    )
    base = f"http://127.0.0.1:{args.port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("server did not start")
            time.sleep(0.1)
        results = []
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            for name, make_url in scenarios(db):
                if args.only and args.only not in name:
                    continue
                result = measure(client, name, make_url, args.requests)
                results.append(result)
                log(f"{name}: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms")
    finally:
        server.terminate()
        server.wait(timeout=15)
        db.dispose()

    backend = "SQLite" if db.is_sqlite else "PostgreSQL"
    print(
        f"\n{backend}: {args.connections} connections, {args.resources} resources, "
        f"{args.events} events, {args.exports} exports; {args.requests} requests each\n"
    )
    print(f"| {'endpoint':40} | p50 ms | p99 ms | max ms | items |")
    print(f"|{'-' * 42}|--------|--------|--------|-------|")
    for r in results:
        flag = "" if float(str(r["p99_ms"])) <= TARGET_P99_MS else "  > target"
        print(
            f"| {r['name']!s:40} | {r['p50_ms']:>6} | {r['p99_ms']:>6} | {r['max_ms']:>6} |"
            f" {r['avg_items']:>5} |{flag}"
        )
    worst = max(float(str(r["p99_ms"])) for r in results)
    print(f"\nworst p99: {worst} ms (target ≤ {TARGET_P99_MS} ms)")


def app() -> object:
    """uvicorn factory: the real service ASGI app without the background runtime."""
    from ehi_bridge.config import Settings
    from ehi_bridge.server import Service

    service = Service(Settings(), background=False)
    if os.environ.get("EHI_BENCH_GC_FREEZE"):
        import gc

        gc.collect()
        gc.freeze()
    return service


if __name__ == "__main__":
    main()
