"""The `bot` command line: parse, load the configuration once, call one function.

Every problem a user can meet ends in one line on stderr naming it and the fix, and a distinct
exit code (see `bot.errors.ExitCode`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import sys
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot import __version__
from bot.config import RuntimeEnv, Settings, dump_effective, environ, load_settings
from bot.errors import ExitCode, UserError
from bot.sim.cli_options import add_market_arguments, market_options

if TYPE_CHECKING:
    from bot.clock import ScaledClock

__all__ = ["main"]

#: Where a system install's daemon listens (systemd RuntimeDirectory=bot); operators' shells
#: have no RUNTIME_DIRECTORY, so the CLI looks here before falling back to the state directory.
SYSTEM_SOCKET = Path("/run/bot/bot.sock")

#: Commands that talk to a running daemon or read its journal: they validate only what they use
#: (no SMS credentials needed), and `--json` wraps their errors in the envelope too.
CLIENT_COMMANDS = frozenset(
    {
        "schedule",
        "trade",
        "status",
        "history",
        "pause",
        "resume",
        "resolve",
        "alerts",
        "positions",
        "close",
        "dashboard",
    }
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 3660:
        raise argparse.ArgumentTypeError(f"{value} is not between 1 and 3660")
    return value


def _positive_points(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of points") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of points")
    return value


def _demo_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or not 0 <= value <= 86_400:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 86400 seconds")
    return value


def _clock_spec(text: str) -> ScaledClock:
    from bot.clock import ScaledClock

    try:
        return ScaledClock.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--sim-clock {text!r}: {exc}") from None


def _config_option(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    # Accepted before and after the subcommand; the subcommand's (given later) wins.
    parser.add_argument(
        "--config",
        type=Path,
        default=None if top else argparse.SUPPRESS,
        help="TOML configuration file (default: $BOT_CONFIG)",
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bot",
        description="An exactly-once SPX calendar-spread trader for Interactive Brokers.",
    )
    p.add_argument("--version", action="version", version=f"bot {__version__}")
    _config_option(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon (simulated gateway unless configured)")
    run.add_argument(
        "--demo",
        nargs="?",
        type=_demo_seconds,
        const=5.0,
        metavar="SECONDS",
        help="instead of the daily schedule, one entry SECONDS (default 5) after start, on any day",
    )
    # Testing only, so not in --help: the daemon on the simulator's accelerated time (the
    # `ScaledClock.spec()` text it was started with). Refused (exit 78) unless the broker mode is
    # paper or simulated: a live account must never be traded on a clock that is not the time.
    run.add_argument("--sim-clock", type=_clock_spec, default=None, metavar="SPEC", help=argparse.SUPPRESS)

    cc = sub.add_parser("check-config", help="print the effective configuration, secrets masked")
    cc.add_argument("--json", action="store_true", help="JSON output")

    sch = sub.add_parser("schedule", help="print the coming entry times and skipped days")
    sch.add_argument("--from", dest="start", type=date.fromisoformat, help="first day (YYYY-MM-DD)")
    sch.add_argument("--days", type=_positive_int, default=14, help="how many calendar days (default 14)")
    sch.add_argument("--json", action="store_true", help="JSON output")

    tr = sub.add_parser("trade", help="ask the running daemon for a manual entry now")
    tr.add_argument("--force", action="store_true", help="bypass the same-day rule (asks to confirm)")
    tr.add_argument("--yes", action="store_true", help="do not ask to confirm --force")
    tr.add_argument("--no-wait", action="store_true", help="return once the entry started")
    tr.add_argument("--json", action="store_true", help="one JSON event per line")

    st = sub.add_parser("status", help="the daemon's state (exit 0 healthy or paused, 1 degraded, 69 down)")
    st.add_argument("--json", action="store_true", help="JSON output")

    hi = sub.add_parser("history", help="entries and blocked attempts by day")
    hi.add_argument("--days", type=_positive_int, default=7, help="how many days back (default 7)")
    hi.add_argument("--json", action="store_true", help="JSON output")

    pa = sub.add_parser("pause", help="stop scheduled and manual entries until resumed")
    pa.add_argument("--json", action="store_true", help="JSON output")
    rsm = sub.add_parser("resume", help="allow entries again")
    rsm.add_argument("--json", action="store_true", help="JSON output")

    po = sub.add_parser("positions", help="open positions with their next exit rule; realised P&L")
    po.add_argument("--json", action="store_true", help="JSON output")

    cl = sub.add_parser(
        "close", help="close an open position (or --all) now; exit 0 closed, 3 refused, 4 not filled"
    )
    target = cl.add_mutually_exclusive_group(required=True)
    target.add_argument("position_id", nargs="?", type=int, help="the position's id (`bot positions`)")
    target.add_argument("--all", action="store_true", help="every open position")
    cl.add_argument("--yes", action="store_true", help="do not ask to confirm")
    cl.add_argument("--no-wait", action="store_true", help="return once the exit started")
    cl.add_argument("--json", action="store_true", help="one JSON event per line")

    da = sub.add_parser("dashboard", help="print the dashboard's URL with its access token")
    da.add_argument("--json", action="store_true", help="JSON output")

    rs = sub.add_parser("resolve", help="record what happened to an entry whose outcome is unknown")
    rs.add_argument("entry_id", type=int, help="the entry's id (#N in alerts and `bot history`)")
    rs.add_argument("outcome", choices=["filled", "unfilled"], help="what the account shows")
    rs.add_argument(
        "--quantity", type=_positive_int, default=None, help="units filled (default: all ordered)"
    )
    rs.add_argument(
        "--price",
        type=_positive_points,
        default=None,
        metavar="POINTS",
        help="the average fill the account shows, in points a unit (makes the position's P&L known)",
    )
    rs.add_argument("--json", action="store_true", help="JSON output")

    bk = sub.add_parser("backup", help="a consistent copy of the journal, safe while the daemon runs")
    bk.add_argument("file", type=Path, help="the new file to write (never overwritten)")
    bk.add_argument(
        "--journal", type=Path, help="the journal to copy (default: the one in the configured state_dir)"
    )

    al = sub.add_parser("alerts", help="SMS alerts")
    al_sub = al.add_subparsers(dest="alerts_command", required=True, metavar="ACTION")
    at = al_sub.add_parser("test", help="send one test SMS through the running daemon (exit 4 failed)")
    at.add_argument("--json", action="store_true", help="JSON output")
    _config_option(at)

    sim = sub.add_parser("simulator", help="run the simulated IB Gateway in the foreground")
    sim.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    sim.add_argument("--port", type=int, default=4002, help="port (default 4002, IB's paper port)")
    sim.add_argument("--seed", type=int, default=7, help="market model seed")
    sim.add_argument("--spot", type=float, default=6000.0, help="SPX spot")
    sim.add_argument("--vol", type=float, default=0.18, help="implied volatility of the model")
    from bot.sim.faults import FAULT_SPEC_HELP  # import-light, unlike the gateway itself

    sim.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SPEC",
        help=f"inject a fault (repeatable): {FAULT_SPEC_HELP}",
    )
    sim.add_argument(
        "--no-bag-execution",
        dest="bag_execution",
        action="store_false",
        help="report combo fills with leg executions only, no BAG-level execution",
    )
    sim.add_argument(
        "--no-day-expiry",
        dest="day_orders_expire",
        action="store_false",
        help="keep DAY orders working past the session close (16:15 New York; 13:15 early close)",
    )
    sim.add_argument(
        "--time-zone",
        default="UTC",
        metavar="ZONE",
        help="the gateway's zone, for reqExecutions filter times without one (default UTC)",
    )
    sim.add_argument("--control", type=Path, help="Unix socket for the fault-injection control channel")
    hostile = sim.add_argument_group("IB's rules (off by default unless noted)")
    hostile.add_argument(
        "--chain",
        default="full",
        metavar="SHAPE",
        help="strikes missing in some expiries: full (default), far-sparse[:DAYS[:BAND[:STEP]]], "
        "random[:KEEP[:BAND]]",
    )
    hostile.add_argument(
        "--missing",
        action="append",
        default=[],
        metavar="TC:YYYYMMDD:STRIKE[:C|P]",
        help="a contract the chain does not list (repeatable), e.g. SPXW:20270115:6100",
    )
    hostile.add_argument(
        "--enforce-market-rules", action="store_true", help="refuse limits off the price increments (110)"
    )
    hostile.add_argument(
        "--combo-increments",
        choices=("package", "legs"),
        default="package",
        help="a combo's net limit moves in 0.05 (package, Cboe's SPX rule) or by the legs' rule",
    )
    hostile.add_argument(
        "--modify-processing-s",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="a modification within this long of the last one is refused with 2102",
    )
    hostile.add_argument(
        "--enforce-pacing", action="store_true", help="refuse over --max-msg-rate with 100, then disconnect"
    )
    hostile.add_argument("--max-msg-rate", type=int, default=50, metavar="N", help="messages/s (default 50)")
    hostile.add_argument(
        "--max-market-data-lines", type=int, default=100, metavar="N", help="lines per client (default 100)"
    )
    hostile.add_argument(
        "--no-line-limit", action="store_true", help="count market-data lines but never refuse (101)"
    )
    hostile.add_argument(
        "--snapshot-end-s",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="a snapshot's end marker this long after its ticks; it holds a line meanwhile",
    )
    add_market_arguments(sim)
    for command in sub.choices.values():
        _config_option(command)
    return p


def _socket_path(settings: Settings, runtime: RuntimeEnv, system_socket: Path = SYSTEM_SOCKET) -> Path:
    """The socket a client command talks to: configured, else the system service's when it
    exists (operators copy nothing by hand), else the per-user default."""
    if settings.control.socket_path is None and runtime.runtime_directory is None and system_socket.exists():
        return system_socket
    return settings.socket_path(runtime)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `bot` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    env = environ()
    runtime = RuntimeEnv.from_environ(env)
    try:
        if args.command == "simulator":
            return _simulator(args, runtime)
        if args.command == "backup":
            return _backup(args)
        settings = load_settings(args.config, client=args.command in CLIENT_COMMANDS)
        return _dispatch(args, settings, runtime)
    except UserError as exc:
        _print_error(exc.message, runtime)
        if getattr(args, "json", False) and args.command != "run":
            from bot.control.commands import write_envelope

            write_envelope(sys.stdout, _command_name(args), exc.code, error=exc.message)
        return int(exc.code)
    except KeyboardInterrupt:
        return 130


def _command_name(args: argparse.Namespace) -> str:
    command: str = args.command
    return f"alerts {args.alerts_command}" if command == "alerts" else command


def _print_error(message: str, runtime: RuntimeEnv, priority: int = 3) -> None:
    """One line per problem on stderr; under journald (stderr is its stream), each line carries
    the syslog priority (`<3>`: error) so `journalctl -p warning` shows it."""
    from bot.logs import stdout_is_journal

    prefix = f"<{priority}>" if stdout_is_journal(runtime.journal_stream, sys.stderr) else ""
    for line in message.splitlines() or [message]:
        print(f"{prefix}{line}", file=sys.stderr)


def _dispatch(args: argparse.Namespace, settings: Settings, runtime: RuntimeEnv) -> int:
    from bot.logs import configure_logging

    command: str = args.command
    # Masked in every log line from the first one on (account-shaped ids are masked anyway).
    accounts = [settings.broker.account.get_secret_value()] if settings.broker.account else []
    if command == "run":
        configure_logging(
            settings.log_level, stream=sys.stdout, journal_stream=runtime.journal_stream, accounts=accounts
        )
        return _run(settings, runtime, args.demo, args.sim_clock)
    configure_logging("WARNING", stream=sys.stderr, accounts=accounts)
    if command == "check-config":
        return _check_config(settings, runtime, as_json=args.json, env=environ())
    if command == "schedule":
        return _schedule(settings, args.start, args.days, as_json=args.json)
    from bot.control import commands

    path = _socket_path(settings, runtime)
    out = sys.stdout
    if command == "trade":
        return asyncio.run(
            commands.trade(
                path,
                force=args.force,
                yes=args.yes,
                wait=not args.no_wait,
                as_json=args.json,
                out=out,
                err=sys.stderr,
                stdin_isatty=sys.stdin.isatty(),
                buys=_what_force_buys(settings),
            )
        )
    if command == "status":
        return asyncio.run(_status(settings, path, as_json=args.json))
    if command == "positions":
        return asyncio.run(_positions(settings, path, as_json=args.json))
    if command == "close":
        return asyncio.run(
            commands.close(
                path,
                None if args.all else args.position_id,
                yes=args.yes,
                wait=not args.no_wait,
                as_json=args.json,
                out=out,
                err=sys.stderr,
                stdin_isatty=sys.stdin.isatty(),
            )
        )
    if command == "history":
        return asyncio.run(_history(settings, path, args.days, as_json=args.json))
    if command == "dashboard":
        return asyncio.run(commands.dashboard(path, as_json=args.json, out=out, err=sys.stderr))
    if command == "pause":
        return asyncio.run(commands.pause(path, out, as_json=args.json))
    if command == "resume":
        return asyncio.run(commands.resume(path, out, as_json=args.json))
    if command == "alerts":
        return asyncio.run(commands.alerts_test(path, out, as_json=args.json))
    if command == "resolve":
        return asyncio.run(
            commands.resolve(
                path, args.entry_id, args.outcome, args.quantity, out, price=args.price, as_json=args.json
            )
        )
    raise AssertionError(command)  # argparse only accepts the commands above


def _what_force_buys(settings: Settings) -> str:
    """What one more entry of the configured strategy buys, for the --force question."""
    s = settings.strategy
    shape = {"call": "call calendar", "put": "put calendar", "double": "double calendar (call and put)"}[
        s.shape
    ]
    strike = "at the money" if s.strike_mode == "atm" else f"at {s.target_delta:g} delta"
    spreads = "spread" if s.quantity == 1 else "spreads"
    # SPX options carry a $100 multiplier: a debit of 60.00 is $6,000 per spread.
    per_spread = s.max_debit * 100
    return (
        f"{settings.broker.mode} account, buy {s.quantity} SPX {shape} {spreads} {strike} "
        f"(front ~{s.front_dte} DTE, back ~{s.back_dte} DTE) for a debit of at most {s.max_debit:.2f} "
        f"(${per_spread:,.0f} per spread, ${per_spread * s.quantity:,.0f} in all)"
    )


def _run(
    settings: Settings, runtime: RuntimeEnv, demo_s: float | None, sim_clock: ScaledClock | None = None
) -> int:
    from bot.clock import SystemClock
    from bot.config import unknown_env_vars
    from bot.logs import get_logger
    from bot.service import preflight
    from bot.service.daemon import Daemon
    from bot.service.sdnotify import SystemdNotifier

    if sim_clock is not None and settings.broker.mode not in ("paper", "simulated"):
        raise UserError(
            f"--sim-clock runs the daemon on simulated time, for tests against the simulator only; "
            f"it is refused with broker.mode = {settings.broker.mode} (use paper or simulated)",
            ExitCode.CONFIG,
        )
    problems = preflight.check(settings, settings.socket_path(runtime))
    if problems:
        raise UserError("\n".join(p.message for p in problems), problems[0].code)
    for line in unknown_env_vars(environ()):
        get_logger(__name__).warning(line.removeprefix("warning: "))
    if settings.broker.mode == "live":
        _print_error("bot: LIVE trading enabled (broker.mode = live, allow_live = true)", runtime, priority=5)
    daemon = Daemon(
        settings,
        runtime,
        sim_clock or SystemClock(),
        SystemdNotifier.from_environ(environ()),
        demo_delay_s=demo_s,
    )
    # Everything imported by now (pandas, numpy, pydantic, ib_async: some 110,000 objects the
    # collector tracks) lives as long as the process: frozen, a full collection no longer walks it;
    # and a collection every 50,000 allocations rather than 700, so a burst of connections (each a
    # few dozen objects) is not hundreds of collections. In a storm of 10,000 `bot trade` the two
    # took the daemon's CPU per request from 0.30 to 0.12 ms.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    asyncio.run(daemon.run())
    return int(ExitCode.OK)


def _check_config(settings: Settings, runtime: RuntimeEnv, *, as_json: bool, env: Mapping[str, str]) -> int:
    from bot.config import unknown_env_vars
    from bot.service import preflight

    warnings = unknown_env_vars(env)
    for line in warnings:
        _print_error(line, runtime, priority=4)
    # What `bot run` would refuse, checked as this user (run it as the service's user).
    problems = preflight.check(settings, settings.socket_path(runtime))
    if problems:
        raise UserError("\n".join(p.message for p in problems), ExitCode.CONFIG)
    data = dump_effective(settings)
    data["_derived"] = {
        "journal": str(settings.journal_path),
        "lock": str(settings.lock_path),
        "account_lock": _account_lock(settings),
        "socket": str(_socket_path(settings, runtime)),
        "sms": "on" if settings.alerts.sms_enabled else "off (alerts are journaled and logged only)",
    }
    if as_json:
        from bot.control.commands import write_envelope

        data["_warnings"] = warnings
        return write_envelope(sys.stdout, "check-config", ExitCode.OK, result=data)
    _print_tree(data)
    return int(ExitCode.OK)


def _account_lock(settings: Settings) -> str:
    from bot.service.lock import account_key

    if settings.broker.mode == "simulated":
        return "none (simulated: the embedded gateway is this daemon's own)"
    broker = settings.broker
    account = broker.account.get_secret_value() if broker.account else None
    key = account_key(host=broker.host, port=broker.port, account=account)
    return str(settings.service.lock_dir / key.file_name)


def _print_tree(data: dict[str, Any], prefix: str = "") -> None:
    for key, value in data.items():
        if isinstance(value, dict):
            _print_tree(value, f"{prefix}{key}.")
        else:
            print(f"{prefix}{key} = {json.dumps(value)}")


def _schedule(settings: Settings, start: date | None, days: int, *, as_json: bool) -> int:
    from zoneinfo import ZoneInfo

    from bot.clock import SystemClock
    from bot.scheduler import plan_days
    from bot.trading_days import calendar_for

    sch = settings.schedule
    tz = ZoneInfo(sch.timezone)
    now = SystemClock().now()
    first = start or now.astimezone(tz).date()
    plans = plan_days(
        calendar_for(sch.exchange_calendar),
        first,
        days,
        sch.entry_time,
        sch.entry_window_end,
        tz,
        # From today on, a window that has ended lists no entry; `--from` an earlier day shows
        # the plan as it was.
        now=now if start is None else None,
    )
    if as_json:
        from bot.control.commands import write_envelope

        return write_envelope(
            sys.stdout, "schedule", ExitCode.OK, result={"days": [p.to_json() for p in plans]}
        )
    for plan in plans:
        if plan.entry_at is None:
            print(f"{plan.day:%a %Y-%m-%d}  skipped: {plan.skipped}")
        else:
            local = plan.entry_at.astimezone()
            print(f"{plan.day:%a %Y-%m-%d}  {plan.entry_at:%H:%M %Z}  (local {local:%H:%M %Z})")
    return int(ExitCode.OK)


async def _history(settings: Settings, path: Path, days: int, *, as_json: bool) -> int:
    from bot.control import commands

    try:
        return await commands.history(path, days=days, as_json=as_json, out=sys.stdout)
    except UserError as exc:
        if exc.code is not ExitCode.UNAVAILABLE:
            raise
    # The daemon is down: read the journal directly, read-only (never blocks a daemon starting).
    from bot.history import read_history
    from bot.journal.store import JournalError

    journal = settings.journal_path
    _readable_journal(journal, settings.state_dir)
    try:
        data = await read_history(journal, settings.schedule.timezone, days)
    except JournalError as exc:
        raise UserError(f"the daemon is not running, and {exc}", ExitCode.IOERR) from None
    if as_json:
        return commands.write_envelope(sys.stdout, "history", ExitCode.OK, result=data)
    print("(daemon not running; read from the journal)", file=sys.stderr)
    commands.render_history(data, sys.stdout)
    return int(ExitCode.OK)


async def _status(settings: Settings, path: Path, *, as_json: bool) -> int:
    """`bot status`; with the daemon down (exit 69, said in one line) what its journal says, read
    read-only, when the journal can be read at all (never an error of its own)."""
    from bot.control import commands

    code = await commands.status(path, as_json=as_json, out=sys.stdout)
    if code != int(ExitCode.UNAVAILABLE) or as_json:
        return code
    from bot.journal.store import JournalError
    from bot.positions.report import journal_summary

    try:
        _readable_journal(settings.journal_path, settings.state_dir, command="status")
        seen = await journal_summary(settings.journal_path)
    except (UserError, JournalError):
        return code
    how = "stopped cleanly" if seen["stopped_cleanly"] else "did not stop cleanly: the next start reconciles"
    positions = ", ".join(f"#{i}" for i in seen["open_positions"]) or "none"
    lines = [
        f"  from the journal (read-only): last seen {seen['last_seen'] or '-'}, {how}",
        f"  entries {'paused' if seen['paused'] else 'not paused'}; open positions: {positions}",
    ]
    if seen["unsettled"]:
        lines.append("  not settled: " + ", ".join(f"#{i}" for i in seen["unsettled"]))
    print("\n".join(lines))
    return code


async def _positions(settings: Settings, path: Path, *, as_json: bool) -> int:
    """`bot positions`; with the daemon down, from the journal read-only (no marks: only a running
    daemon streams quotes)."""
    from bot.control import commands

    try:
        return await commands.positions(path, as_json=as_json, out=sys.stdout)
    except UserError as exc:
        if exc.code is not ExitCode.UNAVAILABLE:
            raise
    from bot.journal.store import JournalError
    from bot.positions.report import read_positions
    from bot.trading_days import calendar_for, use_cache_dir

    journal = settings.journal_path
    _readable_journal(journal, settings.state_dir, command="positions")
    use_cache_dir(settings.state_dir / "cache")
    calendar = calendar_for(settings.schedule.exchange_calendar)
    try:
        data = await read_positions(journal, settings.exits, calendar)
    except JournalError as exc:
        raise UserError(f"the daemon is not running, and {exc}", ExitCode.IOERR) from None
    if as_json:
        return commands.write_envelope(sys.stdout, "positions", ExitCode.OK, result=data)
    print("(daemon not running; read from the journal: no marks)", file=sys.stderr)
    commands.render_positions(data, sys.stdout)
    return int(ExitCode.OK)


def _readable_journal(journal: Path, state_dir: Path, *, command: str = "history") -> None:
    """Raise the one line for a journal `bot history` (or `command`) cannot read with the daemon
    down."""
    import os

    try:
        journal.stat()
    except FileNotFoundError:
        raise UserError(
            f"bot daemon is not running and has never run with state_dir {state_dir} (no journal "
            f"at {journal}); start it with `bot run` or `systemctl start bot`",
            ExitCode.UNAVAILABLE,
        ) from None
    except NotADirectoryError:
        raise UserError(
            f"state_dir {state_dir} is not a directory (a file is in the way): move the file, "
            "or set state_dir to a directory",
            ExitCode.IOERR,
        ) from None
    except PermissionError:
        pass  # said below
    if not os.access(journal, os.R_OK):
        raise UserError(
            f"the daemon is not running, and its journal {journal} is readable only by the "
            f"service's user: run `sudo -u bot bot {command}`, or start the daemon",
            ExitCode.NOPERM,
        )


def _backup(args: argparse.Namespace) -> int:
    from bot.journal.backup import backup_journal

    # With --journal nothing else is needed, so the configuration is not even read.
    source: Path = args.journal or load_settings(args.config).journal_path
    done = backup_journal(source, args.file)
    print(f"{done.path}: {done.entries} entries, {done.actions} actions, {done.size_bytes} bytes")
    return int(ExitCode.OK)


def _simulator(args: argparse.Namespace, runtime: RuntimeEnv) -> int:
    from bot.logs import configure_logging
    from bot.sim.standalone import run_simulator

    configure_logging("INFO", stream=sys.stdout, journal_stream=runtime.journal_stream)
    try:
        _run_simulator(args, run_simulator)
    except ValueError as exc:
        raise UserError(f"bad simulator option: {exc}", ExitCode.USAGE) from exc
    except OSError as exc:
        raise UserError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror} (is another gateway on that port?)",
            ExitCode.TEMPFAIL,
        ) from exc
    return int(ExitCode.OK)


def _run_simulator(args: argparse.Namespace, run_simulator: Any) -> None:
    from bot.sim.chain import ChainShape, ContractKey
    from bot.sim.limits import IbLimits
    from bot.sim.rules import ComboIncrements

    for text in args.missing:
        ContractKey.parse(text)  # a bad one is a usage error before anything listens
    limits = IbLimits(
        max_msgs_per_s=args.max_msg_rate,
        max_market_data_lines=args.max_market_data_lines,
        enforce_pacing=args.enforce_pacing,
        enforce_lines=not args.no_line_limit,
    )
    asyncio.run(
        run_simulator(
            host=args.host,
            port=args.port,
            seed=args.seed,
            spot=args.spot,
            vol=args.vol,
            faults=tuple(args.fault),
            bag_execution=args.bag_execution,
            day_orders_expire=args.day_orders_expire,
            time_zone=args.time_zone,
            control_path=args.control,
            chain=ChainShape.parse(args.chain),
            missing_contracts=tuple(args.missing),
            enforce_market_rules=args.enforce_market_rules,
            combo_increments=ComboIncrements(args.combo_increments),
            modify_processing_s=args.modify_processing_s,
            limits=limits,
            snapshot_end_s=args.snapshot_end_s,
            **market_options(args),
        )
    )
