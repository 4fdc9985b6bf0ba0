"""Re-ingesting the quarantine: rejected lines tried again, e.g. after a parser fix.

Each quarantined line that now parses is written, byte for byte, as an entry of a
temporary Bundle (a Bundle keeps each ``entry.resource``'s own bytes, newlines and all)
and ingested as a run of source ``reingest``; its quarantine row is then marked
``reingested_at``. A line that still fails, or whose bytes were cut at the quarantine's
limit, stays, with the reason.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ehi_bridge.db.base import utcnow
from ehi_bridge.db.engine import Database
from ehi_bridge.records.ingest import ingest_file
from ehi_bridge.records.ndjson import ParseError, parse_line
from ehi_bridge.records.quarantine import mark_reingested, pending_rejected

PAGE: Final = 500


@dataclass
class ReingestOutcome:
    stored: int = 0
    refused: list[str] = field(default_factory=list)  # one line each: row, run, line, why
    run_id: int | None = None


def reingest_quarantine(db: Database, connection_id: str, quarantine_bytes: int) -> ReingestOutcome:
    outcome = ReingestOutcome()
    ready: list[int] = []
    with tempfile.TemporaryDirectory(prefix="ehi-reingest-") as tmp:
        path = Path(tmp) / "quarantine.json"
        with path.open("wb") as out:
            out.write(b'{"resourceType":"Bundle","type":"collection","entry":[')
            after = 0
            while True:
                with db.read_session() as session:
                    rows = pending_rejected(session, connection_id, after, PAGE)
                    page = [
                        (
                            r.id,
                            r.run_id,
                            r.line_number,
                            bytes(r.raw) if r.raw is not None else None,
                            r.truncated,
                            r.raw_size,
                        )
                        for r in rows
                    ]
                if not page:
                    break
                after = page[-1][0]
                for row_id, run_id, line, raw, truncated, size in page:
                    where = f"quarantine row {row_id} (run {run_id}, line {line})"
                    if raw is None or truncated:
                        kept = len(raw) if raw is not None else 0
                        outcome.refused.append(
                            f"{where}: only {kept} of {size} bytes were kept; cannot re-ingest"
                        )
                        continue
                    item = parse_line(raw, line)
                    if isinstance(item, ParseError):
                        outcome.refused.append(f"{where}: still rejected: {item.reason}")
                        continue
                    out.write(b"," if ready else b"")
                    out.write(b'{"resource":' + raw + b"}")
                    ready.append(row_id)
            out.write(b"]}")
        if ready:
            report = ingest_file(
                db,
                path,
                connection_id=connection_id,
                export_id=None,
                source="reingest",
                quarantine_bytes=quarantine_bytes,
            )
            outcome.run_id = report.run_id
            outcome.stored = len(ready) - report.errors
            with db.session() as session:
                mark_reingested(session, ready, utcnow())
    return outcome
