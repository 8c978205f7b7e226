"""A season against the simulator as a separate process, with crashes and gateway faults.

`bot simulator` runs as its own process on a `ScaledClock` (`--clock-speed`, `--clock-start`,
`--clock-anchor`), and `bot run` in paper mode as another, on the same simulated time
(`--sim-clock`, the clock's `spec()`): the two compute every instant from the real wall clock and
the shared spec, so neither waits for the other. This harness is a third process on that clock
too: it only sleeps until simulated moments, throws its seeded chaos at them, and reads.

The chaos (`plan_chaos`, seeded): the daemon is SIGKILLed at random moments (while it enters,
while it exits, in the session, at night) and restarted at once on its journal; the gateway is
restarted with its port closed for a while, loses and regains its connectivity (1100, then 1101
or 1102), drops every connection, delays, duplicates or omits messages (order status,
executions, commission reports), and lets its position reports trail the fills (never longer
than the daemon's `broker.positions_settle_s`), each through the simulator's control socket.

The pace is one speed for the whole season (the simulator's clock options have no pace
windows): `ProcessSeasonPlan.speed`, 10,000x by default, at which a daemon process on a loaded
two-core machine keeps up (an entry takes some 7 simulated minutes, 40 ms of real time; at
20,000x entries took up to 90 simulated minutes, the daemon falling behind its own walk). Every
interval of the daemon's configuration is simulated time and is set for that pace: walk steps
of 5 minutes, fill timeouts of 30, position reports trusted 10 minutes after the link came up.

The judge is `tests.support.season.judge`, fed from the simulator's own ledger and account
(`ledger`, `account`, `pnl`, `status` over its control socket) and the daemon's journal file,
opened read-only. A day the daemon spent down through its entry window is reported, not failed:
the missed-start policy (no entry after `schedule.entry_window_end`) accounts for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import signal
import sqlite3
import time as wallclock
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bot.clock import ScaledClock, SystemClock
from bot.journal.store import Journal
from bot.positions.exit_rules import exit_times
from bot.positions.settings import ExitSettings
from bot.trading_days import calendar_for
from tests.support.procs import DaemonProcess, SimProcess, wait_until
from tests.support.season import SeasonPlan, SeasonRecord, Verdict, days_without_entry, journal_intents

__all__ = ["ChaosEvent", "ProcessSeason", "ProcessSeasonPlan", "plan_chaos", "run_process_season"]

NEW_YORK = ZoneInfo("America/New_York")
CLIENT_ID = 17
"""The client id `DaemonProcess` configures."""
ORDER_STATUS, EXEC_DETAILS, COMMISSION_REPORT = 3, 11, 59
ENTRY_WINDOW = (time(9, 45), time(10, 30))
"""The schedule's defaults: the entry time and `schedule.entry_window_end`."""
FAULTS = (
    "restart",
    "connectivity",
    "drop_connections",
    "delay",
    "duplicate",
    "omit_commission",
    "positions_lag",
)
"""The gateway faults a season draws from (control ops of `bot.sim.control`)."""

#: Where in a day a chaos event lands (exchange time), and how often it is drawn there: most
#: where the bot acts (an entry or an exit with an order out), the rest anywhere in the session
#: or at night.
_MOMENTS: tuple[tuple[str, time, time, float], ...] = (
    ("entry", time(9, 45, 5), time(9, 53), 0.35),
    ("exit", time(15, 0, 5), time(15, 8), 0.35),
    ("session", time(9, 30), time(16, 0), 0.2),
    ("night", time(16, 20), time(23, 50), 0.1),
)


def process_exits(time_exit_days: int) -> dict[str, Any]:
    """The exit rules of a process season (the in-process season's), with every interval in
    simulated seconds for the season's speed."""
    return {
        "profit_target_pct": 50.0,
        "stop_loss_pct": 35.0,
        "time_exit_days": time_exit_days,
        "evaluate_every_s": 1800.0,
        # The simulator streams at most every 0.25 s of real time: 42 simulated minutes at 10,000x.
        "max_quote_age_s": 7200.0,
        "ledger_check_every_s": 3600.0,
        "step_interval_s": 300.0,
        "fill_timeout_s": 1800.0,
    }


