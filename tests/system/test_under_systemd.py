"""The daemon under a real systemd, installed by pasting the operations guide.

A container boots systemd (see `nspawn.py`), and the guide's install block runs in it as written,
as root from a checkout of this tree; pip is pointed at a folder of wheels made beforehand (the
container has no network), which is the one thing added. IB Gateway is the built-in simulator
(`bot simulator`), started as a unit of its own when a test wants the gateway up; orders are
counted in its ledger, not in the bot's journal. SMS go to a stand-in for Twilio inside the
container. Then, in order, as an operator would meet them:

READY with the gateway down, and reconciled once it is up; an operator in group `bot` runs
status/history/pause/trade with SMS configured; a user outside the group gets one line and exit
77; `systemctl stop` while an order works ends in exit 0 with the order cancelled; a watchdog
kill (SIGSTOP) restarts the daemon, which adopts the working order and never sends it again; a
typo'd key exits 78 and is not restarted; six `systemctl restart` in a row leave it running.

The tests share one container and build on each other, in file order. They skip only when the
machine cannot boot a container at all; `BOT_SYSTEM_TESTS=required` (CI) turns that into a failure.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.system.guide import GUIDE, ROOT, shell_blocks
from tests.system.nspawn import Container, cannot_boot_reason

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]

SRC = "/root/bot"
WHEELS = "/root/wheels"
SIM_SOCKET = "/run/ibsim/control.sock"
SMS_PORT = 8099
VENV_PYTHON = "/opt/bot/current/bin/python"
"""The installed release's interpreter: it has aiohttp, which the SMS stand-in uses."""
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2

#: The configuration "then edit it" leads to: the paper example, with SMS on, the schedule off
#: (tests trigger entries), a calendar that trades every day (the test may run on a weekend),
#: a quick walk, and a quick reconnect to the gateway.
CONFIG = f"""\
[broker]
mode = "paper"
host = "127.0.0.1"
port = 4002
client_id = 17
market_data_type = "delayed"
reconnect_max_s = 2.0

[control]
allowed_group = "bot"

[schedule]
enabled = false
exchange_calendar = "24/7"

[strategy]
step_interval_s = 1.0
max_steps = 3
fill_timeout_s = 20.0

[alerts]
account_sid = "{ACCOUNT_SID}"
from_number = "+15557654321"
to = ["+15551234567"]
base_url = "http://127.0.0.1:{SMS_PORT}"
link_lost_after_s = 5.0
"""


