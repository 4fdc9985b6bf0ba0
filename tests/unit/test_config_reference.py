"""docs/configuration.md documents every setting and matches the Settings class."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from ehi_bridge import config_reference
from ehi_bridge.config import Settings
from tests.support import REPO_ROOT


def test_every_setting_has_a_description() -> None:
    assert config_reference.undocumented() == []


def test_the_reference_is_current() -> None:
    """Fails when a setting was added, removed or re-described without `make docs`."""
    written = (REPO_ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert written == config_reference.render(), "docs/configuration.md is stale: run `make docs`"


def test_every_setting_is_a_row_with_its_default() -> None:
    text = config_reference.render()
    rows = [line for line in text.splitlines() if line.startswith("| `EHI_")]
    assert len(rows) == len(Settings.model_fields)
    for name in Settings.model_fields:
        assert f"| `EHI_{name.upper()}` |" in text
    assert "| `EHI_EVENT_MAX_ATTEMPTS` | integer | `5` |" in text
    assert "| `EHI_REVOKED_RECORDS` | `keep` or `purge` | `keep` |" in text


def test_a_setting_without_a_description_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    class Extended(Settings):
        new_knob: SecretStr | None = None

    monkeypatch.setattr(config_reference, "Settings", Extended)
    assert config_reference.undocumented() == ["new_knob"]
    assert config_reference.main(["--check"]) == 1


def test_the_readme_links_to_the_reference() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/configuration.md)" in readme