@dataclass(frozen=True, slots=True)
class ProcessSeasonPlan:
    """What a process season trades, how fast, and how much chaos it throws."""

    season: SeasonPlan = field(default_factory=lambda: SeasonPlan(exits=process_exits(14)))
    """Entry days, market seed, max open and exit rules (what the judge reads)."""
    speed: float = 10_000.0
    kills: int = 12
    faults: int = 20
    chaos_seed: int = 1
    boot_lead_s: float = 8.0
    """Real seconds from the start to the first day's 09:00: the processes boot meanwhile."""
    positions_settle_s: float = 600.0
    """The daemon's `broker.positions_settle_s` (simulated); position lags stay within it."""

    def daemon_config(self) -> str:
        """The daemon's configuration beyond `DaemonProcess`'s broker table."""
        exits = "\n".join(f"{k} = {v!r}" for k, v in self.season.exits.items())
        return (
            "[schedule]\nrecheck_s = 60\n"
            f"[strategy]\nstep_interval_s = 300\nfill_timeout_s = 1800\n"
            f"max_open_calendars = {self.season.max_open}\n"
            f"[exits]\n{exits}\n"
            "[alerts]\npoll_s = 3600\n"
            "[dashboard]\nenabled = false\n"
        )

    def daemon_env(self) -> dict[str, str]:
        """Broker intervals in simulated time (they override `DaemonProcess`'s real-time ones)."""
        return {
            "BOT_SCHEDULE__ENABLED": "true",
            "BOT_BROKER__POSITIONS_SETTLE_S": f"{self.positions_settle_s:g}",
            "BOT_BROKER__RECONNECT_MIN_S": "60",
            "BOT_BROKER__RECONNECT_MAX_S": "600",
        }


@dataclass(frozen=True, slots=True, order=True)
class ChaosEvent:
    """One thing done to the season at a simulated moment: `kill`, or a gateway fault."""

    at: datetime
    seq: int
    kind: str
    where: str = field(compare=False)
    """Which part of the day it was drawn in (`_MOMENTS`), or `follow-up`."""
    args: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def text(self) -> str:
        """One line: when, what, with which arguments."""
        args = ", ".join(f"{k}={v}" for k, v in self.args.items() if k != "op")
        local = self.at.astimezone(NEW_YORK)
        return f"{local:%a %m-%d %H:%M:%S} {self.kind}{f' ({args})' if args else ''} [{self.where}]"


def _moment(rng: random.Random, day: date) -> tuple[datetime, str]:
    where, begin, end, _ = rng.choices(_MOMENTS, weights=[m[3] for m in _MOMENTS])[0]
    span = (datetime.combine(day, end) - datetime.combine(day, begin)).total_seconds()
    local = datetime.combine(day, begin, NEW_YORK) + timedelta(seconds=rng.uniform(0, span))
    return local.astimezone(UTC), where


def _fault(rng: random.Random, kind: str, settle_s: float) -> dict[str, Any]:
    match kind:
        case "restart":
            return {"op": "restart", "down_s": round(rng.uniform(60, 1800))}
        case "connectivity":
            return {"op": "connectivity", "lost": True, "data_maintained": rng.random() < 0.5}
        case "drop_connections":
            return {"op": "drop_connections"}
        case "delay":
            msg = rng.choice((ORDER_STATUS, EXEC_DETAILS, COMMISSION_REPORT))
            secs = round(rng.uniform(60, 900))
            return {
                "op": "delay",
                "msg_id": msg,
                "seconds": secs,
                "count": rng.randint(1, 3),
                "client_id": CLIENT_ID,
            }
        case "duplicate":
            msg = rng.choice((ORDER_STATUS, EXEC_DETAILS, COMMISSION_REPORT))
            gap = round(rng.uniform(0, 120))
            return {
                "op": "duplicate",
                "msg_id": msg,
                "count": rng.randint(1, 3),
                "client_id": CLIENT_ID,
                "gap_s": gap,
            }
        case "omit_commission":
            return {"op": "omit", "msg_id": COMMISSION_REPORT, "count": 1, "client_id": CLIENT_ID}
        case "positions_lag":
            return {"op": "positions_lag", "seconds": round(rng.uniform(60, settle_s))}
    raise ValueError(f"unknown fault {kind!r}")