def _wheelhouse(directory: Path) -> Path:
    """Wheels of every dependency (and the build backend) for the container's own python3."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    venv = directory / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True, timeout=120)
    wheels = directory / "wheels"
    requirements = [*project["build-system"]["requires"], *project["project"]["dependencies"]]
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "wheel", "--quiet", "--wheel-dir", str(wheels), *requirements],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, f"pip wheel failed: {done.stdout}{done.stderr}"
    return wheels


def _checkout(dest: Path) -> None:
    """The files of this work tree that git would commit (tracked and new, not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """A booted container with the project installed by the guide's install block."""
    reason = cannot_boot_reason()
    if reason is not None:
        if os.environ.get("BOT_SYSTEM_TESTS") == "required":
            pytest.fail(f"system tests are required here but cannot run: {reason}")
        pytest.skip(reason)
    wheels = _wheelhouse(tmp_path_factory.mktemp("wheels"))
    with Container() as c:
        _checkout(c.root / SRC.lstrip("/"))
        c.copy_in(wheels, WHEELS)
        yield c


def _sim(c: Container, op: str, **args: Any) -> dict[str, Any]:
    """One request to the simulator's control socket, from the host, through the container's /proc root."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(f"/proc/{c.leader}/root{SIM_SOCKET}")
        sock.sendall((json.dumps({"op": op, **args}) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 20)
            assert chunk, "simulator closed the control connection"
            data += chunk
    reply: dict[str, Any] = json.loads(data)
    assert reply.get("ok"), reply
    return reply


def _orders(c: Container) -> list[dict[str, Any]]:
    orders: list[dict[str, Any]] = _sim(c, "ledger")["orders"]
    return orders


def _working(c: Container) -> list[dict[str, Any]]:
    return [o for o in _orders(c) if o["status"] in ("Submitted", "PreSubmitted", "PendingSubmit")]


def _bot(c: Container) -> dict[str, str]:
    return c.show(
        "bot", "ActiveState", "SubState", "StatusText", "NRestarts", "MainPID", "ExecMainStatus", "Result"
    )


def _reconciled(c: Container) -> bool:
    s = _bot(c)
    return s["ActiveState"] == "active" and s["StatusText"].startswith("IB link up, reconciled")


# --- install, READY with the gateway down and up -----------------------------------------------------


def test_the_guides_install_block_starts_the_service_with_the_gateway_down(box: Container) -> None:
    """Pasted as written (gateway not running): `enable --now` returns once READY; the unit is
    active and its status says the link is down and entries wait."""
    (install, *_) = shell_blocks(GUIDE, "## Install")
    done = box.run(f"cd {SRC}\nexport PIP_NO_INDEX=1 PIP_FIND_LINKS={WHEELS}\n{install}", timeout_s=400)
    assert "Active: active (running)" in done.stdout, done.stdout
    state = _bot(box)
    assert state["ActiveState"] == "active", state
    assert "entries wait for reconciliation" in state["StatusText"], state
    assert box.run("stat -c '%U:%G %a' /etc/bot /etc/bot/bot.toml").stdout.split("\n")[:2] == [
        "root:bot 750",
        "root:bot 640",
    ]
    assert box.run("id -nG bot").stdout.split() == ["bot"]


def test_sms_configured_checked_as_the_service_and_restarted_still_without_gateway(box: Container) -> None:
    """The SMS block writes the token; the edited configuration passes the guide's check (run as
    user bot with the service's credentials); a restart is READY again, gateway still down."""
    sms = shell_blocks(GUIDE, "### SMS alerts and the IB account (optional)")[0].splitlines()[0]
    box.run(sms, input_text="test-auth-token\n")
    box.run("cat > /etc/bot/bot.toml", input_text=CONFIG)
    (_, check_and_restart) = shell_blocks(GUIDE, "## Install")[:2]
    done = box.run(check_and_restart)
    assert 'alerts.account_sid = "AC' in done.stdout and 'sms = "on' in done.stdout, done.stdout
    state = _bot(box)
    assert state["ActiveState"] == "active" and "IB link" in state["StatusText"], state
    assert not state["StatusText"].startswith("IB link up"), state


def test_reconciled_once_the_gateway_comes_up(box: Container) -> None:
    """The simulated gateway starts on the paper port: the daemon connects and reconciles by
    itself, and says so in its status, with no restart."""
    box.run(f"systemd-run --quiet --unit=smssink {VENV_PYTHON} {SRC}/tests/system/sms_sink.py {SMS_PORT}")
    box.run(
        "systemd-run --quiet --unit=ibsim -p RuntimeDirectory=ibsim "
        f"/opt/bot/current/bin/bot simulator --port 4002 --no-day-expiry --control {SIM_SOCKET}"
    )
    box.wait_for("the daemon to reconcile", lambda: _reconciled(box))
    assert _bot(box)["NRestarts"] == "0"


# --- operators ---------------------------------------------------------------------------------------


def test_an_operator_in_group_bot_runs_the_cli_with_sms_configured(box: Container) -> None:
    """BOT_CONFIG exported as the guide says; alice (group bot) is not asked for secrets."""
    box.run(
        "useradd -m -s /bin/bash alice && usermod -aG bot alice && "
        "useradd -m -s /bin/bash bob && echo 'export BOT_CONFIG=/etc/bot/bot.toml' > /etc/profile.d/bot.sh"
    )
    status = box.run("bot status", user="alice", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    history = box.run("bot history", user="alice", check=False)
    assert history.returncode == 0, history.stdout + history.stderr
    paused = box.run("bot pause", user="alice", check=False)
    assert paused.returncode == 0, paused.stdout + paused.stderr
    refused = box.run("bot trade", user="alice", check=False)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert _orders(box) == []
    resumed = box.run("bot resume", user="alice", check=False)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr


def test_a_user_outside_the_group_gets_one_line_and_exit_77(box: Container) -> None:
    """bob is not in group bot: one line on stderr naming the fix, exit 77, nothing on stdout."""
    done = box.run("bot status", user="bob", check=False)
    assert done.returncode == 77, done.stdout + done.stderr
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "bot" in done.stderr


# --- stop during an entry, watchdog restart ------------------------------------------------------------


def test_systemctl_stop_during_an_entry_exits_0_and_cancels_the_order(box: Container) -> None:
    """The order works (it never fills); `systemctl stop` returns, the daemon exited 0 (systemd's
    result `success`), and the order is cancelled at the gateway."""
    _sim(box, "fill_model", mode="never")
    box.run("bot trade --no-wait", user="alice")
    box.wait_for("the order to work at the gateway", lambda: len(_working(box)) == 1)
    box.run("systemctl stop bot", timeout_s=120)
    state = _bot(box)
    assert (state["ActiveState"], state["Result"], state["ExecMainStatus"]) == ("inactive", "success", "0")
    orders = _orders(box)
    assert [o["status"] for o in orders] == ["Cancelled"], orders
    box.run("systemctl start bot")
    box.wait_for("the daemon to reconcile", lambda: _reconciled(box))


def test_a_watchdog_restart_adopts_the_working_order_and_sends_nothing_twice(box: Container) -> None:
    """SIGSTOP with an order working: systemd's watchdog kills the daemon and restarts it; the new
    daemon reconciles and adopts the order; no order is sent again (counted at the gateway)."""
    restarts = int(_bot(box)["NRestarts"])
    box.run("bot trade --no-wait", user="alice")
    box.wait_for("the second order to work", lambda: len(_working(box)) == 1)
    before = _orders(box)
    pid = _bot(box)["MainPID"]
    box.run(f"kill -STOP {pid}")

    def restarted() -> bool:
        s = _bot(box)
        return int(s["NRestarts"]) == restarts + 1 and s["MainPID"] not in ("0", pid) and _reconciled(box)

    box.wait_for("the watchdog restart", restarted, timeout_s=180)
    assert "Watchdog timeout" in box.run("journalctl -u bot -b --no-pager -o cat").stdout
    assert [o["order_ref"] for o in _orders(box)] == [o["order_ref"] for o in before]
    box.wait_for("the adopted order to end", lambda: not _working(box), timeout_s=120)
    assert [o["order_ref"] for o in _orders(box)] == [o["order_ref"] for o in before]


def test_a_filled_entry_is_the_days_only_one(box: Container) -> None:
    """A manual entry fills; the next is refused as already traded (exit 3); one order per
    orderRef and one order with fills at the gateway; the SMS stand-in received alerts."""
    _sim(box, "fill_model", mode="always")
    filled = box.run("bot trade", user="alice", check=False, timeout_s=180)
    assert filled.returncode == 0, filled.stdout + filled.stderr
    again = box.run("bot trade", user="alice", check=False)
    assert again.returncode == 3, again.stdout + again.stderr
    orders = _orders(box)
    refs = [o["order_ref"] for o in orders]
    assert len(refs) == len(set(refs)), refs
    assert sum(1 for o in orders if o["fills"]) == 1, orders
    assert _sim(box, "status")["duplicate_refs"] == {}
    sms = box.run("journalctl -u smssink --no-pager -o cat").stdout
    assert "SMS to=+15551234567" in sms, sms


# --- configuration errors and start limits ---------------------------------------------------------------


def test_a_typo_in_a_key_exits_78_and_is_not_restarted(box: Container) -> None:
    """`step_intervall_s`: the check says 78; the service fails with status 78 and systemd does
    not schedule a restart (the unit is `failed`, not `auto-restart`)."""
    box.run("cp /etc/bot/bot.toml /root/bot.toml.good")
    box.run(
        "sed -i 's/^step_interval_s = 1.0$/step_intervall_s = 1.0/' /etc/bot/bot.toml"
        " && grep -q intervall /etc/bot/bot.toml"
    )
    (_, check_and_restart) = shell_blocks(GUIDE, "## Install")[:2]
    check = check_and_restart.rsplit("systemctl restart bot", 1)[0]
    checked = box.run(check, check=False)
    assert checked.returncode == 78, checked.stdout + checked.stderr
    assert "step_intervall_s" in checked.stdout + checked.stderr
    failed = box.run("systemctl restart bot", check=False)
    assert failed.returncode != 0
    box.wait_for("the unit to settle", lambda: _bot(box)["SubState"] in ("failed", "auto-restart"))
    state = _bot(box)
    assert (state["SubState"], state["Result"], state["ExecMainStatus"]) == ("failed", "exit-code", "78")
    # An operator's restart resets the counter; an automatic restart would have raised it.
    assert state["NRestarts"] == "0", state
    box.run("cp /root/bot.toml.good /etc/bot/bot.toml && systemctl start bot")


def test_six_restarts_in_a_row_leave_it_running(box: Container) -> None:
    """Routine restarts are not a crash loop: after every start of this run so far, six more
    `systemctl restart bot` all succeed and the daemon is running."""
    for _ in range(6):
        box.run("systemctl restart bot")
    state = _bot(box)
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), state
    box.wait_for("the daemon to reconcile", lambda: _reconciled(box))
