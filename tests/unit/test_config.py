"""Configuration: precedence, unknown keys, live consent, secrets never echoed, exit code 78."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import load_settings
from bot.errors import ExitCode, UserError

pytestmark = pytest.mark.unit

SID = "AC" + "0" * 32
TOKEN = "tok-super-secret-123"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No BOT_* or systemd variables leak in from the machine running the tests."""
    import os

    for name in list(os.environ):
        if name.startswith("BOT_") or name in (
            "CREDENTIALS_DIRECTORY",
            "STATE_DIRECTORY",
            "RUNTIME_DIRECTORY",
        ):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_are_simulated_with_a_per_user_state_dir(tmp_path: Path) -> None:
    """No configuration at all: simulated broker, 09:45 New York, state under XDG_DATA_HOME."""
    s = load_settings(None)
    assert s.broker.mode == "simulated"
    assert s.schedule.entry_time.isoformat() == "09:45:00"
    assert s.state_dir == tmp_path / "xdg" / "bot"
    assert s.strategy.front_dte == 21 and s.strategy.back_dte == 28


def test_precedence_file_then_env_then_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """defaults < TOML < BOT_* (with __ nesting) < credentials directory."""
    cfg = _write(
        tmp_path / "bot.toml",
        f'[broker]\nport = 4001\nclient_id = 5\n[alerts]\naccount_sid = "{SID}"\n'
        'to = ["+15551234567"]\nfrom_number = "+15557654321"\nauth_token = "from-file"\n',
    )
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "twilio_auth_token").write_text(TOKEN + "\n")
    monkeypatch.setenv("BOT_BROKER__CLIENT_ID", "9")
    monkeypatch.setenv("BOT_ALERTS__AUTH_TOKEN", "from-env")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    s = load_settings(cfg)
    assert s.broker.port == 4001  # file over default
    assert s.broker.client_id == 9  # env over file
    assert (
        s.alerts.auth_token is not None and s.alerts.auth_token.get_secret_value() == TOKEN
    )  # credential wins
    monkeypatch.setenv("BOT_CONFIG", str(cfg))
    assert load_settings(None).broker.port == 4001  # BOT_CONFIG names the file


def test_every_problem_is_one_line_naming_the_key(tmp_path: Path) -> None:
    """Unknown keys and bad values: one line each, exit code 78."""
    cfg = _write(
        tmp_path / "bad.toml", '[broker]\nport = 99999\nprot = 1\n[schedule]\ntimezone = "Mars/Base"\n'
    )
    with pytest.raises(UserError) as err:
        load_settings(cfg)
    assert err.value.code is ExitCode.CONFIG
    lines = err.value.message.splitlines()
    assert any(line.startswith("config error: broker.port:") and "99999" in line for line in lines)
    assert any(line.startswith("config error: broker.prot: unknown key") for line in lines)
    assert any(line.startswith("config error: schedule.timezone:") for line in lines)
    assert len(lines) == 3


def test_missing_file_and_bad_toml_are_clear_errors(tmp_path: Path) -> None:
    """A named file that does not exist, or is not TOML, is an error (not silently ignored)."""
    with pytest.raises(UserError, match="does not exist") as err:
        load_settings(tmp_path / "nope.toml")
    assert err.value.code is ExitCode.CONFIG
    with pytest.raises(UserError, match="not valid TOML"):
        load_settings(_write(tmp_path / "x.toml", "[broker\n"))


def test_live_requires_explicit_consent(tmp_path: Path) -> None:
    """mode = live without allow_live = true refuses to start."""
    with pytest.raises(UserError, match="allow_live") as err:
        load_settings(_write(tmp_path / "live.toml", '[broker]\nmode = "live"\n'))
    assert err.value.code is ExitCode.CONFIG
    ok = load_settings(_write(tmp_path / "live2.toml", '[broker]\nmode = "live"\nallow_live = true\n'))
    assert ok.broker.mode == "live"


def test_secrets_never_appear_in_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad setting next to a secret: the secret is in no error line."""
    cfg = _write(
        tmp_path / "s.toml",
        f'[alerts]\naccount_sid = "{SID}"\nauth_token = "{TOKEN}"\nto = ["555"]\n'
        f'[broker]\naccount = "{TOKEN}x"\n'
        "port = 0\n",
    )
    with pytest.raises(UserError) as err:
        load_settings(cfg)
    assert TOKEN not in err.value.message
    assert "alerts.to" in err.value.message


def test_check_config_masks_secrets_and_bad_config_exits_78(tmp_path: Path) -> None:
    """`bot check-config` prints the effective configuration with secrets masked; bad → 78."""
    root = Path(__file__).resolve().parents[2]
    cfg = _write(
        tmp_path / "ok.toml",
        f'state_dir = "{tmp_path}"\n[alerts]\naccount_sid = "{SID}"\nauth_token = "{TOKEN}"\n'
        'to = ["+15551234567"]\nfrom_number = "+15557654321"\n',
    )
    done = subprocess.run(
        [sys.executable, "-m", "bot", "--config", str(cfg), "check-config"],
        capture_output=True,
        text=True,
        cwd=root,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert TOKEN not in done.stdout and "**********" in done.stdout
    assert "alerts.to" in done.stdout
    bad = _write(tmp_path / "bad.toml", f'[broker]\nport = "x"\n[alerts]\nauth_token = "{TOKEN}"\n')
    done = subprocess.run(
        [sys.executable, "-m", "bot", "--config", str(bad), "check-config"],
        capture_output=True,
        text=True,
        cwd=root,
        check=False,
    )
    assert done.returncode == 78
    assert TOKEN not in done.stderr + done.stdout
    assert "config error: broker.port" in done.stderr


def test_every_strategy_parameter_comes_from_the_settings() -> None:
    """Each CalendarParams field is a StrategySettings key (none silently left at its default)."""
    import dataclasses

    from bot.config import StrategySettings
    from bot.service.daemon import strategy_params
    from strategies.calendar_spread.strategy import CalendarParams

    names = {f.name for f in dataclasses.fields(CalendarParams)}
    assert names <= set(StrategySettings.model_fields)
    custom = StrategySettings(shape="double", front_dte=30, back_dte=45, step_interval_s=20.0, quantity=3)
    params = strategy_params(custom, demo=False)
    assert (params.shape, params.front_dte, params.back_dte, params.quantity) == ("double", 30, 45, 3)
    assert strategy_params(custom, demo=True).step_interval_s == 3.0
