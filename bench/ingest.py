"""Ingest benchmark: resources/s from a local JSONL file to committed, queryable rows.

Builds export files of N resources by scaling the Synthea sample (each copy rewrites the
resource ids with a counter prefix, every other byte of the line stays identical), then
ingests each file in a fresh child process on a fresh database and reports throughput and
the child's peak RSS (``ru_maxrss``).

    .venv/bin/python bench/ingest.py                       # 10k, 100k, 1M on both
    .venv/bin/python bench/ingest.py --sizes 10000 --backends sqlite   # quick run
    .venv/bin/python bench/ingest.py --cli --sizes 300000 --formats ndjson,bundle

Every figure is printed beside a *floor* taken in the same run, on the same resources: one
process reads the NDJSON file line by line, parses each line with the standard ``json``
module, computes sha256 and inserts (type, id, hash, bytes) into SQLite (WAL,
``synchronous=FULL``, 5,000 rows a commit). ``--cli`` times ``ehi-bridge import`` as a user
runs it (a subprocess on an already migrated database; its whole wall time less the
interpreter's start-up, itself measured as ``python -c pass``), with its peak RSS (the larger
of the command's process and its parser process), and beside it the *writer alone*: the
import's own write path (``ResourceWriter`` through ``_write_batch``, in the import's chunks
and commits of 500 and 5,000 rows, its WAL checkpoint thread) fed rows parsed beforehand,
untimed, in a fresh process on a migrated database. No import can be faster than its writer
alone.
``--formats bundle`` ingests the same resources as one single-line searchset Bundle whose
``resourceType`` is its last key (``bundle-first``: its first key).

PostgreSQL: ``--pg-url`` (default postgresql://postgres@127.0.0.1:5432/postgres); a
throwaway database is created and dropped per run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sqlite3
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


def build_bundle(ndjson: Path, out: Path, resource_type_first: bool = False) -> Path:
    """The resources of ``ndjson`` as one single-line searchset Bundle, ``resourceType``
    last (or first); each entry.resource is the line's bytes."""
    if out.exists() and out.stat().st_size > 0:
        return out
    tmp = out.with_suffix(".part")
    head = b'{"resourceType":"Bundle",' if resource_type_first else b"{"
    tail = b"]}" if resource_type_first else b'],"resourceType":"Bundle"}'
    with ndjson.open("rb") as src, tmp.open("wb", buffering=4 * 1024 * 1024) as f:
        f.write(head + b'"type":"searchset","id":"bench","entry":[')
        first = True
        for n, line in enumerate(src):
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            f.write(b"" if first else b",")
            f.write(b'{"fullUrl":"urn:bench:' + str(n).encode() + b'","resource":')
            f.write(line)
            f.write(b',"search":{"mode":"match"}}')
            first = False
        f.write(tail)
    tmp.rename(out)
    return out


def floor(ndjson: Path, workdir: Path) -> dict[str, float]:
    """The floor (see the module docstring), in this process; resources/s."""
    db_path = workdir / f"floor-{uuid.uuid4().hex[:8]}.sqlite3"
    db = sqlite3.connect(db_path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE r (type TEXT NOT NULL, id TEXT NOT NULL, hash BLOB NOT NULL, "
            "raw BLOB NOT NULL, UNIQUE (type, id))"
        )
        started = time.perf_counter()
        rows: list[tuple[str, str, bytes, bytes]] = []
        count = 0
        with ndjson.open("rb") as f:
            for line in f:
                line = line.rstrip(b"\r\n")
                if not line:
                    continue
                doc = json.loads(line)
                rows.append((doc["resourceType"], doc["id"], hashlib.sha256(line).digest(), line))
                if len(rows) >= 5000:
                    db.execute("BEGIN")
                    db.executemany("INSERT INTO r VALUES (?, ?, ?, ?)", rows)
                    db.execute("COMMIT")
                    count += len(rows)
                    rows = []
        if rows:
            db.execute("BEGIN")
            db.executemany("INSERT INTO r VALUES (?, ?, ?, ?)", rows)
            db.execute("COMMIT")
            count += len(rows)
        elapsed = time.perf_counter() - started
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(db_path) + suffix).unlink(missing_ok=True)
    return {"resources": count, "seconds": elapsed, "rate": count / elapsed}