def plan_chaos(plan: ProcessSeasonPlan, days: list[date]) -> list[ChaosEvent]:
    """The season's kills and faults, seeded by `plan.chaos_seed`, on the entry days but the last
    (so the daemon is back before the last entry and the pause that follows it). Every fault
    kind is drawn once before any is drawn twice."""
    rng = random.Random(plan.chaos_seed)
    seq = itertools.count()
    window = days[:-1] or days
    events: list[ChaosEvent] = []
    for _ in range(plan.kills):
        at, where = _moment(rng, rng.choice(window))
        events.append(ChaosEvent(at, next(seq), "kill", where))
    kinds: list[str] = []
    while len(kinds) < plan.faults:
        kinds += rng.sample(FAULTS, len(FAULTS))
    for kind in kinds[: plan.faults]:
        at, where = _moment(rng, rng.choice(window))
        args = _fault(rng, kind, plan.positions_settle_s)
        events.append(ChaosEvent(at, next(seq), kind, where, args))
        # A lost link and a lag end again, after a while.
        if kind == "connectivity":
            back = at + timedelta(seconds=rng.uniform(120, 1800))
            restored = {"op": "connectivity", "restored": True, "data_maintained": args["data_maintained"]}
            events.append(ChaosEvent(back, next(seq), "connectivity_restored", "follow-up", restored))
        if kind == "positions_lag":
            back = at + timedelta(seconds=rng.uniform(1800, 7200))
            events.append(
                ChaosEvent(
                    back, next(seq), "positions_lag_off", "follow-up", {"op": "positions_lag", "seconds": 0}
                )
            )
    return sorted(events)


@dataclass(slots=True)
class ProcessSeason:
    """A process season's record (the judge's input) and what was done to it."""

    record: SeasonRecord
    done: list[str] = field(default_factory=list)
    """Each chaos event as it was carried out, with what the broker held at that moment."""
    kills: int = 0
    kills_with_order_out: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    down: list[tuple[datetime, datetime]] = field(default_factory=list)
    """Simulated intervals from a kill (or the first start) until the daemon reconciled again."""
    incidents: list[str] = field(default_factory=list)
    """What went wrong outside the judge's view: the daemon exiting by itself, a bad last exit."""

    def summary(self, verdict: Verdict) -> str:
        """The season's numbers, for the test's output and the README."""
        record = self.record
        rules = ", ".join(f"{k} {v}" for k, v in sorted(verdict.exits_by_rule.items())) or "none"
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        missed = "; ".join(f"{d}: {why}" for d, why in sorted(verdict.missed_days.items())) or "none"
        return (
            f"{len(record.days)} entry days, {record.simulated_days:.1f} simulated days in "
            f"{record.wall_s:.1f} s of wall time: {verdict.entries} entries filled, "
            f"{len(record.skipped)} days without an entry order ({len(verdict.missed_days)} while the "
            f"daemon was down: {missed}), {verdict.exit_orders} exit orders, positions closed by "
            f"{rules}; at most {verdict.max_open_at_broker} open at the broker; realised "
            f"{verdict.realised_usd:+.2f} USD; {self.kills} kills ({self.kills_with_order_out} with an "
            f"order working at the broker), faults: {faults}; {len(verdict.findings)} findings, "
            f"{len(self.incidents)} incidents"
        )


