"""UTCDateTime's fast SQLite form is exactly the text SQLAlchemy's own DateTime stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter
from sqlalchemy import DateTime
from sqlalchemy.dialects import sqlite

from ehi_bridge.db.base import UTCDateTime

DIALECT = sqlite.dialect()
SQLALCHEMY_TEXT = DateTime(timezone=True).dialect_impl(DIALECT).bind_processor(DIALECT)
OURS = UTCDateTime().dialect_impl(DIALECT).bind_processor(DIALECT)
# What event payloads carry: pydantic's own tzinfo for "Z", not datetime.UTC.
PYDANTIC_UTC = TypeAdapter(datetime).validate_python("2026-01-01T00:00:00Z").tzinfo


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=-5)), timezone(timedelta(0)), PYDANTIC_UTC]
        ),
    )
)
def test_sqlite_text_is_sqlalchemys_of_the_utc_time(moment: datetime) -> None:
    assert SQLALCHEMY_TEXT is not None and OURS is not None
    assert OURS(moment) == SQLALCHEMY_TEXT(moment.astimezone(UTC))


def test_none_stays_none_and_a_naive_time_is_refused() -> None:
    assert OURS is not None
    assert OURS(None) is None
    with pytest.raises(ValueError, match="naive"):
        OURS(datetime(2026, 1, 1))
