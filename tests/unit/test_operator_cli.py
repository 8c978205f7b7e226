"""The CLI at the terminal: one line and the documented exit code for every problem an operator
meets first, never a traceback; client commands need none of the service's secrets; check-config
refuses what `bot run` refuses; the argument checks and `--config` after the subcommand.

The `bot` command runs as a real process (or, for another user's view, as a forked child that
drops to uid 65534 and calls `bot.cli.main`)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The forked child running as uid 65534 cannot read this interpreter's files (a venv under
# /root): everything `bot.cli` imports lazily on the paths tested is imported here, beforehand.
import bot.cli
import bot.clock
import bot.control.commands
import bot.history
import bot.logs
import bot.service.daemon
import bot.service.preflight
import bot.service.sdnotify
from tests.support.procs import ROOT, _env
from tests.unit.test_control_fakes import run_as

pytestmark = pytest.mark.unit

SID = "AC" + "0" * 32
SMS_WITHOUT_TOKEN = f'[alerts]\naccount_sid = "{SID}"\nto = ["+15551234567"]\nfrom_number = "+15557654321"\n'
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: runs the command as uid 65534")


def run_bot(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m bot ARGS` with a clean environment (no BOT_* from the machine)."""
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env=_env(env),
        timeout=60,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a refused command (asserting there is exactly one)."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def config(tmp_path: Path, text: str, name: str = "bot.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o644)
    return path


