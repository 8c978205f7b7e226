"""A season in minutes: the daemon itself (the composition root: real journal file, real ib_async
client over TCP) trading against the simulated gateway, both in this process on one season clock,
through a walking market with cash settlement, for N trading days of entries and until every
position opened has met its exit rules. Then the simulator's ledger and account judge the season
(`judge`), never the journal.

The clock (`tests.support.season_clock.SeasonClock`, a paced `ScaledClock` over the event loop's
idle time) rushes through nights and weekends (`SeasonPlan.base_speed`), runs the session at
`session_speed` and slows to `slow_speed` in two short windows around the moments the bot acts on
a schedule (the 09:45 entry, the 15:00 time exits); it stands still while the process computes,
so a loaded machine makes the season slower, never different. The harness waits on events only:
the daemon's systemd status saying it reconciled, simulated moments on the shared clock (the day
entries are paused, the last exit time), and the daemon's task ending.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time as wallclock
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiosqlite

from bot.clock import PaceWindow
from bot.config import (
    AlertSettings,
    BrokerSettings,
    ControlSettings,
    RuntimeEnv,
    ScheduleSettings,
    ServiceSettings,
    Settings,
    StrategySettings,
)
from bot.journal.store import Journal, parse_key
from bot.positions.exit_rules import exit_times
from bot.positions.ledger import PositionState, PositionView, parse_exit_key
from bot.positions.settings import ExitSettings
from bot.service.daemon import Daemon
from bot.service.sdnotify import SystemdNotifier
from bot.sim import FillModel, MarketWalk, SimConfig, SimulatedGateway
from bot.trading_days import TradingCalendar, calendar_for
from tests.support.season_clock import SeasonClock

NEW_YORK = ZoneInfo("America/New_York")
RULES = ("short_expiry", "stop_loss", "profit_target", "time_exit")
CLIENT_ID = 17


@dataclass(frozen=True, slots=True)
class SeasonPlan:
    """What a season trades and how fast its clock runs."""

    first_day: date = date(2027, 1, 4)
    entry_days: int = 60
    """Trading days with a scheduled entry; then entries are paused and the exits run out."""
    seed: int = 11
    base_speed: float = 2_000_000.0
    session_speed: float = 100_000.0
    slow_speed: float = 10_000.0
    entry_window: tuple[time, time] = (time(9, 44, 30), time(9, 56))
    exit_window: tuple[time, time] = (time(14, 59, 30), time(15, 12))
    max_open: int = 7
    exits: Mapping[str, Any] = field(
        default_factory=lambda: {
            "profit_target_pct": 50.0,
            "stop_loss_pct": 35.0,
            "time_exit_days": 14,
            "evaluate_every_s": 1800.0,
            "max_quote_age_s": 3600.0,
            "ledger_check_every_s": 3600.0,
        }
    )

    def pace(self) -> list[PaceWindow]:
        """The clock's windows: the slow ones first (the first window that contains a moment wins)."""
        return [
            PaceWindow(*self.entry_window, self.slow_speed),
            PaceWindow(*self.exit_window, self.slow_speed),
            PaceWindow(time(9, 30), time(16, 15), self.session_speed),
        ]

    def trading_days(self, calendar: TradingCalendar) -> list[date]:
        """The entry days."""
        days: list[date] = []
        day = self.first_day
        while len(days) < self.entry_days:
            if calendar.is_trading_day(day):
                days.append(day)
            day += timedelta(days=1)
        return days


class _Notifier(SystemdNotifier):
    """systemd's notifier with no socket that also tells the harness when the daemon reconciled."""

    def __init__(self) -> None:
        super().__init__(None)
        self.reconciled = asyncio.Event()

    def status(self, text: str) -> None:
        super().status(text)
        if "reconciled" in text:
            self.reconciled.set()


