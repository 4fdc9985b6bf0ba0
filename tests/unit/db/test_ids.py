import uuid

from ehi_bridge.db.ids import time_ordered_id


def test_a_time_ordered_id_is_a_uuid_version_7_of_its_millisecond() -> None:
    made_at_ns = 1_796_000_123_456_789_000
    parsed = uuid.UUID(hex=time_ordered_id(made_at_ns))
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == made_at_ns // 1_000_000


def test_time_ordered_ids_sort_by_the_time_they_were_made_and_never_repeat() -> None:
    earlier = [time_ordered_id(1_000_000_000_000 + n * 1_000_000) for n in range(100)]
    assert earlier == sorted(earlier)
    many = {time_ordered_id(5_000_000) for _ in range(10_000)}  # one millisecond
    assert len(many) == 10_000
    assert all(len(made) == 32 and int(made, 16) >= 0 for made in many)
