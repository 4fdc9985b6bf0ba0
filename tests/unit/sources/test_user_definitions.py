"""User platform definitions (``EHI_SOURCES_DEFINITIONS_FILE``): loaded beside the shipped
ones, the file's entry wins on the same id, a broken file is an error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ehi_bridge.sources.definitions import (
    CatalogError,
    definitions,
    read_user_platforms,
    use_user_definitions,
)


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    use_user_definitions(None)


def test_user_platforms_join_the_shipped_ones(tmp_path: Path) -> None:
    path = tmp_path / "defs.json"
    assert read_user_platforms(path) == []  # not written yet: none
    shipped = len(definitions().platforms)
    mine = {
        "id": "kaiser",
        "name": "kaiser",
        "discovery": False,
        "authorize_endpoint": "https://ehr.example/authorize",
        "token_endpoint": "https://ehr.example/token",
        "scopes": ["openid", "patient/*.read"],
        "response_mode": "fragment",
        "default_client_id": "abc",
    }
    override = {**mine, "id": "generic", "name": "my generic"}
    path.write_text(json.dumps([mine, override]))
    with pytest.raises(KeyError):
        definitions().platform("kaiser")
    use_user_definitions(path)
    assert definitions().platform("kaiser").response_mode == "fragment"
    assert definitions().platform("generic").name == "my generic"
    assert len(definitions().platforms) == shipped + 1
    use_user_definitions(None)
    assert definitions().platform("generic").name != "my generic"


@pytest.mark.parametrize("content", ["{}", "not json", '[{"id": "x"}]'])
def test_a_broken_file_is_an_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "defs.json"
    path.write_text(content)
    use_user_definitions(path)
    with pytest.raises(CatalogError):
        definitions()