@dataclass(slots=True)
class SeasonRecord:
    """What the season left behind: the simulator's record and the journal's, and the timing."""

    plan: SeasonPlan
    days: list[date]
    orders: list[dict[str, Any]]
    account: dict[str, Any]
    pnl: dict[str, dict[str, Any]]
    """Entry key -> the simulator's realised P&L of that entry and its exits (`pnl` op)."""
    positions: list[PositionView]
    intents: list[dict[str, Any]]
    skipped: dict[date, str]
    """Entry days without an entry order, with the journal's reason."""
    wall_s: float
    simulated_days: float
    idle_s: float = 0.0
    """Real seconds the loop was idle (what the clock scaled into simulated time)."""
    protocol_errors: list[str] = field(default_factory=list)
    limits: dict[str, int] = field(default_factory=dict)
    """What the bot did against IB's limits, as the gateway counted it on the season's clock."""
    down_days: dict[date, str] = field(default_factory=dict)
    """Entry days whose entry window the daemon spent down to its end (killed, not yet
    reconciled again), with how: the missed-start policy accounts for a day without an entry
    then (a start after the window does not enter). Empty for a daemon that never stops."""


def season_config(seed: int) -> SimConfig:
    """The gateway of a season: a walking market with cash settlement, a fill engine that wants a
    concession, streams at least 30 ms of idle loop apart whatever the speed."""
    return SimConfig(
        seed=seed,
        spot=6000.0,
        vol=0.17,
        strict=True,
        walk=MarketWalk(annual_vol=0.15, vol_of_vol=0.6, vol_reversion=6.0, step_s=300.0),
        settle_expiries=True,
        # Strikes far enough either side that the walk never leaves the chain in a season.
        strike_range_pct=0.30,
        horizon_days=60,
        tick_interval_s=60.0,
        min_real_tick_s=0.03,
        fill_poll_s=5.0,
        min_real_poll_s=0.01,
        # A limit fills once it concedes 0.05 on the model's mid: the walks step, as at IB.
        fill_model=FillModel.threshold(over_mid=0.05, delay_s=0.0),
    )


async def run_season(plan: SeasonPlan, workdir: Path) -> SeasonRecord:
    """Run one season in `workdir` and return its record (see the module docstring)."""
    calendar = calendar_for("XNYS")
    days = plan.trading_days(calendar)
    state = workdir / "state"
    (state / "locks").mkdir(parents=True, exist_ok=True)
    started = wallclock.monotonic()
    clock = SeasonClock(
        plan.base_speed, start=datetime.combine(days[0], time(9, 0), NEW_YORK), pace=plan.pace()
    )
    clock.install(asyncio.get_running_loop())
    gateway = SimulatedGateway(season_config(plan.seed), clock=clock, calendar=calendar)
    try:
        with clock.hold_while(aiosqlite.Connection, "_execute"):
            port = await gateway.start("127.0.0.1", 0)
            record = await _trade_the_season(plan, days, clock, calendar, state, port, gateway)
    finally:
        clock.uninstall()
        await gateway.stop()
    record.wall_s = wallclock.monotonic() - started
    record.idle_s = clock.idle_s
    record.protocol_errors = list(gateway.protocol_errors)
    record.limits = asdict(gateway.limits.stats(CLIENT_ID))
    return record


def _settings(plan: SeasonPlan, state: Path, port: int) -> Settings:
    return Settings(
        state_dir=state,
        broker=BrokerSettings(
            mode="paper",
            port=port,
            client_id=CLIENT_ID,
            connect_timeout_s=10.0,
            request_timeout_s=10.0,
            reconnect_min_s=1.0,
            reconnect_max_s=30.0,
        ),
        schedule=ScheduleSettings(recheck_s=60.0),
        strategy=StrategySettings(max_open_calendars=plan.max_open),
        control=ControlSettings(socket_path=state / "bot.sock"),
        service=ServiceSettings(lock_dir=state / "locks"),
        alerts=AlertSettings(poll_s=3600.0),
        exits=ExitSettings.model_validate(dict(plan.exits)),
    )