def interpreter_start() -> float:
    """Wall time of ``python -c pass``, best of 5."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        best = min(best, time.perf_counter() - started)
    return best


def cli_child(url: str, file: Path) -> None:
    """Runs in a fresh process: ``ehi-bridge import`` as a subprocess, timed; prints its
    wall time and the peak RSS of it and its parser (RUSAGE_CHILDREN: the largest)."""
    env = {**os.environ, "EHI_DATABASE_URL": url, "EHI_LOG_LEVEL": "WARNING"}
    cmd = [
        sys.executable,
        "-m",
        "ehi_bridge",
        "import",
        str(file),
        "--connection",
        "bench",
        "--json",
    ]
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, env=env, cwd=REPO)
    elapsed = time.perf_counter() - started
    report = json.loads(out.stdout)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "resources": report["resources"],
                "errors": report["errors"],
                "status": report["status"],
                "exit": out.returncode,
                "wall": elapsed,
                "peak_rss_mb": peak,
                "parser_rss_mb": report["parser_peak_rss_kib"] / 1024,
            }
        )
    )


def writer_alone_child(url: str, file: Path) -> None:
    """Runs in a fresh process: the rows of ``file`` (NDJSON) parsed first, untimed, then
    written by the import's own write path, timed; prints resources/s."""
    from ehi_bridge.connections.repository import ensure_manual_connection
    from ehi_bridge.db.base import utcnow
    from ehi_bridge.db.engine import Database
    from ehi_bridge.records.ingest import _Counts, _write_batch
    from ehi_bridge.records.ndjson import ParsedResource, parse_line
    from ehi_bridge.records.parser_process import BATCH_ROWS, CHUNK_ROWS
    from ehi_bridge.records.writer import ResourceWriter

    db = Database(url)
    with db.session() as session:
        connection_id = ensure_manual_connection(session, "bench").id
    records = []
    with file.open("rb") as f:
        for number, line in enumerate(f, 1):
            item = parse_line(line.rstrip(b"\r\n"), number)
            assert isinstance(item, ParsedResource)
            records.append(
                (
                    item.resource_type,
                    item.resource_id,
                    item.raw,
                    item.content_hash,
                    item.last_updated,
                    item.patient_ref,
                    False,
                    item.line_number,
                    item.entry_meta,
                )
            )
    os.sync()
    counts = _Counts()
    run_at = utcnow()
    with db.engine.connect() as conn:
        writer = ResourceWriter(conn)
        with conn.begin():
            writer.prepare()
        run_at_bound = writer.bind_time(run_at)
        started = time.perf_counter()
        for batch in range(0, len(records), BATCH_ROWS):
            with conn.begin():
                for chunk in range(batch, min(batch + BATCH_ROWS, len(records)), CHUNK_ROWS):
                    _write_batch(
                        writer,
                        records[chunk : chunk + CHUNK_ROWS],
                        connection_id=connection_id,
                        export_id=None,
                        run_at=run_at,
                        run_at_bound=run_at_bound,
                        fresh=True,
                        counts=counts,
                    )
            writer.committed()
        with conn.begin():
            writer.release()
        elapsed = time.perf_counter() - started
    db.dispose()
    assert counts.inserted == len(records), counts.inserted
    print(json.dumps({"resources": len(records), "seconds": elapsed}))


def _migrated_sqlite(workdir: Path, prefix: str) -> tuple[Path, str, dict[str, str]]:
    db_path = workdir / f"{prefix}-{uuid.uuid4().hex[:8]}.sqlite3"
    url = f"sqlite:///{db_path}"
    env = {**os.environ, "EHI_DATABASE_URL": url, "EHI_LOG_LEVEL": "WARNING"}
    subprocess.run(
        [sys.executable, "-m", "ehi_bridge", "db", "upgrade"],
        check=True,
        env=env,
        cwd=REPO,
        capture_output=True,
    )
    return db_path, url, env


def _remove_sqlite(db_path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)


def run_writer_alone(ndjson: Path, workdir: Path) -> dict[str, float]:
    db_path, url, env = _migrated_sqlite(workdir, "writer")
    try:
        cmd = [sys.executable, __file__, "--writer-alone-child", url, str(ndjson)]
        out = subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=REPO)
        result: dict[str, float] = json.loads(out.stdout.decode().strip().splitlines()[-1])
        result["rate"] = result["resources"] / result["seconds"]
        return result
    finally:
        _remove_sqlite(db_path)


def run_cli(file: Path, args: argparse.Namespace, workdir: Path, start: float) -> dict[str, float]:
    db_path, url, env = _migrated_sqlite(workdir, "cli")
    try:
        os.sync()
        cmd = [sys.executable, __file__, "--cli-child", url, str(file)]
        out = subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=REPO)
        result: dict[str, float] = json.loads(out.stdout.decode().strip().splitlines()[-1])
        result["seconds"] = result["wall"] - start
        result["rate"] = result["resources"] / result["seconds"]
        return result
    finally:
        _remove_sqlite(db_path)


