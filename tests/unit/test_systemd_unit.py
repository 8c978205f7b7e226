"""CI checks on the shipped systemd files: sandbox score, parse warnings, required directives.

`systemd-analyze` works offline on a plain file, without a running systemd. Two facts shape these
checks (both measured on systemd 252):

* `verify` prints parse problems (unknown key, bad value) on stderr and still exits 0, so the
  check fails on *any* output, not on the exit status;
* `verify` fails hard when the ExecStart binary does not exist, so it runs on a copy whose
  ExecStart names this interpreter.

Missing tools are a failure, not a skip: a CI image without systemd must not pass silently.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.config import CREDENTIAL_FILES, ServiceSettings
from bot.errors import ExitCode

pytestmark = pytest.mark.unit

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
UNIT = SYSTEMD_DIR / "bot.service"
GATEWAY_EXAMPLE = SYSTEMD_DIR / "ibgateway.service.example"
GATEWAY_DROP_IN = SYSTEMD_DIR / "bot.service.d" / "ibgateway.conf.example"
SYSUSERS = SYSTEMD_DIR / "bot.sysusers"

# Exposure as `systemd-analyze security` shows it (0-10); --threshold takes ten times that.
MAX_EXPOSURE = 1.5
# How long SIGTERM waits for a working order to settle (config key service.drain_timeout_s).
DEFAULT_DRAIN_TIMEOUT_S = ServiceSettings().drain_timeout_s


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed, so the systemd files cannot be checked. Install systemd "
            f"(Debian/Ubuntu: apt-get install systemd); these checks fail instead of skipping."
        )
    return path


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    return _tool("systemd-analyze")


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False, timeout=60)


# --- a small unit-file reader ---------------------------------------------------------------------


class UnitFile:
    """A systemd unit file as sections of (key, value) pairs, repeated keys kept in order.

    configparser cannot hold repeated keys (`Environment=`, `IPAddressAllow=`), so this reads the
    format directly: `[Section]` headers, `#`/`;` comments, `Key=Value`, and backslash-newline
    continuations joined with a space, as systemd does.
    """

    def __init__(self, text: str) -> None:
        self.sections: dict[str, list[tuple[str, str]]] = {}
        current: list[tuple[str, str]] | None = None
        for line in _logical_lines(text):
            if line.startswith("[") and line.endswith("]"):
                current = self.sections.setdefault(line[1:-1], [])
                continue
            key, sep, value = line.partition("=")
            assert sep, f"not a Key=Value line: {line!r}"
            assert current is not None, f"assignment before any section: {line!r}"
            current.append((key.strip(), value.strip()))

    @classmethod
    def read(cls, path: Path) -> UnitFile:
        return cls(path.read_text())

    def values(self, section: str, key: str) -> list[str]:
        """Every assignment of `key` in `section`, in file order."""
        return [v for k, v in self.sections.get(section, []) if k == key]

    def value(self, section: str, key: str) -> str:
        """The effective (last) assignment of `key`; fails the test if there is none."""
        found = self.values(section, key)
        assert found, f"[{section}] {key}= is missing"
        return found[-1]

    def environment(self) -> dict[str, str]:
        """The `Environment=` assignments merged (no quoting is used in our files)."""
        env: dict[str, str] = {}
        for assignment in self.values("Service", "Environment"):
            for word in assignment.split():
                name, _, value = word.partition("=")
                env[name] = value
        return env


def _logical_lines(text: str) -> Iterator[str]:
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        yield pending + line
        pending = ""
    assert not pending, "file ends inside a continued line"


def _with_exec_start(text: str, command: str) -> str:
    """`text` with its (possibly continued) ExecStart= line replaced by `ExecStart=command`."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        if skipping or line.startswith("ExecStart="):
            if not skipping:
                out.append(f"ExecStart={command}")
            skipping = line.rstrip().endswith("\\")
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def _timespan_us(systemd_analyze: str, span: str) -> int:
    """Parse a systemd time span ("90s", "1min 30s") the way systemd does."""
    result = _run(systemd_analyze, "timespan", span)
    assert result.returncode == 0, result.stderr
    match = re.search(r"μs: (\d+)", result.stdout)
    assert match, result.stdout
    return int(match.group(1))


def _verify_output(systemd_analyze: str, unit: Path) -> str:
    result = _run(systemd_analyze, "verify", unit)
    return (
        f"rc={result.returncode}\n{result.stdout}{result.stderr}"
        if (result.returncode or result.stdout or result.stderr)
        else ""
    )


@pytest.fixture
def verifiable_unit(tmp_path: Path) -> Path:
    """A copy of bot.service whose ExecStart names an existing binary, as verify requires."""
    copy = tmp_path / "bot.service"
    copy.write_text(_with_exec_start(UNIT.read_text(), f"{sys.executable} -m bot run"))
    return copy


# --- systemd-analyze security ---------------------------------------------------------------------


