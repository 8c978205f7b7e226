"""The shipped example configurations stay valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import load_settings

pytestmark = pytest.mark.unit

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.toml")), ids=lambda p: p.name)
def test_example_config_loads(path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every file in config/ passes validation as shipped."""
    monkeypatch.setenv("BOT_STATE_DIR", str(tmp_path))
    settings = load_settings(path)
    assert settings.broker.mode in ("simulated", "paper")