async def _trade_the_season(
    plan: SeasonPlan,
    days: list[date],
    clock: SeasonClock,
    calendar: TradingCalendar,
    state: Path,
    port: int,
    gateway: SimulatedGateway,
) -> SeasonRecord:
    settings = _settings(plan, state, port)
    notifier = _Notifier()
    daemon = Daemon(settings, RuntimeEnv.from_environ({}), clock, notifier, handle_signals=False)
    task = asyncio.create_task(daemon.run(), name="season-daemon")
    try:
        ready = asyncio.ensure_future(notifier.reconciled.wait())
        async with asyncio.timeout(60):
            await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        clock.run()
        # After the last entry day's window, no more entries: the exits run out.
        await _until(clock, datetime.combine(days[-1], time(11, 0), NEW_YORK), task)
        await daemon.pause("season")
        end = datetime.combine(days[-1], time(16, 30), NEW_YORK)
        for position in await daemon.journal.positions(only_open=True):
            times = exit_times(
                opened_at=position.opened_at, legs=position.legs, settings=settings.exits, calendar=calendar
            )
            for moment in (times.time_exit, times.short_expiry):
                if moment is not None:
                    end = max(end, moment.replace(hour=16, minute=30))
        await _until(clock, end, task)
        daemon.stop_requested.set()
        async with asyncio.timeout(120):
            await task
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    simulated_days = (clock.now() - clock.start).total_seconds() / 86400
    ledger: dict[str, Any] = gateway.ledger.to_dict()
    journal = await Journal.open_readonly(settings.journal_path, clock)
    try:
        positions = await journal.positions()
        account = gateway.account.to_dict([p.entry_key for p in positions])
        pnl = {p.entry_key: gateway.account.pnl(p.entry_key, separator=":").to_dict() for p in positions}
        intents = await journal_intents(journal)
        skipped = await days_without_entry(journal, days, ledger["orders"])
    finally:
        await journal.close()
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
        simulated_days=simulated_days,
    )


