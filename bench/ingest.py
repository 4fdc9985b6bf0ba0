"""Ingest benchmark: resources/s from a local JSONL file to committed, queryable rows.

Builds export files of N resources by scaling the Synthea sample (each copy rewrites the
resource ids with a counter prefix, every other byte of the line stays identical), then
ingests each file in a fresh child process on a fresh database and reports throughput and
the child's peak RSS (``ru_maxrss``).

    .venv/bin/python bench/ingest.py                       # 10k, 100k, 1M on both
    .venv/bin/python bench/ingest.py --sizes 10000 --backends sqlite   # quick run

PostgreSQL: ``--pg-url`` (default postgresql://postgres@127.0.0.1:5432/postgres); a
throwaway database is created and dropped per run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "synthea-10-patients"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def source_lines(source: Path) -> list[bytes]:
    lines: list[bytes] = []
    for path in sorted(source.glob("*.ndjson")):
        with path.open("rb") as f:
            lines.extend(line.rstrip(b"\r\n") for line in f if line.strip())
    return lines


def build_file(source: Path, count: int, out: Path) -> Path:
    """``count`` resources: copy k of each source line has its id prefixed with ``k-``."""
    if out.exists() and out.stat().st_size > 0:
        return out
    lines = source_lines(source)
    parsed = [(line, orjson.loads(line)["id"]) for line in lines]
    tmp = out.with_suffix(".part")
    written = 0
    with tmp.open("wb", buffering=4 * 1024 * 1024) as f:
        copy = 0
        while written < count:
            for line, rid in parsed:
                if written >= count:
                    break
                old = b'"id":"' + rid.encode() + b'"'
                new = b'"id":"' + f"{copy}-{rid}".encode() + b'"'
                f.write(line.replace(old, new, 1))
                f.write(b"\n")
                written += 1
            copy += 1
    tmp.rename(out)
    return out


def child(url: str, file: Path, batch_rows: int) -> None:
    """Runs in a fresh process: schema, one connection, one ingest, one count query."""
    from sqlalchemy import func, select

    from ehi_bridge.connections.repository import ensure_manual_connection
    from ehi_bridge.db.engine import Database
    from ehi_bridge.db.migrate import ensure_schema
    from ehi_bridge.records.ingest import ingest_file, keep_parser_ready
    from ehi_bridge.records.models import Resource

    ensure_schema(url)
    db = Database(url)
    with db.session() as session:
        connection_id = ensure_manual_connection(session, f"bench-{uuid.uuid4().hex}").id
    # As in the service (Runtime.start): a parser process is booted before it is needed.
    keep_parser_ready()
    time.sleep(0.5)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss_before = usage.ru_maxrss
    cpu_before = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    report = ingest_file(
        db, file, connection_id=connection_id, export_id=None, batch_rows=batch_rows
    )
    with db.read_session() as session:
        stored = session.scalar(select(func.count()).where(Resource.connection_id == connection_id))
    elapsed = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the parser process
    db.dispose()
    print(
        json.dumps(
            {
                "resources": report.resources,
                "stored": stored,
                "errors": report.errors,
                "seconds": elapsed,
                "rate": report.resources / elapsed,
                "bytes": report.bytes_read,
                "cpu_us_per_resource": cpu / max(report.resources, 1) * 1e6,
                "parser_cpu_us_per_resource": (children.ru_utime + children.ru_stime)
                / max(report.resources, 1)
                * 1e6,
                "rss_before_mb": rss_before / 1024,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                # The ingest's parser process (its VmHWM: ru_maxrss of a spawned child also
                # counts this process's image from before the exec).
                "parser_rss_mb": report.parser_peak_rss_kib / 1024,
            }
        )
    )


def pg_database(admin_url: str) -> tuple[str, str]:
    import psycopg

    name = f"ehi_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, admin_url.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_one(backend: str, file: Path, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    pg_name = None
    if backend == "sqlite":
        db_path = workdir / f"bench-{uuid.uuid4().hex[:8]}.sqlite3"
        url = f"sqlite:///{db_path}"
    else:
        pg_name, url = pg_database(args.pg_url)
    try:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            url,
            str(file),
            "--batch-rows",
            str(args.batch_rows),
        ]
        env = {**os.environ, "EHI_LOG_LEVEL": "WARNING"}
        out = subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=REPO)
        result: dict[str, float] = json.loads(out.stdout.decode().strip().splitlines()[-1])
        return result
    finally:
        if backend == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(str(db_path) + suffix).unlink(missing_ok=True)
        elif pg_name:
            drop_pg_database(args.pg_url, pg_name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ehi-bench")
    parser.add_argument("--pg-url", default=os.environ.get("EHI_BENCH_PG_URL", DEFAULT_PG))
    parser.add_argument("--batch-rows", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; the best is shown")
    parser.add_argument("--child", nargs=2, metavar=("URL", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), args.batch_rows)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    backends = [b for b in args.backends.split(",") if b]
    rows = []
    for size in sizes:
        file = build_file(args.source, size, args.workdir / f"synthea-{size}.ndjson")
        for backend in backends:
            runs = [run_one(backend, file, args, args.workdir) for _ in range(args.repeat)]
            best = max(runs, key=lambda r: r["rate"])
            assert best["stored"] == size and best["errors"] == 0, best
            rows.append((backend, size, file.stat().st_size, best))
            print(
                f"{backend:9} {size:>9,} {best['rate']:>10,.0f}/s {best['seconds']:>8.2f}s "
                f"peak RSS {best['peak_rss_mb']:.0f} MB + parser {best['parser_rss_mb']:.0f} MB, "
                f"client CPU {best['cpu_us_per_resource']:.1f} + parser "
                f"{best['parser_cpu_us_per_resource']:.1f} us/resource",
                file=sys.stderr,
                flush=True,
            )
    print()
    print(
        "| backend | resources | file MB | seconds | resources/s | MB/s | peak RSS MB "
        "| parser peak RSS MB | client CPU µs/resource | parser CPU µs/resource |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for backend, size, nbytes, r in rows:
        print(
            f"| {backend} | {size:,} | {nbytes / 1e6:,.0f} | {r['seconds']:.2f} | "
            f"{r['rate']:,.0f} | {nbytes / 1e6 / r['seconds']:,.1f} | {r['peak_rss_mb']:.0f} | "
            f"{r['parser_rss_mb']:.0f} | {r['cpu_us_per_resource']:.1f} | "
            f"{r['parser_cpu_us_per_resource']:.1f} |"
        )


if __name__ == "__main__":
    main()