class _Season:
    """The running season: the two processes, the clock, the chaos log."""

    def __init__(self, plan: ProcessSeasonPlan, workdir: Path, days: list[date]) -> None:
        self.plan = plan
        self.workdir = workdir
        self.days = days
        anchor = datetime.now(UTC) + timedelta(seconds=plan.boot_lead_s)
        self.clock = ScaledClock(
            plan.speed, start=datetime.combine(days[0], time(9, 0), NEW_YORK), anchor=anchor
        )
        self.began = self.clock.now()
        self.sim = SimProcess(workdir, seed=plan.season.seed, args=self._sim_args())
        self.daemon: DaemonProcess | None = None
        self.result: ProcessSeason
        self._down_since: datetime | None = self.began
        self._last_action = 0
        self._watch: asyncio.Task[None] | None = None

    def _sim_args(self) -> list[str]:
        return [
            *("--vol", "0.17"),
            # The in-process season's market: a walk of SPX and its volatility, 5-minute steps.
            *("--walk", "annual_vol=0.15,vol_of_vol=0.6,vol_reversion=6,step_s=300"),
            *("--clock-speed", f"{self.plan.speed:g}"),
            *("--clock-start", self.clock.start.isoformat()),
            *("--clock-anchor", self.clock.anchor.isoformat()),
        ]

    # -- the daemon ------------------------------------------------------------------------------

    def _start_daemon(self) -> None:
        self._last_action = _max_action_id(self._journal_path())
        self.daemon = DaemonProcess(
            self.workdir,
            sim_port=self.sim.port,
            extra_config=self.plan.daemon_config(),
            demo_s=None,
            env=self.plan.daemon_env(),
            run_args=("--sim-clock", self.clock.spec()),
        ).start()
        self._watch = asyncio.create_task(self._until_reconciled(self.daemon), name="season-reconciled")

    def _journal_path(self) -> Path:
        return self.workdir / "state" / "journal.sqlite3"

    async def _until_reconciled(self, daemon: DaemonProcess) -> None:
        """Note when this daemon's first reconciliation is journaled: the end of a down interval."""
        path, after = self._journal_path(), self._last_action
        while True:
            at = _reconciled_after(path, after)
            if at is not None:
                break
            if daemon.proc is not None and daemon.proc.poll() is not None:
                return
            await asyncio.sleep(0.02)
        if self._down_since is not None:
            self.result.down.append((self._down_since, at))
            self._down_since = None

    async def _ready(self) -> None:
        """Until the current daemon has reconciled."""
        assert self._watch is not None
        watch = self._watch

        async def done() -> bool:
            self._check_daemon()
            return watch.done()

        await wait_until(done, 120, "the daemon to reconcile")

    def _check_daemon(self) -> None:
        """A daemon that exited by itself is an incident: noted, and started again."""
        d = self.daemon
        if d is None or d.proc is None or d.proc.poll() is None:
            return
        self.result.incidents.append(
            f"{self.clock.now():%m-%d %H:%M}: the daemon exited {d.proc.returncode} by itself: "
            f"{d.log()[-1500:]}"
        )
        if self._down_since is None:
            self._down_since = self.clock.now()
        self._start_daemon()

    async def _kill(self, event: ChaosEvent) -> None:
        assert self.daemon is not None
        self.daemon.kill9()
        at = self.clock.now()
        status = await self.sim.control("status")
        self.result.kills += 1
        if status["working"]:
            self.result.kills_with_order_out += 1
        last = _last_action(self._journal_path())
        self.result.done.append(
            f"{event.text()}: killed at {at.astimezone(NEW_YORK):%H:%M:%S}, {status['working']} "
            f"order(s) working at the broker, the journal's last row {last}"
        )
        if self._down_since is None:
            self._down_since = at
        if self._watch is not None:
            self._watch.cancel()
        self._start_daemon()

    async def _fault(self, event: ChaosEvent) -> None:
        args = dict(event.args)
        op = args.pop("op")
        await self.sim.control(op, **args)
        if event.where != "follow-up":
            self.result.faults[event.kind] += 1
        self.result.done.append(event.text())

    # -- simulated time --------------------------------------------------------------------------

    async def _until(self, moment: datetime) -> None:
        """Sleep until the simulated `moment`, looking at the daemon every half real second."""
        while (left := (moment - self.clock.now()).total_seconds()) > 0:
            await self.clock.sleep(min(left, 0.5 * self.plan.speed))
            self._check_daemon()

    # -- the season ------------------------------------------------------------------------------

    async def run(self) -> ProcessSeason:
        started = wallclock.monotonic()
        self.result = ProcessSeason(record=_empty_record(self.plan.season, self.days))
        await self.sim.start()
        try:
            await self.sim.control("fill_model", mode="threshold", threshold_over_mid=0.05)
            self._start_daemon()
            await self._ready()
            events = plan_chaos(self.plan, self.days)
            heapq.heapify(events)
            while events:
                event = heapq.heappop(events)
                await self._until(event.at)
                if event.kind == "kill":
                    await self._kill(event)
                else:
                    await self._fault(event)
            await self._finish()
        finally:
            if self.daemon is not None:
                self.daemon.stop()
            if self._watch is not None:
                self._watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watch
            try:
                record = await self._collect()
            finally:
                self.sim.stop()
        record.wall_s = wallclock.monotonic() - started
        self.result.record = record
        return self.result

    async def _finish(self) -> None:
        """After the last entry day's entry: pause entries, let every position meet its exit
        rules, then stop the daemon with SIGTERM."""
        await self._until(datetime.combine(self.days[-1], time(11, 0), NEW_YORK))
        await self._ready()
        assert self.daemon is not None
        paused = await self.daemon.cli("pause", "--json")
        if paused.returncode != 0:
            self.result.incidents.append(f"bot pause failed: {paused.stdout}{paused.stderr}")
        end = max([datetime.combine(self.days[-1], time(16, 30), NEW_YORK), *await self._last_exit_times()])
        for _ in range(4):
            await self._until(end)
            if not await self._open_positions():
                break
            # Something is still open past its rules' times: one more session for the daemon.
            end = _next_session_end(end)
        daemon = self.daemon
        daemon.signal(signal.SIGTERM)
        code = await daemon.wait_exit(120)
        if code != 0:
            self.result.incidents.append(f"the daemon exited {code} on SIGTERM: {daemon.log()[-1500:]}")

    async def _last_exit_times(self) -> list[datetime]:
        settings = ExitSettings.model_validate(dict(self.plan.season.exits))
        calendar = calendar_for("XNYS")
        out = []
        for position in await self._open_positions():
            times = exit_times(
                opened_at=position.opened_at, legs=position.legs, settings=settings, calendar=calendar
            )
            # The first time rule that closes it, whatever the prices do, at that session's end.
            due = [m for m in (times.time_exit, times.short_expiry) if m is not None]
            if due:
                out.append(datetime.combine(min(due).astimezone(NEW_YORK).date(), time(16, 30), NEW_YORK))
        return out

    async def _open_positions(self) -> list[Any]:
        journal = await Journal.open_readonly(self._journal_path(), SystemClock())
        try:
            return await journal.positions(only_open=True)
        finally:
            await journal.close()

    async def _collect(self) -> SeasonRecord:
        """The record from the simulator's control socket and the journal, read-only."""
        plan, days = self.plan.season, self.days
        if self._down_since is not None:
            self.result.down.append((self._down_since, self.clock.now()))
        ledger = await self.sim.control("ledger")
        status = await self.sim.control("status")
        journal = await Journal.open_readonly(self._journal_path(), SystemClock())
        try:
            positions = await journal.positions()
            intents = await journal_intents(journal)
            skipped = await days_without_entry(journal, days, ledger["orders"])
        finally:
            await journal.close()
        keys = [p.entry_key for p in positions]
        account = await self.sim.control("account", refs=keys)
        pnl = {key: await self.sim.control("pnl", prefix=key, separator=":") for key in keys}
        return SeasonRecord(
            plan=plan,
            days=days,
            orders=ledger["orders"],
            account=account,
            pnl=pnl,
            positions=positions,
            intents=intents,
            skipped=skipped,
            wall_s=0.0,
            simulated_days=(self.clock.now() - self.began).total_seconds() / 86400,
            protocol_errors=list(status["protocol_errors"]),
            limits=dict(status["limits"]["clients"].get(str(CLIENT_ID), {})),
            down_days=_down_days(days, self.result.down),
        )