def main_cli(args: argparse.Namespace) -> None:
    args.workdir.mkdir(parents=True, exist_ok=True)
    start = interpreter_start()
    print(f"interpreter start-up {start * 1000:.0f} ms (subtracted)", file=sys.stderr)
    rows = []
    for size in [int(s) for s in args.sizes.split(",") if s]:
        ndjson = build_file(args.source, size, args.workdir / f"synthea-{size}.ndjson")
        for fmt in [f for f in args.formats.split(",") if f]:
            file = (
                ndjson
                if fmt == "ndjson"
                else build_bundle(
                    ndjson,
                    args.workdir / f"synthea-{size}.{fmt}.json",
                    resource_type_first=fmt == "bundle-first",
                )
            )
            for _ in range(args.repeat):
                # Each timed phase starts with no dirty pages of the one before it being
                # written back meanwhile (the floor's and the import's figures moved by up
                # to a third with the writeback of the previous phase).
                os.sync()
                base = floor(ndjson, args.workdir)
                os.sync()
                alone = run_writer_alone(ndjson, args.workdir)
                os.sync()
                got = run_cli(file, args, args.workdir, start)
                assert got["resources"] == size and got["errors"] == 0, got
                ratio = got["rate"] / base["rate"]
                rows.append((fmt, size, file.stat().st_size, base, alone, got, ratio))
                print(
                    f"{fmt:7} {size:>9,} floor {base['rate']:>9,.0f}/s  writer alone "
                    f"{alone['rate']:>9,.0f}/s ({alone['seconds']:.2f}s) = "
                    f"{alone['rate'] / base['rate']:.2f}x floor  import "
                    f"{got['rate']:>9,.0f}/s ({got['seconds']:.2f}s) = {ratio:.2f}x floor, "
                    f"peak RSS {got['peak_rss_mb']:.0f} MB (parser {got['parser_rss_mb']:.0f})",
                    file=sys.stderr,
                    flush=True,
                )
    print()
    print(
        "| format | resources | file MB | floor /s | writer alone /s | x floor | import s "
        "| import /s | x floor | peak RSS MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for fmt, size, nbytes, base, alone, got, ratio in rows:
        print(
            f"| {fmt} | {size:,} | {nbytes / 1e6:,.0f} | {base['rate']:,.0f} | "
            f"{alone['rate']:,.0f} | {alone['rate'] / base['rate']:.2f} | "
            f"{got['seconds']:.2f} | {got['rate']:,.0f} | {ratio:.2f} | {got['peak_rss_mb']:.0f} |"
        )


def child(url: str, file: Path, batch_rows: int) -> None:
    """Runs in a fresh process: schema, one connection, one ingest, one count query."""
    from sqlalchemy import func, select

    from ehi_bridge.connections.repository import ensure_manual_connection
    from ehi_bridge.db.engine import Database
    from ehi_bridge.db.migrate import ensure_schema
    from ehi_bridge.records.ingest import ingest_file
    from ehi_bridge.records.models import Resource
    from ehi_bridge.records.parser_process import keep_parser_ready

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
    parser.add_argument("--cli", action="store_true", help="time `ehi-bridge import` (SQLite)")
    parser.add_argument(
        "--formats", default="ndjson", help="with --cli: ndjson,bundle,bundle-first"
    )
    parser.add_argument("--child", nargs=2, metavar=("URL", "FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--cli-child", nargs=2, metavar=("URL", "FILE"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--writer-alone-child", nargs=2, metavar=("URL", "FILE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.writer_alone_child:
        writer_alone_child(args.writer_alone_child[0], Path(args.writer_alone_child[1]))
        return
    if args.child:
        child(args.child[0], Path(args.child[1]), args.batch_rows)
        return
    if args.cli_child:
        cli_child(args.cli_child[0], Path(args.cli_child[1]))
        return
    if args.cli:
        main_cli(args)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    backends = [b for b in args.backends.split(",") if b]
    rows = []
    for size in sizes:
        file = build_file(args.source, size, args.workdir / f"synthea-{size}.ndjson")
        base = floor(file, args.workdir)
        print(f"floor     {size:>9,} {base['rate']:>10,.0f}/s", file=sys.stderr, flush=True)
        for backend in backends:
            runs = [run_one(backend, file, args, args.workdir) for _ in range(args.repeat)]
            best = max(runs, key=lambda r: r["rate"])
            assert best["stored"] == size and best["errors"] == 0, best
            best["floor"] = base["rate"]
            rows.append((backend, size, file.stat().st_size, best))
            print(
                f"{backend:9} {size:>9,} {best['rate']:>10,.0f}/s "
                f"({best['rate'] / base['rate']:.2f}x floor) {best['seconds']:>8.2f}s "
                f"peak RSS {best['peak_rss_mb']:.0f} MB + parser {best['parser_rss_mb']:.0f} MB, "
                f"client CPU {best['cpu_us_per_resource']:.1f} + parser "
                f"{best['parser_cpu_us_per_resource']:.1f} us/resource",
                file=sys.stderr,
                flush=True,
            )
    print()
    print(
        "| backend | resources | file MB | seconds | resources/s | floor /s | x floor | MB/s "
        "| peak RSS MB | parser peak RSS MB | client CPU µs/resource | parser CPU µs/resource |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for backend, size, nbytes, r in rows:
        print(
            f"| {backend} | {size:,} | {nbytes / 1e6:,.0f} | {r['seconds']:.2f} | "
            f"{r['rate']:,.0f} | {r['floor']:,.0f} | {r['rate'] / r['floor']:.2f} | "
            f"{nbytes / 1e6 / r['seconds']:,.1f} | {r['peak_rss_mb']:.0f} | "
            f"{r['parser_rss_mb']:.0f} | {r['cpu_us_per_resource']:.1f} | "
            f"{r['parser_cpu_us_per_resource']:.1f} |"
        )


if __name__ == "__main__":
    main()