def test_security_exposure_is_within_the_threshold(systemd_analyze: str) -> None:
    """`systemd-analyze security --offline=yes --threshold=15` passes; the score is at most 1.5."""
    result = _run(
        systemd_analyze, "security", "--offline=yes", f"--threshold={round(MAX_EXPOSURE * 10)}", UNIT
    )

    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"Overall exposure level for bot\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) <= MAX_EXPOSURE


def test_security_review_sees_the_sandbox_settings(systemd_analyze: str) -> None:
    """The JSON review confirms the key settings are in force, and that PrivateUsers is not."""
    result = _run(systemd_analyze, "security", "--offline=yes", "--json=short", UNIT)
    assert result.returncode == 0, result.stderr
    checks = {check["name"]: check["set"] for check in json.loads(result.stdout)}

    for name in [
        "NoNewPrivileges=",
        "User=/DynamicUser=",
        "CapabilityBoundingSet=~CAP_SYS_ADMIN",
        "AmbientCapabilities=",
        "ProtectSystem=",
        "ProtectHome=",
        "PrivateTmp=",
        "PrivateDevices=",
        "ProtectKernelTunables=",
        "ProtectKernelModules=",
        "ProtectControlGroups=",
        "ProtectClock=",
        "MemoryDenyWriteExecute=",
        "RestrictNamespaces=~user",
        "RestrictAddressFamilies=~AF_PACKET",
        "RestrictAddressFamilies=~AF_NETLINK",
        "SystemCallArchitectures=",
        "SystemCallFilter=~@privileged",
        "SystemCallFilter=~@mount",
        "NotifyAccess=",
        "UMask=",
    ]:
        assert checks.get(name) is True, f"{name} is not set: {checks.get(name)!r}"
    # Deliberately off: in a user namespace operators' uids read as 65534 through SO_PEERCRED.
    assert checks["PrivateUsers="] is False


# --- systemd-analyze verify -----------------------------------------------------------------------


def test_verify_prints_nothing(systemd_analyze: str, verifiable_unit: Path) -> None:
    """No parse warning at all: verify reports them on stderr with rc 0, so any output fails."""
    assert _verify_output(systemd_analyze, verifiable_unit) == ""


def test_verify_with_the_gateway_drop_in_and_example_prints_nothing(
    systemd_analyze: str, verifiable_unit: Path
) -> None:
    """The IB Gateway example unit and the bot's drop-in for it parse cleanly too."""
    drop_in_dir = verifiable_unit.parent / "bot.service.d"
    drop_in_dir.mkdir()
    shutil.copy(GATEWAY_DROP_IN, drop_in_dir / "ibgateway.conf")
    gateway = verifiable_unit.parent / "ibgateway.service"
    gateway.write_text(_with_exec_start(GATEWAY_EXAMPLE.read_text(), sys.executable))

    assert _verify_output(systemd_analyze, verifiable_unit) == ""
    assert _verify_output(systemd_analyze, gateway) == ""


@pytest.mark.parametrize(
    ("good", "bad", "complaint"),
    [
        ("NoNewPrivileges=yes", "NoNewPrivilege=yes", "Unknown key"),
        ("Type=notify", "Type=notfy", "Failed to parse service type"),
        ("WatchdogSec=30s", "WatchdogSec=half a minute", "Failed to parse sec value"),
    ],
    ids=["typo-key", "typo-value", "bad-timespan"],
)
def test_verify_check_catches_a_mistake(
    systemd_analyze: str, verifiable_unit: Path, good: str, bad: str, complaint: str
) -> None:
    """The silent-verify check can fail: a typo produces output even though rc stays 0."""
    text = verifiable_unit.read_text()
    assert good in text
    verifiable_unit.write_text(text.replace(good, bad))

    output = _verify_output(systemd_analyze, verifiable_unit)

    assert complaint in output
    assert output.startswith("rc=0\n"), "verify is expected to exit 0 on a parse warning"


# --- the directives the daemon depends on ---------------------------------------------------------


@pytest.fixture(scope="module")
def unit() -> UnitFile:
    return UnitFile.read(UNIT)


def test_the_daemon_talks_to_systemd_as_a_notify_service(unit: UnitFile) -> None:
    """Readiness and the watchdog come over NOTIFY_SOCKET, from the main process only."""
    assert unit.value("Service", "Type") == "notify"
    assert unit.value("Service", "NotifyAccess") == "main"
    assert unit.value("Service", "WatchdogSec")
    assert unit.value("Service", "ExecStart").split()[1:] == ["run"]