@pytest.fixture
def public() -> Iterator[Path]:
    """A directory every user may enter but only root may write (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="bot-cli-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _main_as_nobody(*argv: str) -> dict[str, Any]:
    """`bot.cli.main(argv)` in a child process running as uid/gid 65534, with no BOT_* variables
    from the machine (CI sets its own, e.g. BOT_BROWSER_TESTS, which check-config would name)."""

    def work() -> dict[str, Any]:
        for name in [n for n in os.environ if n.startswith("BOT_")]:
            del os.environ[name]  # the forked child's own environment
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = bot.cli.main(list(argv))
        return {"code": code, "err": err.getvalue(), "out": out.getvalue()}

    return work()


# -- item 3: client commands validate only what they use -------------------------------------


def test_status_needs_no_sms_secret_but_check_config_does(tmp_path: Path) -> None:
    """SMS configured without the auth token (operators cannot read the credential): `bot
    status` gets as far as the socket (69, not 78); `check-config` and `run` still refuse (78)."""
    cfg = config(tmp_path, f'state_dir = "{tmp_path / "state"}"\n' + SMS_WITHOUT_TOKEN)
    for command in ("status", "history", "pause", "trade"):
        done = run_bot("--config", str(cfg), command)
        assert done.returncode == 69, (command, done.stdout, done.stderr)
        assert "auth_token" not in done.stdout + done.stderr
    checked = run_bot("--config", str(cfg), "check-config")
    assert checked.returncode == 78
    assert "auth_token is missing" in one_line(checked)


def test_an_existing_system_socket_is_the_default(tmp_path: Path) -> None:
    """With no socket configured and no RUNTIME_DIRECTORY, an existing /run/bot/bot.sock wins
    over the per-user default; a configured path wins over both."""
    from bot.cli import _socket_path
    from bot.config import RuntimeEnv, Settings

    runtime = RuntimeEnv.from_environ({})
    system = tmp_path / "run-bot" / "bot.sock"
    settings = Settings(state_dir=tmp_path / "state")
    assert _socket_path(settings, runtime, system) == tmp_path / "state" / "bot.sock"
    system.parent.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(system))
        assert _socket_path(settings, runtime, system) == system
        configured = Settings(state_dir=tmp_path / "state", control={"socket_path": tmp_path / "mine.sock"})
        assert _socket_path(configured, runtime, system) == tmp_path / "mine.sock"
    finally:
        listener.close()


@needs_root
async def test_an_unreadable_config_is_77_for_an_operator(public: Path) -> None:
    """The service's config (0640 root:bot) read by a user outside the group: one line naming
    the group fix, exit 77 (not a configuration error)."""
    cfg = public / "bot.toml"
    cfg.write_text(f'state_dir = "{public / "state"}"\n')
    cfg.chmod(0o600)
    result = await run_as(65534, 65534, [], lambda: _main_as_nobody("--config", str(cfg), "status"))
    assert result["code"] == 77, result
    assert result["err"].count("\n") == 1
    assert "permission denied" in result["err"] and "usermod -aG bot" in result["err"]


# -- item 7: one line and the documented exit code -------------------------------------------


def test_a_state_dir_that_is_a_file_is_one_line_74(tmp_path: Path) -> None:
    """`bot run` with a file where the state directory should be: 74, one line, no traceback;
    `bot history` says the same."""
    (tmp_path / "state").write_text("not a directory")
    cfg = config(tmp_path, f'state_dir = "{tmp_path / "state"}"\n')
    done = run_bot("--config", str(cfg), "run")
    assert done.returncode == 74
    assert one_line(done).startswith(
        f"state_dir {tmp_path / 'state'} is not a directory (a file is in the way)"
    )
    history = run_bot("--config", str(cfg), "history")
    assert history.returncode == 74
    assert "is not a directory" in one_line(history)


def test_history_where_the_daemon_never_ran_is_one_line_69(tmp_path: Path) -> None:
    """No daemon and no journal: one line saying so and how to start it (69), JSON envelope too."""
    cfg = config(tmp_path, f'state_dir = "{tmp_path / "state"}"\n')
    done = run_bot("--config", str(cfg), "history")
    assert done.returncode == 69
    line = one_line(done)
    assert line.startswith(f"bot daemon is not running and has never run with state_dir {tmp_path / 'state'}")
    as_json = run_bot("history", "--json", "--config", str(cfg))
    assert as_json.returncode == 69
    reply = json.loads(as_json.stdout)
    assert reply == {"v": 1, "command": "history", "ok": False, "exit_code": 69, "error": line}


@needs_root
async def test_a_state_dir_the_user_cannot_write_is_one_line_74(public: Path) -> None:
    """`bot run` as a user who cannot create the state directory: 74 naming the user and the fix."""
    cfg = public / "bot.toml"
    cfg.write_text(f'state_dir = "{public / "state"}"\n')
    cfg.chmod(0o644)
    result = await run_as(65534, 65534, [], lambda: _main_as_nobody("--config", str(cfg), "run"))
    assert result["code"] == 74, result
    assert result["err"] == (
        f"state_dir {public / 'state'} cannot be created in {public} by nobody (uid 65534): give the "
        "service user the directory (chown bot:bot, mode 0700), or set state_dir\n"
    )


@needs_root
async def test_a_read_only_journal_is_one_line_74(public: Path) -> None:
    """The journal file is read-only for the service user: 74, one line, nothing started."""
    state = public / "state"
    state.mkdir()
    journal = state / "journal-simulated.sqlite3"
    journal.write_bytes(b"")
    journal.chmod(0o444)
    os.chown(state, 65534, 65534)
    os.chown(journal, 65534, 65534)
    cfg = public / "bot.toml"
    cfg.write_text(f'state_dir = "{state}"\n')
    cfg.chmod(0o644)
    result = await run_as(65534, 65534, [], lambda: _main_as_nobody("--config", str(cfg), "run"))
    assert result["code"] == 74, result
    assert result["err"].startswith(f"the journal {journal} is read-only for nobody (uid 65534)")
    assert result["err"].count("\n") == 1
    assert not (state / "bot.lock").exists()


@needs_root
async def test_history_of_a_journal_only_the_service_reads_is_one_line_77(public: Path) -> None:
    """Daemon down, journal in the service's 0700 state directory: 77 with the sudo hint."""
    state = public / "state"
    state.mkdir(mode=0o700)
    (state / "journal-simulated.sqlite3").write_bytes(b"")
    cfg = public / "bot.toml"
    # No daemon listening at a socket the user may reach, so history falls back to the journal.
    cfg.write_text(f'state_dir = "{state}"\n[control]\nsocket_path = "{public / "bot.sock"}"\n')
    cfg.chmod(0o644)
    result = await run_as(65534, 65534, [], lambda: _main_as_nobody("--config", str(cfg), "history"))
    assert result["code"] == 77, result
    assert result["err"].count("\n") == 1
    assert "sudo -u bot bot history" in result["err"]


# -- item 8: check-config refuses what run refuses -------------------------------------------


def test_check_config_refuses_a_socket_path_too_long_and_a_missing_group(tmp_path: Path) -> None:
    """Both are refused by `bot run` when it binds the socket; check-config says so first (78),
    with the same lines, and `bot run` refuses them before taking any lock."""
    long_socket = "/tmp/" + "s" * 110 + ".sock"
    cfg = config(
        tmp_path,
        f'state_dir = "{tmp_path / "state"}"\n[control]\nsocket_path = "{long_socket}"\n'
        'allowed_group = "no-such-group-here"\n',
    )
    checked = run_bot("--config", str(cfg), "check-config")
    assert checked.returncode == 78
    lines = checked.stderr.splitlines()
    assert lines == [
        f"control socket path {long_socket} is longer than 107 bytes; "
        "set control.socket_path to a shorter path",
        "config error: control.allowed_group: group 'no-such-group-here' does not exist "
        "(create it with `groupadd no-such-group-here` or unset the key)",
    ]
    run = run_bot("--config", str(cfg), "run")
    assert run.returncode == 78
    assert run.stderr.splitlines() == lines
    assert not (tmp_path / "state" / "bot.lock").exists()


