"""The daemon-side classes: entry triggers, and what is done to the daemons (kills, a second daemon
on the account, a journal restored from an earlier copy, a stepped wall clock).

They are done by the runner and count as fired only when they hit a running daemon: a kill of a
live process or task, a second client id accepted by the gateway, a restore that took entries
away, a clock step that moved a running daemon's clock (across New York midnight, for
`clock.midnight`). Triggers count when the daemon answered them (or, for the scheduler, when the
journal shows the scheduler's attempt).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, time, timedelta
from pathlib import Path

from bench.chaos.arming import ENTRY_ANCHORS, anchored, host_at
from bench.chaos.hosts import InprocHost, backup_journal, read_rows, restore_journal, until
from bench.chaos.plan import FaultClass, Group, Host
from bench.chaos.trial import NEW_YORK, Anchor, Trial

__all__ = ["DAEMON", "TRIGGERS"]

INPROC = frozenset({Host.INPROC})
PROC = frozenset({Host.PROC})


# -- triggers --------------------------------------------------------------------------------------


def _arm_bursts(t: Trial) -> None:
    """1-4 bursts of concurrent `trade` requests, each to one daemon, at random moments."""
    rng = t.rng_for("trigger.burst")
    for i in range(rng.randint(1, 4)):
        size = rng.choice((1, 1, 3, 10, 25))
        target = rng.randrange(2)
        anchor, delay_s = anchored(rng, (Anchor.READY, Anchor.READY, Anchor.CLAIM), t)

        async def go(size: int = size, target: int = target) -> None:
            await t.burst(host_at(t, target), size, "burst")

        t.at(anchor, delay_s, f"trigger.burst.{i}", go)


def _scheduler_fired(t: Trial) -> bool:
    sql = "SELECT COUNT(*) FROM actions WHERE source = 'scheduler'"
    return any(int((read_rows(h.journal_path, sql) or [(0,)])[0][0]) > 0 for h in t.hosts)


def _arm_scheduler(t: Trial) -> None:
    """The scheduled entry (the daemon's demo schedule) 0-1 s after each daemon's first start."""
    demo_s = t.rng_for("trigger.scheduler").uniform(0.0, 1.0)
    t.shape.demo_s = demo_s

    async def fired() -> None:
        await until(lambda: _scheduler_fired(t), demo_s + 5.0)

    t.after_window(fired)


def _arm_late(t: Trial) -> None:
    """The plain second `bot trade` once the day's entry is final: the same-day rule must hold."""
    rng = t.rng_for("trigger.late")
    counts = [rng.randint(1, 3) for _ in range(2)]

    async def go() -> None:
        for host, count in zip(t.hosts, counts, strict=False):
            if not await t.settled(host, 10.0):
                continue
            for _ in range(count):
                t.events["late.after_final"] += 1
                await t.trade(host, "late")

    t.after_window(go, order=1)


TRIGGERS = [
    FaultClass(
        "trigger.burst",
        Group.TRIGGER,
        0.85,
        "1-4 bursts of 1-25 concurrent control-socket `trade` requests at random moments; fired "
        "when one was answered",
        _arm_bursts,
        lambda t: t.events["answered.burst"] > 0,
    ),
    FaultClass(
        "trigger.scheduler",
        Group.TRIGGER,
        0.4,
        "the scheduled (demo) entry 0-1 s after the start; fired when a journal shows a "
        "scheduler-sourced attempt",
        _arm_scheduler,
        _scheduler_fired,
    ),
    FaultClass(
        "trigger.late",
        Group.TRIGGER,
        0.5,
        "plain `trade` requests after the day's entry is final; fired when one was sent then",
        _arm_late,
        lambda t: t.events["late.after_final"] > 0,
        standalone=False,
    ),
]


# -- daemon faults ---------------------------------------------------------------------------------


def _arm_kill(name: str, anchors: Sequence[Anchor]) -> Callable[[Trial], None]:
    """Stop a daemon dead at random instants (1-2 times) and start it again 0-0.3 s later, as
    systemd would; after the restart a trigger follows with probability 0.7."""

    def arm(t: Trial) -> None:
        rng = t.rng_for(name)
        for i in range(rng.choice((1, 1, 2))):
            anchor, delay_s = anchored(rng, anchors, t)
            target = rng.randrange(2)
            restart_s = rng.uniform(0.0, 0.3)
            again = rng.random() < 0.7

            async def go(target: int = target, restart_s: float = restart_s, again: bool = again) -> None:
                host = host_at(t, target)
                async with t.lifecycle(host):
                    if await host.kill():
                        t.events[name] += 1
                        t.events["crashes"] += 1
                    ready = await t.restart(host, restart_s)
                if ready and again:
                    await t.trade(host, "after_restart")

            t.at(anchor, delay_s + 0.01 * i, f"{name}.{i}", go)

    return arm


def _arm_two(t: Trial) -> None:
    """A second daemon on the account; each of the two also gets a trade of its own at a random
    moment (as two hosts' schedules or operators would), whatever the other triggers do."""
    t.shape.daemons = 2
    rng = t.rng_for("daemon.two")
    for index in (0, 1):
        anchor, delay_s = anchored(rng, ENTRY_ANCHORS, t)

        async def go(index: int = index) -> None:
            await t.trade(t.hosts[index], "two_daemons")

        t.at(anchor, delay_s, f"daemon.two.{index}", go)


def _two_fired(t: Trial) -> bool:
    accepted = {c.client_id for c in t.gw.connections if c.event == "accepted"}
    return len(accepted) >= 2


def _entry_keys(path: Path) -> set[str]:
    return {str(r[0]) for r in read_rows(path, "SELECT idempotency_key FROM entries")}


def _arm_restore(t: Trial) -> None:
    """The first daemon's journal replaced by a copy taken (SQLite backup API) the moment it was
    ready, before any entry: the daemon is stopped (or killed), the copy restored, the daemon
    started again, then 1-2 plain triggers."""
    rng = t.rng_for("daemon.restore")
    wait_final = rng.random() < 0.7
    kill = rng.random() < 0.5
    trades = rng.randint(1, 2)

    def take_copy() -> None:
        host = t.hosts[0]
        copy = host.dir / "journal-copy.sqlite3"
        backup_journal(host.journal_path, copy)
        t.state["daemon.restore"] = copy

    async def go() -> None:
        host = t.hosts[0]
        if wait_final:
            await t.settled(host, 10.0)
        async with t.lifecycle(host):
            if kill:
                if await host.kill():
                    t.events["crashes"] += 1
            else:
                await host.stop()
            copy: Path = t.state["daemon.restore"]
            lost = _entry_keys(host.journal_path) - _entry_keys(copy)
            restore_journal(copy, host.journal_path)
            t.restored[host.client_id] = len(t.gw.ledger.orders)
            t.events["daemon.restore"] += 1
            t.events["daemon.restore.lost"] += len(lost)
            ready = await t.restart(host, 0.0)
        if ready:
            for _ in range(trades):
                await t.trade(host, "after_restore")

    t.on_ready(take_copy)
    t.after_window(go, order=2)


def _ny_date(host: InprocHost) -> date:
    return host.clock.now().astimezone(NEW_YORK).date()


def _arm_clock(name: str, *, midnight: bool, machine: bool = False) -> Callable[[Trial], None]:
    """Step an in-process daemon's wall clock by hours (the simulator keeps the true time, so the
    daemon and the broker disagree about the time and maybe the day). For `clock.midnight` the
    daemons start a little before (or after) New York midnight and the step crosses it; half the
    time a second step goes back. `machine`: the gateway's clock starts and steps with them."""

    def arm(t: Trial) -> None:
        rng = t.rng_for(name)
        t.shape.gateway_clock = t.shape.gateway_clock or machine
        if midnight:
            forward = rng.random() < 0.5
            minute = rng.randint(0, 57)
            t.shape.clock_start = time(23, minute) if forward else time(0, minute + 2)
            steps = [timedelta(hours=rng.uniform(1.0, 3.0) * (1 if forward else -1))]
            if rng.random() < 0.5:
                steps.append(-steps[0])
        else:
            steps = [timedelta(hours=rng.choice((-1, 1)) * rng.uniform(1.0, 6.0))]
            if rng.random() < 0.3:
                steps.append(timedelta(hours=rng.choice((-1, 1)) * rng.uniform(1.0, 6.0)))
        target = rng.randrange(2)
        for i, delta in enumerate(steps):
            anchor, delay_s = anchored(rng, ENTRY_ANCHORS, t)

            async def go(delta: timedelta = delta) -> None:
                host = host_at(t, target)
                if not isinstance(host, InprocHost) or not host.alive:
                    return
                before = _ny_date(host)
                host.shift(delta)
                if machine and t.gw_clock is not None:
                    t.gw_clock.offset += delta
                t.events[name] += 1
                if _ny_date(host) != before:
                    t.events[f"{name}.day_changed"] += 1

            t.at(anchor, delay_s + 0.3 * i, f"{name}.{i}", go)

    return arm


DAEMON = [
    FaultClass(
        "daemon.crash",
        Group.DAEMON,
        0.8,
        "an in-process daemon stopped dead (tasks cancelled, no drain) at a random instant and "
        "restarted on its journal; fired when it was running",
        _arm_kill("daemon.crash", ENTRY_ANCHORS),
        lambda t: t.events["daemon.crash"] > 0,
        hosts=INPROC,
    ),
    FaultClass(
        "daemon.sigkill",
        Group.DAEMON,
        1.5,
        "SIGKILL of a `bot run` process at a random instant (booting, idle, claiming, with an "
        "order out), then restarted; fired when the process was alive",
        _arm_kill("daemon.sigkill", (Anchor.BOOT, *ENTRY_ANCHORS)),
        lambda t: t.events["daemon.sigkill"] > 0,
        hosts=PROC,
    ),
    FaultClass(
        "daemon.two",
        Group.DAEMON,
        1.2,
        "two daemons on one account (separate state dirs, lock dirs, client ids); fired when the "
        "gateway accepted both client ids",
        _arm_two,
        _two_fired,
    ),
    FaultClass(
        "daemon.restore",
        Group.DAEMON,
        1.0,
        "the journal replaced by a copy taken before the entry (stopped or killed, restored, "
        "restarted, traded); fired when the restore took entries away",
        _arm_restore,
        lambda t: t.events["daemon.restore.lost"] > 0,
    ),
    FaultClass(
        "clock.step",
        Group.DAEMON,
        0.8,
        "an in-process daemon's wall clock stepped by 1-6 h (the simulator keeps the true time); "
        "fired when a running daemon's clock moved",
        _arm_clock("clock.step", midnight=False),
        lambda t: t.events["clock.step"] > 0,
        hosts=INPROC,
    ),
    FaultClass(
        "clock.midnight",
        Group.DAEMON,
        0.8,
        "daemons start near New York midnight and the wall clock is stepped across it (and maybe "
        "back); fired when a running daemon's New York date changed",
        _arm_clock("clock.midnight", midnight=True),
        lambda t: t.events["clock.midnight.day_changed"] > 0,
        hosts=INPROC,
    ),
    FaultClass(
        "clock.machine",
        Group.DAEMON,
        1.0,
        "the whole machine's clock (the daemons' and the gateway's) starts near New York midnight "
        "and is stepped across it together; fired when a running daemon's New York date changed",
        _arm_clock("clock.machine", midnight=True, machine=True),
        lambda t: t.events["clock.machine.day_changed"] > 0,
        hosts=INPROC,
    ),
]
