"""The install procedure as written: one procedure, pasteable, and the README's short block a true
subset of it; the unit's start limits leave room for routine restarts. (The system test pastes
the procedure into a real systemd; these checks are the quick ones.)"""

from __future__ import annotations

import re

import pytest

from tests.system.guide import GUIDE, README, command_lines, shell_blocks
from tests.unit.test_systemd_unit import UNIT, UnitFile

pytestmark = pytest.mark.unit


def _guide_commands() -> set[str]:
    text = GUIDE.read_text()
    blocks = re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M)
    return {line for block in blocks for line in command_lines(block)}


def test_the_readme_block_is_a_subset_of_the_guide() -> None:
    """Every command in the README's operations block is, word for word, in the guide."""
    (block,) = shell_blocks(README, "## Operations")
    commands = command_lines(block)
    assert commands
    missing = [c for c in commands if c not in _guide_commands()]
    assert not missing, missing


def test_the_install_block_writes_only_absolute_paths_with_the_right_owners() -> None:
    """sysusers gets an absolute path; /etc/bot is root:bot 0750 and bot.toml root:bot 0640;
    the credential files are created only when missing (never truncated)."""
    install = command_lines(shell_blocks(GUIDE, "## Install")[0])
    sysusers = [c for c in install if c.startswith("systemd-sysusers")]
    assert sysusers == ["systemd-sysusers /usr/lib/sysusers.d/bot.conf"]
    assert "install -d -m 0750 -o root -g bot /etc/bot" in install
    config = [c for c in install if c.endswith(" /etc/bot/bot.toml")]
    assert config and config[0].startswith("install -m 0640 -o root -g bot "), config
    for command in install:
        if command.startswith(("install ", "ln ")) and "/dev/null" not in command:
            assert command.split()[-1].startswith("/"), command
    guarded = [c for c in install if "/dev/null" in c]
    assert guarded and all("[ -e " in c and "||" in c for c in guarded), guarded


def test_the_configuration_is_checked_as_the_service_user_with_its_credentials() -> None:
    """The check runs as user bot, with the unit's credentials and state directory, the same
    command at install and after an edit; never as plain root."""
    first, after_edit = shell_blocks(GUIDE, "## Install")[:2]
    checks = [c for c in command_lines(first) + command_lines(after_edit) if "check-config" in c]
    assert len(checks) == 2 and checks[0] == checks[1], checks
    check = checks[0]
    assert check.startswith("systemd-run ") and "-p User=bot" in check
    unit = UnitFile.read(UNIT)
    for credential in unit.values("Service", "LoadCredential"):
        assert f"-p LoadCredential={credential}" in check
    assert f"-p StateDirectory={unit.value('Service', 'StateDirectory')}" in check
    assert f"-E BOT_CONFIG={unit.environment()['BOT_CONFIG']}" in check


def test_every_credential_is_optional_for_the_service() -> None:
    """Each LoadCredential= has a SetCredential= default, so a missing file is no 243 loop."""
    unit = UnitFile.read(UNIT)
    loaded = {v.split(":", 1)[0] for v in unit.values("Service", "LoadCredential")}
    defaults = {v.split(":", 1)[0] for v in unit.values("Service", "SetCredential")}
    assert loaded == defaults


def test_start_limits_allow_routine_restarts_but_stop_a_crash_loop() -> None:
    """systemd counts every start: six restarts after a fix, an upgrade and a rollback fit in the
    burst; a daemon dying at start (RestartSec apart) reaches it within the interval."""
    unit = UnitFile.read(UNIT)
    burst = int(unit.value("Unit", "StartLimitBurst"))
    interval_s = _seconds(unit.value("Unit", "StartLimitIntervalSec"))
    restart_s = _seconds(unit.value("Service", "RestartSec"))
    assert burst >= 1 + 6 + 3 + 1  # first start, six restarts, fix + upgrade + rollback, one more
    assert burst * restart_s < interval_s  # a crash loop hits the limit inside the interval
    guide = GUIDE.read_text()
    assert f"{burst} starts within 10 minutes" in guide and interval_s == 600


def _seconds(span: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)", span)
    assert match, span
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)