async def _until(clock: SeasonClock, moment: datetime, task: asyncio.Task[None]) -> None:
    """Wait for the simulated `moment`; a daemon that ends meanwhile ends the wait with its error."""
    left = (moment - clock.now()).total_seconds()
    if left <= 0:
        return
    moment_reached = asyncio.ensure_future(clock.sleep(left))
    try:
        await asyncio.wait({moment_reached, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        moment_reached.cancel()
    if task.done():
        task.result()
        raise AssertionError("the daemon stopped before the season ended")


async def journal_intents(journal: Journal) -> list[dict[str, Any]]:
    """Every intent, with the rule an exit was started for (`why`) and when (`started_at`)."""
    sql = (
        "SELECT i.id, i.kind, i.position_id, i.idempotency_key, i.status, i.quantity, i.filled, "
        "i.broker_filled, i.reason, i.trading_day, i.started_at, i.ended_at, i.source, "
        "(SELECT json_extract(a.detail, '$.why') FROM actions a WHERE a.entry_id = i.id "
        "AND a.kind = 'EXIT_STARTED') AS why FROM intents i ORDER BY i.id"
    )
    async with journal.connection.execute(sql) as cur:
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]


async def days_without_entry(
    journal: Journal, days: Sequence[date], orders: Sequence[Mapping[str, Any]]
) -> dict[date, str]:
    """Entry days without an entry order at the broker, with the journal's account of the day."""
    traded: set[date] = set()
    for o in orders:
        key = parse_key(str(o["order_ref"]))
        if key is not None and ":x" not in str(o["order_ref"]):
            traded.add(key[1])
    out: dict[date, str] = {}
    for day in days:
        if day in traded:
            continue
        # Oldest first from that day on: the day's own rows come first, whatever follows.
        actions = await journal.actions(since_day=day, limit=2000)
        said = [f"{a.kind}: {json.dumps(a.detail)}" for a in actions if a.trading_day == day.isoformat()]
        out[day] = "; ".join(said) or "nothing journaled"
    return out


# -- the judge ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Verdict:
    """What the simulator's record says about the season."""

    findings: list[str] = field(default_factory=list)
    entries: int = 0
    exits_by_rule: Counter[str] = field(default_factory=Counter)
    exit_orders: int = 0
    max_open_at_broker: int = 0
    realised_usd: float = 0.0
    missed_days: dict[date, str] = field(default_factory=dict)
    """Days without an entry order that the daemon's being down accounts for (`down_days`), with
    what the journal says of them."""

    def summary(self, record: SeasonRecord) -> str:
        """One paragraph of numbers."""
        rules = ", ".join(f"{k} {v}" for k, v in sorted(self.exits_by_rule.items()))
        return (
            f"{len(record.days)} entry days, {record.simulated_days:.1f} simulated days in "
            f"{record.wall_s:.1f} s: {self.entries} entries filled, {len(record.skipped)} days without an "
            f"entry order, {self.exit_orders} exit orders, positions closed by {rules}; at most "
            f"{self.max_open_at_broker} calendars open at the broker; realised {self.realised_usd:+.2f} USD; "
            f"at most {record.limits.get('peak_market_data_lines')} market-data lines and "
            f"{record.limits.get('peak_msgs_per_s')} messages in a second of the season's clock"
        )


def _fills(orders: Sequence[Mapping[str, Any]]) -> list[tuple[datetime, int, Mapping[str, Any], float]]:
    """Every fill of every order: (time, sequence, order, quantity), in the order they happened."""
    out = []
    seq = 0
    for order in orders:
        for fill in order["fills"]:
            out.append((datetime.fromisoformat(fill["time"]), seq, order, float(fill["qty"])))
            seq += 1
    return sorted(out, key=lambda f: (f[0], f[1]))


def _leg_moves(order: Mapping[str, Any], qty: float) -> dict[int, float]:
    """conId -> contracts bought (+) or sold (-) by `qty` units of a combo order."""
    sign = 1.0 if order["action"] == "BUY" else -1.0
    return {
        int(leg["con_id"]): sign * (1.0 if leg["action"] == "BUY" else -1.0) * float(leg["ratio"]) * qty
        for leg in order["legs"]
    }


def _expiry_of(local_symbol: str) -> date:
    """The expiry in an OCC symbol such as `SPXW  270122C06000000`."""
    stamp = local_symbol[6:12]
    return date(2000 + int(stamp[0:2]), int(stamp[2:4]), int(stamp[4:6]))


def judge(record: SeasonRecord) -> Verdict:
    """Judge the season at the simulator's ledger and account (see the test for what each means)."""
    v = Verdict()
    orders = record.orders
    if record.protocol_errors:
        v.findings.append(f"the gateway saw protocol errors: {record.protocol_errors[:3]}")
    limits = record.limits
    if limits.get("line_violations") or limits.get("peak_market_data_lines", 0) > 100:
        v.findings.append(f"over IB's 100 market-data lines: {limits}")
    if limits.get("msgs_over_rate") or limits.get("peak_msgs_per_s", 0) > 50:
        v.findings.append(f"over IB's 50 messages a second (of the season's clock): {limits}")
    # One order per orderRef.
    for ref, n in Counter(o["order_ref"] for o in orders).items():
        if n > 1:
            v.findings.append(f"{n} orders with orderRef {ref}")
    entries = [o for o in orders if parse_exit_key(o["order_ref"]) is None]
    exits = [o for o in orders if parse_exit_key(o["order_ref"]) is not None]
    v.exit_orders = len(exits)
    # At most one entry order per trading day, none outside the entry days, each day accounted for.
    per_day: dict[date, list[str]] = defaultdict(list)
    for o in entries:
        key = parse_key(o["order_ref"])
        if key is None:
            v.findings.append(f"an order that is not the bot's: {o['order_ref']}")
            continue
        per_day[key[1]].append(o["order_ref"])
    for day, refs in per_day.items():
        if len(refs) > 1:
            v.findings.append(f"{day}: {len(refs)} entry orders {refs}")
        if day not in record.days:
            v.findings.append(f"{day}: an entry order on a day without a scheduled entry")
    filled_entries = [o for o in entries if sum(f["qty"] for f in o["fills"]) > 0]
    v.entries = len(filled_entries)
    for day, why in record.skipped.items():
        if "max_open_calendars" in why or "calendars open" in why:
            continue
        if day in record.down_days:
            v.missed_days[day] = f"{record.down_days[day]}; journal: {why}"
            continue
        v.findings.append(f"{day}: no entry order, and not for max_open_calendars: {why}")
    # Every filled entry closed by exactly one exit order, in full, and nothing else left.
    exits_of: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for o in exits:
        parsed = parse_exit_key(o["order_ref"])
        assert parsed is not None
        exits_of[parsed[0]].append(o)
    for entry in filled_entries:
        qty = sum(f["qty"] for f in entry["fills"])
        filled = [x for x in exits_of[entry["order_ref"]] if sum(f["qty"] for f in x["fills"]) > 0]
        closed = sum(f["qty"] for x in filled for f in x["fills"])
        if len(filled) != 1 or abs(closed - qty) > 1e-9:
            v.findings.append(
                f"{entry['order_ref']}: {len(filled)} exit orders with fills, {closed:g} of {qty:g} closed"
            )
        for x in exits_of[entry["order_ref"]]:
            if [(leg["con_id"], leg["action"]) for leg in x["legs"]] != [
                (leg["con_id"], leg["action"]) for leg in entry["legs"]
            ] or x["action"] != "SELL":
                v.findings.append(f"{x['order_ref']}: not a SELL of the entry's own BAG")
    for closed_ref in exits_of:
        if closed_ref not in {e["order_ref"] for e in filled_entries}:
            v.findings.append(f"exit orders for {closed_ref}, which has no filled entry")
    still = [p for p in record.account["positions"] if abs(float(p["qty"])) > 1e-9]
    if still:
        v.findings.append(f"the account still holds {still}")
    if record.account["settlements"]:
        v.findings.append(f"options were held to settlement: {record.account['settlements']}")
    # Net leg positions never flipped; never a short leg held into its expiry day; max open.
    symbols = {int(p["con_id"]): str(p["local_symbol"]) for p in record.account["positions"]}
    net: dict[int, float] = defaultdict(float)
    lots: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    open_count = 0
    for when, _, order, qty in _fills(orders):
        ref = str(order["order_ref"])
        exit_of = parse_exit_key(ref)
        owner = exit_of[0] if exit_of is not None else ref
        was_open = any(abs(q) > 1e-9 for q in lots[owner].values())
        for con_id, move in _leg_moves(order, qty).items():
            before, after = net[con_id], net[con_id] + move
            if before * after < -1e-9:
                v.findings.append(f"{when:%Y-%m-%d %H:%M}: {ref} took {con_id} from {before:g} to {after:g}")
            net[con_id] = after
            mine_before, mine_after = lots[owner][con_id], lots[owner][con_id] + move
            if mine_before * mine_after < -1e-9 or (abs(mine_before) < 1e-9 and owner != ref):
                v.findings.append(f"{when:%Y-%m-%d %H:%M}: {ref} reversed its position's leg {con_id}")
            lots[owner][con_id] = mine_after
        is_open = any(abs(q) > 1e-9 for q in lots[owner].values())
        open_count += int(is_open) - int(was_open)
        v.max_open_at_broker = max(v.max_open_at_broker, open_count)
        if owner != ref:
            local_day = when.astimezone(NEW_YORK).date()
            for leg in order["legs"]:
                expiry = _expiry_of(symbols[int(leg["con_id"])])
                if leg["action"] == "SELL" and local_day >= expiry:
                    v.findings.append(
                        f"{ref}: short leg {symbols[int(leg['con_id'])]} held into its expiry day"
                    )
    if v.max_open_at_broker > record.plan.max_open:
        v.findings.append(f"{v.max_open_at_broker} calendars open at once, over max_open_calendars")
    # Each exit by one of its rules; every position's realised P&L equal to the broker's.
    by_id = {i["id"]: i for i in record.intents}
    for position in record.positions:
        if position.state is not PositionState.CLOSED:
            v.findings.append(f"position #{position.id} ended {position.state.value}")
            continue
        broker = record.pnl[position.entry_key]
        if position.realized is None or abs(position.realized - float(broker["realized"])) > 0.01:
            v.findings.append(
                f"position #{position.id}: journal realised {position.realized}, broker {broker['realized']}"
            )
        v.realised_usd += float(broker["realized"])
    for intent in record.intents:
        if intent["kind"] != "exit" or intent["status"] not in ("filled", "partial"):
            continue
        why = str(intent["why"] or "")
        rule = next((r for r in RULES if why.startswith(r)), None)
        if rule is None or intent["source"] != "scheduler":
            v.findings.append(f"exit #{intent['id']} not by a rule: {intent['source']}: {why}")
        else:
            v.exits_by_rule[rule] += 1
            _check_rule(v, rule, why, intent, by_id, record)
    total = sum(float(r["realized"]) for r in record.pnl.values())
    if abs(total - float(record.account["realized"])) > 0.01 * max(1, len(record.pnl)):
        v.findings.append(f"the positions' P&L {total:.2f} is not the account's {record.account['realized']}")
    journal_total = sum(p.realized or 0.0 for p in record.positions)
    if abs(journal_total - total) > 0.01 * max(1, len(record.positions)):
        v.findings.append(f"the journal's realised P&L {journal_total:.2f} is not the broker's {total:.2f}")
    return v


def _check_rule(
    v: Verdict,
    rule: str,
    why: str,
    intent: Mapping[str, Any],
    by_id: Mapping[int, Mapping[str, Any]],
    record: SeasonRecord,
) -> None:
    """The rule an exit was started for really held when it started."""
    started = datetime.fromisoformat(str(intent["started_at"]))
    position = next(p for p in record.positions if p.id == intent["position_id"])
    times = exit_times(
        opened_at=position.opened_at,
        legs=position.legs,
        settings=ExitSettings.model_validate(dict(record.plan.exits)),
        calendar=calendar_for("XNYS"),
    )
    if rule == "time_exit" and (times.time_exit is None or started < times.time_exit):
        v.findings.append(f"exit #{intent['id']} a time exit at {started}, before {times.time_exit}")
    if rule == "short_expiry" and (times.short_expiry is None or started < times.short_expiry):
        v.findings.append(f"exit #{intent['id']} a hard-rule exit at {started}, before {times.short_expiry}")
    if rule in ("profit_target", "stop_loss"):
        # "profit target: mark 41.52 against debit 18.15 (trigger 21.78)"
        words = why.replace("(", " ").replace(")", " ").split()
        mark, trigger = float(words[words.index("mark") + 1]), float(words[words.index("trigger") + 1])
        hit = mark >= trigger - 1e-9 if rule == "profit_target" else mark <= trigger + 1e-9
        if not hit:
            v.findings.append(f"exit #{intent['id']} {rule} with mark {mark} against trigger {trigger}")
    if times.short_expiry is not None and started.astimezone(NEW_YORK).date() > times.short_expiry.date():
        v.findings.append(f"exit #{intent['id']} started after the hard rule's day")
    del by_id