def test_failures_restart_but_bad_configuration_does_not_loop(unit: UnitFile) -> None:
    """Restart on failure with a pause and a start limit; exit 78 (bad config) is final."""
    assert unit.value("Service", "Restart") == "on-failure"
    assert unit.value("Service", "RestartSec")
    assert str(int(ExitCode.CONFIG)) in unit.value("Service", "RestartPreventExitStatus").split()
    # Start limits are [Unit] settings; systemd 252 ignores them (with a warning) in [Service].
    assert unit.value("Unit", "StartLimitIntervalSec")
    assert int(unit.value("Unit", "StartLimitBurst")) >= 2
    assert not unit.values("Service", "StartLimitIntervalSec")


def test_stop_timeout_covers_the_order_drain(systemd_analyze: str, unit: UnitFile) -> None:
    """systemd must not SIGKILL the daemon while it drains a working order after SIGTERM."""
    stop_us = _timespan_us(systemd_analyze, unit.value("Service", "TimeoutStopSec"))
    assert stop_us > DEFAULT_DRAIN_TIMEOUT_S * 1_000_000 + 10_000_000  # drain plus headroom
    watchdog_us = _timespan_us(systemd_analyze, unit.value("Service", "WatchdogSec"))
    assert 10_000_000 <= watchdog_us <= 120_000_000


def test_directories_and_identity(unit: UnitFile) -> None:
    """A static user with a group operators can join; runtime/state/config dirs where the docs say."""
    assert unit.value("Service", "User") == "bot"
    assert unit.value("Service", "Group") == "bot"
    assert not unit.values("Service", "DynamicUser")
    assert unit.values("Service", "PrivateUsers") in ([], ["no"])
    assert unit.value("Service", "RuntimeDirectory") == "bot"
    assert unit.value("Service", "RuntimeDirectoryMode") == "0750"
    assert unit.value("Service", "StateDirectory") == "bot"
    assert unit.value("Service", "StateDirectoryMode") == "0750"
    assert unit.value("Service", "ConfigurationDirectory") == "bot"
    assert unit.value("Service", "UMask") in {"0007", "0077"}


def test_configuration_and_credential_locations_agree(unit: UnitFile) -> None:
    """BOT_CONFIG points into the ConfigurationDirectory; every credential the config reads is loaded."""
    config_dir = f"/etc/{unit.value('Service', 'ConfigurationDirectory')}/"
    assert unit.environment()["BOT_CONFIG"] == f"{config_dir}bot.toml"
    loaded = dict(value.split(":", 1) for value in unit.values("Service", "LoadCredential"))
    assert loaded == {name: f"{config_dir}credentials/{name}" for name in CREDENTIAL_FILES}


def test_egress_is_localhost_and_https_to_anywhere(unit: UnitFile) -> None:
    """IB Gateway on localhost and Twilio (no fixed addresses) are the only network needs."""
    assert unit.value("Service", "IPAddressDeny") == "any"
    allowed = " ".join(unit.values("Service", "IPAddressAllow")).split()
    assert allowed == ["localhost", "0.0.0.0/0", "::/0"]
    assert unit.value("Service", "RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]


def test_the_gateway_is_wanted_never_required() -> None:
    """The bot runs without a gateway (simulator by default) and survives its nightly restart."""
    hard = ["Requires", "Requisite", "BindsTo", "PartOf"]
    for unit_file in (UnitFile.read(UNIT), UnitFile.read(GATEWAY_DROP_IN)):
        assert not [key for key, _ in unit_file.sections.get("Unit", []) if key in hard]
    assert "ibgateway.service" not in UnitFile.read(UNIT).values("Unit", "Wants")
    drop_in = UnitFile.read(GATEWAY_DROP_IN)
    assert drop_in.values("Unit", "Wants") == ["ibgateway.service"]
    assert drop_in.values("Unit", "After") == ["ibgateway.service"]


def test_unit_reader_handles_repeats_and_continuations() -> None:
    """The reader keeps repeated keys in order and joins continued lines."""
    parsed = UnitFile("[Service]\n# c\nEnvironment=A=1\nEnvironment=B=2\nExecStart=/x \\\n  --y\n")
    assert parsed.values("Service", "Environment") == ["A=1", "B=2"]
    assert parsed.value("Service", "ExecStart") == "/x --y"
    assert _with_exec_start("[Service]\nExecStart=/x \\\n  --y\nUser=bot\n", "/z") == (
        "[Service]\nExecStart=/z\nUser=bot\n"
    )


# --- sysusers.d -----------------------------------------------------------------------------------


def test_sysusers_file_creates_the_user_and_group(tmp_path: Path) -> None:
    """`systemd-sysusers` accepts the file and would create user and group `bot`, with no complaint."""
    sysusers = _tool("systemd-sysusers")
    (tmp_path / "usr/lib/sysusers.d").mkdir(parents=True)
    shutil.copy(SYSUSERS, tmp_path / "usr/lib/sysusers.d/bot.conf")

    result = _run(sysusers, "--dry-run", f"--root={tmp_path}", "bot.conf")

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Creating group 'bot'" in output
    assert "Creating user 'bot'" in output
    assert "bot.conf:" not in output, output  # parse complaints are prefixed with file:line