def _empty_record(plan: SeasonPlan, days: list[date]) -> SeasonRecord:
    return SeasonRecord(
        plan=plan,
        days=days,
        orders=[],
        account={},
        pnl={},
        positions=[],
        intents=[],
        skipped={},
        wall_s=0.0,
        simulated_days=0.0,
    )


def _down_days(days: list[date], down: list[tuple[datetime, datetime]]) -> dict[date, str]:
    """Entry days whose window ended while the daemon was down (killed, or not yet reconciled)."""
    out: dict[date, str] = {}
    for day in days:
        begin = datetime.combine(day, ENTRY_WINDOW[0], NEW_YORK)
        end = datetime.combine(day, ENTRY_WINDOW[1], NEW_YORK)
        for since, until in down:
            if since < end and until >= end:
                out[day] = (
                    f"the daemon was down from {since.astimezone(NEW_YORK):%m-%d %H:%M} to "
                    f"{until.astimezone(NEW_YORK):%m-%d %H:%M}, over the window {begin:%H:%M}-{end:%H:%M}"
                )
    return out


def _next_session_end(moment: datetime) -> datetime:
    calendar = calendar_for("XNYS")
    day = moment.astimezone(NEW_YORK).date() + timedelta(days=1)
    while not calendar.is_trading_day(day):
        day += timedelta(days=1)
    return datetime.combine(day, time(16, 30), NEW_YORK)


def _read(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows from the journal, read-only; none while it does not exist yet."""
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []  # the schema is not there yet: a journal being created
    finally:
        conn.close()


def _max_action_id(path: Path) -> int:
    rows = _read(path, "SELECT COALESCE(MAX(id), 0) FROM actions")
    return int(rows[0][0]) if rows else 0


def _reconciled_after(path: Path, action_id: int) -> datetime | None:
    rows = _read(
        path, "SELECT at FROM actions WHERE kind = 'RECONCILED' AND id > ? ORDER BY id LIMIT 1", (action_id,)
    )
    return datetime.fromisoformat(rows[0][0]) if rows else None


def _last_action(path: Path) -> str:
    rows = _read(path, "SELECT kind, trading_day FROM actions ORDER BY id DESC LIMIT 1")
    return f"{rows[0][0]} ({rows[0][1] or '-'})" if rows else "none"


async def run_process_season(plan: ProcessSeasonPlan, workdir: Path) -> ProcessSeason:
    """Run one process season in `workdir` (see the module docstring)."""
    days = plan.season.trading_days(calendar_for("XNYS"))
    return await _Season(plan, workdir, days).run()