@needs_root
async def test_check_config_refuses_a_state_dir_the_user_cannot_write(public: Path) -> None:
    """Run as the service's user, check-config fails (78) where `bot run` would (74)."""
    cfg = public / "bot.toml"
    cfg.write_text(f'state_dir = "{public / "state"}"\n')
    cfg.chmod(0o644)
    result = await run_as(65534, 65534, [], lambda: _main_as_nobody("--config", str(cfg), "check-config"))
    assert result["code"] == 78, result
    assert "cannot be created in" in result["err"] and result["err"].count("\n") == 1


def test_check_config_warns_about_unknown_bot_variables(tmp_path: Path) -> None:
    """A misspelt BOT_* variable is named with the nearest real one; the check still passes."""
    cfg = config(tmp_path, f'state_dir = "{tmp_path / "state"}"\n')
    done = run_bot(
        "--config", str(cfg), "check-config", env={"BOT_BROKR__PORT": "4001", "BOT_LOG_LEVEL": "INFO"}
    )
    assert done.returncode == 0
    assert done.stderr.splitlines() == [
        "warning: environment variable BOT_BROKR__PORT is not a setting and is ignored "
        "(did you mean BOT_BROKER__PORT?)"
    ]


# -- item 10: errors at the right priority under journald -------------------------------------


def test_config_errors_carry_the_error_priority_under_journald(tmp_path: Path) -> None:
    """stderr is the journal stream (JOURNAL_STREAM matches it): each error line starts with
    `<3>`, so `journalctl -p warning` shows it; on a plain stream there is no prefix."""
    cfg = config(tmp_path, "[broker]\nprot = 4001\n")
    err_path = tmp_path / "stderr"
    with err_path.open("w") as err:
        st = os.fstat(err.fileno())
        subprocess.run(
            [sys.executable, "-m", "bot", "--config", str(cfg), "run"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            check=False,
            cwd=ROOT,
            env=_env({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}),
            timeout=60,
        )
    assert err_path.read_text().splitlines() == [
        "<3>config error: broker.prot: unknown key (check the spelling against config/bot.example.toml)"
    ]
    plain = run_bot("--config", str(cfg), "run")
    assert plain.returncode == 78
    assert one_line(plain).startswith("config error: broker.prot")


# -- item 12: arguments and the envelope -------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("history", "--days", "0"),
        ("history", "--days", "-3"),
        ("schedule", "--days", "many"),
        ("run", "--demo", "-1"),
        ("run", "--demo", "nan"),
        ("run", "--demo", "inf"),
    ],
)
def test_bad_days_and_demo_values_are_refused(args: tuple[str, ...]) -> None:
    """argparse refuses them (2) before anything runs."""
    done = run_bot(*args)
    assert done.returncode == 2
    assert "error: argument" in done.stderr and "Traceback" not in done.stderr


def test_config_is_accepted_after_the_subcommand(tmp_path: Path) -> None:
    """`bot status --config FILE` reads FILE, like `bot --config FILE status`."""
    cfg = config(tmp_path, f'state_dir = "{tmp_path / "state"}"\n')
    for args in (("status", "--config", str(cfg)), ("--config", str(cfg), "status")):
        done = run_bot(*args)
        assert done.returncode == 69
        assert str(tmp_path / "state" / "bot.sock") in done.stdout
    nested = run_bot("alerts", "test", "--config", str(cfg), "--json")
    assert nested.returncode == 69
    assert '"command": "alerts test"' in nested.stdout


def test_check_config_json_is_the_envelope(tmp_path: Path) -> None:
    """check-config --json: the effective configuration as the envelope's result."""
    cfg = config(tmp_path, f'state_dir = "{tmp_path / "state"}"\n')
    done = run_bot("check-config", "--json", "--config", str(cfg))
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert (reply["command"], reply["ok"], reply["exit_code"]) == ("check-config", True, 0)
    assert reply["result"]["_derived"]["journal"] == str(tmp_path / "state" / "journal-simulated.sqlite3")
