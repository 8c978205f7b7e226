"""The client-side commands behind `bot trade`, `bot status`, `bot history`, `bot pause|resume`,
`bot dashboard`, `bot alerts test`: talk to the daemon over the control socket, render, choose the exit code.

Each command writes to the streams it is given and returns its exit code. Problems reaching the
daemon, and requests it refuses, are raised as `UserError` (one line and the exit code for it;
`bot.cli` prints it), except in `status`, which reports "not running" itself (exit 69).

Times are shown in exchange time (America/New_York); when the terminal's local zone differs,
local time is shown beside it.

With `--json` every command prints JSON lines in one envelope, never the control protocol's own
frames: progress as `{"v": 1, "command": "trade", "event": {...}}`, and last (or alone)
`{"v": 1, "command": C, "ok": true, "exit_code": N, "result": {...}}`, or `"ok": false` with
`"error": "<the one line>"` when the command could not get its answer (`bot.cli` prints those).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any, Final, TextIO
from zoneinfo import ZoneInfo

from bot.control import client
from bot.domain import HELD_AT_BROKER
from bot.errors import ExitCode, UserError

__all__ = [
    "FORCE_PROMPT",
    "OUTPUT_VERSION",
    "alerts_test",
    "close",
    "dashboard",
    "envelope",
    "history",
    "pause",
    "positions",
    "render_history",
    "render_status",
    "resume",
    "status",
    "trade",
    "write_envelope",
]

FORCE_PROMPT: Final = "Force a second entry today, bypassing the same-day rule"
"""How the question asked on the terminal before `bot trade --force` (unless `--yes`) begins;
what the entry would buy follows, then ` [y/N] `."""

OUTPUT_VERSION: Final = 1
"""The version of the `--json` envelope."""

TRADE_LINE_TIMEOUT_S: Final = 600.0
"""Longest silence tolerated while following a trade (the daemon sends an event per step)."""

_NY: Final = ZoneInfo("America/New_York")
_OK_STATUSES: Final = ("filled", "partial")
_CLEAR_LINE: Final = "\r\x1b[K"


# -- formatting helpers ------------------------------------------------------------------------


def _show(value: object) -> str:
    """Any JSON value as a short human string; missing/None as "-"."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_show(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(_show(v) for v in value) or "-"
    return str(value)


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def _when(value: object, *, with_date: bool = False) -> str:
    """An ISO timestamp as exchange time, with local time beside it when the zones differ."""
    moment = _parse_time(value)
    if moment is None:
        return _show(value)
    ny = moment.astimezone(_NY)
    local = moment.astimezone()  # the terminal's zone
    text = ny.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")
    if local.utcoffset() == ny.utcoffset():
        return text
    local_fmt = "%Y-%m-%d %H:%M:%S" if with_date and local.date() != ny.date() else "%H:%M:%S"
    return f"{text} ET ({local.strftime(local_fmt)} local)"


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _count(value: object) -> str:
    number = _num(value)
    return "-" if number is None else f"{number:g}"


def _progress(trade: Mapping[str, Any]) -> str:
    """E.g. "filled 4/4 at 12.75", "working at 12.80", or just the status."""
    filled, avg, limit = (
        _num(trade.get("filled")),
        _num(trade.get("avg_price")),
        _num(trade.get("last_limit")),
    )
    status = _show(trade.get("status"))
    if filled and avg is not None:
        return f"filled {_count(filled)}/{_count(trade.get('quantity'))} at {avg:.2f}"
    if limit is not None:
        return f"{status} at {limit:.2f}"
    return status


def _ref(trade: Mapping[str, Any]) -> str:
    return f"#{_show(trade.get('id'))}"


def _trade_line(trade: Mapping[str, Any]) -> str:
    """One entry as a line: "#12 filled 4/4 at 12.75 at 09:46:30 (manual)"."""
    at = trade.get("ended_at") or trade.get("started_at")
    source = trade.get("source")
    tail = f" ({source})" if source else ""
    return f"{_ref(trade)} {_progress(trade)} at {_when(at)}{tail}"


def _detail(trade: Mapping[str, Any]) -> str | None:
    parts = [
        str(p)
        for p in (
            trade.get("strategy"),
            trade.get("trading_day"),
            trade.get("legs"),
            trade.get("idempotency_key"),
        )
        if p
    ]
    return "  " + ", ".join(parts) if parts else None


def _blocked_line(reason: object, trade: Mapping[str, Any] | None) -> str:
    if reason == "already_traded_today":
        if trade is None:
            return "already traded today"
        at = trade.get("ended_at") or trade.get("started_at")
        return f"already traded today: {_ref(trade)}, {_progress(trade)} at {_when(at)}"
    if reason == "in_progress":
        if trade is None:
            return "in progress: another entry is starting"
        elapsed = _num(trade.get("elapsed_s"))
        since = f" since {elapsed:.1f} s" if elapsed is not None else ""
        return f"in progress{since}: {_ref(trade)}, {_progress(trade)}"
    head = {
        "reconciling": "reconciling with the broker; entries wait until it is done",
        "paused": "entries are paused (`bot resume` allows them again)",
    }.get(str(reason), f"blocked: {_show(reason)}")
    if trade is None:
        return head
    return f"{head}: {_ref(trade)}, {_progress(trade)}"


def _final_line(trade: Mapping[str, Any], reason: object) -> str:
    status = trade.get("status")
    if status == "filled":
        return f"{_ref(trade)} {_progress(trade)} at {_when(trade.get('ended_at'))}"
    if status == "partial":
        return f"{_ref(trade)} partial: {_progress(trade)}, rest cancelled"
    why = f": {reason}" if reason else ""
    return f"{_ref(trade)} {_show(status)}, no fill{why}"


def _event_text(event: Mapping[str, Any]) -> str | None:
    kind = event.get("event")
    raw = event.get("trade")
    trade: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    ref = _ref(trade)
    limit = _num(event.get("limit"))
    if kind in ("started", "claimed"):
        forced = " (forced)" if event.get("forced") else ""
        return f"{ref} claimed{forced}"
    if kind == "legs":
        return f"{ref} legs chosen: {_show(event.get('legs') or trade.get('legs'))}"
    if kind == "placed":
        return f"{ref} order placed at {limit:.2f}" if limit is not None else f"{ref} order placed"
    if kind == "stepped":
        return f"{ref} stepped to {limit:.2f}" if limit is not None else f"{ref} stepped"
    if kind == "fill":
        return f"{ref} {_progress(trade)}"
    if kind == "final":
        return None  # the reply that follows carries the final line
    return f"{ref} {_show(kind)}"


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty()) if callable(isatty) else False


def envelope(
    command: str, exit_code: int, *, result: object = None, error: str | None = None
) -> dict[str, Any]:
    """The one JSON shape every `--json` command ends with (see the module docstring)."""
    data: dict[str, Any] = {"v": OUTPUT_VERSION, "command": command, "ok": error is None}
    data["exit_code"] = int(exit_code)
    if error is None:
        data["result"] = result
    else:
        data["error"] = error
    return data


def write_envelope(
    out: TextIO, command: str, exit_code: int, *, result: object = None, error: str | None = None
) -> int:
    """Write `envelope(...)` as one line; returns `exit_code`."""
    out.write(json.dumps(envelope(command, exit_code, result=result, error=error)) + "\n")
    out.flush()
    return int(exit_code)


# -- bot trade ---------------------------------------------------------------------------------


class _Progress:
    """Renders progress events: a live rewritten line on a terminal, one line each otherwise."""

    def __init__(self, out: TextIO, *, as_json: bool) -> None:
        self._out = out
        self._as_json = as_json
        self._live = _is_tty(out) and not as_json
        self._dirty = False
        self._last: str | None = None
        self.entry_id: object = None
        """The entry the events are about, once one named it."""

    def event(self, message: client.Reply) -> None:
        raw = message.get("event")
        if isinstance(raw, Mapping) and isinstance(raw.get("trade"), Mapping):
            self.entry_id = raw["trade"].get("id", self.entry_id)
        if self._as_json:
            self._out.write(json.dumps({"v": OUTPUT_VERSION, "command": "trade", "event": raw}) + "\n")
            self._out.flush()
            return
        text = _event_text(raw) if isinstance(raw, Mapping) else None
        if text is None or text == self._last:
            return
        self._last = text
        if self._live:
            self._out.write(f"{_CLEAR_LINE}{text}")
            self._dirty = True
        else:
            self._out.write(text + "\n")
        self._out.flush()

    def end_live_line(self) -> None:
        if self._dirty:
            self._out.write(_CLEAR_LINE)
            self._dirty = False
            self._out.flush()


def _confirm_force(*, yes: bool, stdin_isatty: bool, stdin: TextIO, err: TextIO, buys: str) -> None:
    """Return when --force is confirmed; raise `UserError` (exit 2) when it is not."""
    if yes:
        return
    if not stdin_isatty:
        raise UserError(
            "refusing --force without a terminal to confirm it; add --yes to force non-interactively",
            ExitCode.USAGE,
        )
    err.write(f"{FORCE_PROMPT}: {buys}? [y/N] ")
    err.flush()
    # A blocking read is right here: nothing else runs on the loop before the request is sent,
    # and Ctrl-C interrupts it directly (a thread would keep the process alive until Enter).
    answer = stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise UserError("not confirmed; nothing was sent", ExitCode.USAGE)


def _still_running_line(entry_id: object) -> str:
    if entry_id is None:
        return (
            "stopped waiting; the request was sent, and an entry it started continues in the "
            "daemon: `bot status` shows it"
        )
    return (
        f"stopped following #{entry_id}; the entry continues in the daemon "
        "(`bot status` follows it, `bot history` shows its end)"
    )


async def trade(
    path: Path,
    *,
    force: bool,
    yes: bool,
    wait: bool,
    as_json: bool,
    out: TextIO,
    err: TextIO,
    stdin_isatty: bool,
    stdin: TextIO | None = None,
    buys: str = "one more entry of the configured strategy",
) -> int:
    """`bot trade`: ask for an entry now and, with `wait`, follow it to its end.

    Exit 0 when it filled (fully or partly) or, without `wait`, started; 3 when blocked (the
    existing trade is printed); 4 when it ended without a fill or was skipped; 2 when `--force`
    was not confirmed (raised as `UserError`). `buys` says what a forced entry would buy, in the
    confirmation question. Interrupted (Ctrl-C), it says on `err` that the entry continues in
    the daemon: stopping the client never stops an entry.
    """
    if force:
        _confirm_force(yes=yes, stdin_isatty=stdin_isatty, stdin=stdin or sys.stdin, err=err, buys=buys)
    progress = _Progress(out, as_json=as_json)
    try:
        reply = await client.request_streaming(
            path,
            "trade",
            {"force": force, "wait": wait},
            progress.event,
            timeout_s=client.DEFAULT_TIMEOUT_S,
            line_timeout_s=TRADE_LINE_TIMEOUT_S,
        )
    except asyncio.CancelledError:
        progress.end_live_line()
        err.write(_still_running_line(progress.entry_id) + "\n")
        err.flush()
        raise
    finally:
        progress.end_live_line()
    result = client.check(reply)
    code = _trade_exit(result, wait=wait)
    if as_json:
        return write_envelope(out, "trade", code, result=result)
    raw = result.get("trade")
    trade_view: Mapping[str, Any] | None = raw if isinstance(raw, Mapping) else None
    outcome = result.get("outcome")
    if outcome == "blocked":
        out.write(_blocked_line(result.get("reason"), trade_view) + "\n")
        detail = _detail(trade_view) if trade_view else None
        if detail:
            out.write(detail + "\n")
    elif outcome == "skipped":
        out.write(f"skipped: {_show(result.get('reason'))}\n")
    elif trade_view is not None and not wait:
        forced = " (forced)" if result.get("forced") else ""
        out.write(f"started {_ref(trade_view)}{forced}; follow it with `bot status`\n")
    elif trade_view is not None:
        out.write(_final_line(trade_view, result.get("reason")) + "\n")
    return code


def _trade_exit(result: Mapping[str, Any], *, wait: bool) -> int:
    raw = result.get("trade")
    trade_view: Mapping[str, Any] | None = raw if isinstance(raw, Mapping) else None
    outcome = result.get("outcome")
    if outcome == "blocked":
        return int(ExitCode.BLOCKED)
    if outcome == "skipped":
        return int(ExitCode.FAILED)
    if outcome != "started" or trade_view is None:
        raise UserError(f"the daemon sent an unknown trade outcome {outcome!r}", ExitCode.SOFTWARE)
    if not wait:
        return int(ExitCode.OK)
    if trade_view.get("status") == "never_sent" and str(result.get("reason") or "").startswith(
        HELD_AT_BROKER
    ):
        return int(ExitCode.BLOCKED)  # the day's order is at the broker already (another copy)
    return int(ExitCode.OK) if trade_view.get("status") in _OK_STATUSES else int(ExitCode.FAILED)


# -- bot status --------------------------------------------------------------------------------

_STATUS_KEYS: Final = (
    "running",
    "healthy",
    "mode",
    "link",
    "link_error",
    "reconciliation",
    "paused",
    "in_progress",
    "next_entry",
    "today",
    "alerts",
    "last_error",
    "open_positions",
)


def _alerts_text(alerts: object) -> str:
    if not isinstance(alerts, Mapping):
        return _show(alerts)
    sms = alerts.get("sms")
    sms_text = ("on" if sms else "off") if isinstance(sms, bool) or sms is None else _show(sms)
    text = (
        f"sms {sms_text if 'sms' in alerts else '-'}, {_count(alerts.get('pending'))} pending, "
        f"{_count(alerts.get('failed'))} failed, last error {_show(alerts.get('last_error'))}"
    )
    extra = {k: v for k, v in alerts.items() if k not in ("sms", "pending", "failed", "last_error")}
    return f"{text}, {_show(extra)}" if extra else text


def _next_entry_text(next_entry: object) -> str:
    if not isinstance(next_entry, Mapping):
        return _show(next_entry)
    exchange = next_entry.get("exchange")
    if _parse_time(exchange) is not None:
        return _when(exchange, with_date=True)
    return _show(exchange if exchange is not None else next_entry.get("local"))


def render_status(data: Mapping[str, Any], out: TextIO) -> None:
    """`bot status` for people. Every key may be missing (shown as "-"); unknown keys are listed."""
    healthy = data.get("healthy")
    health = "healthy" if healthy is True else "DEGRADED" if healthy is False else "health unknown"
    if data.get("paused") is True:
        # Paused is deliberate (`bot pause`), not a fault: said first, whatever the health.
        health += ", entries paused"
    running = "running" if data.get("running", True) else "not running"
    out.write(f"bot daemon: {running}, {health}\n")
    rows: list[tuple[str, str]] = []
    link = _show(data.get("link"))
    if data.get("link_error"):
        link += f" ({_show(data.get('link_error'))})"
    rows.append(("mode", _show(data.get("mode"))))
    rows.append(("link", link))
    rows.append(("reconciliation", _show(data.get("reconciliation"))))
    rows.append(("paused", _show(data.get("paused"))))
    current = data.get("in_progress")
    if isinstance(current, Mapping):
        elapsed = _num(current.get("elapsed_s"))
        since = f" (for {elapsed:.1f} s)" if elapsed is not None else ""
        rows.append(("in progress", f"{_ref(current)} {_progress(current)}{since}"))
    else:
        rows.append(("in progress", _show(current)))
    rows.append(("next entry", _next_entry_text(data.get("next_entry"))))
    today = data.get("today")
    if isinstance(today, list):
        lines = [_trade_line(t) if isinstance(t, Mapping) else _show(t) for t in today] or ["none"]
    else:
        lines = [_show(today)]
    rows.append(("today", lines[0]))
    rows.extend(("", line) for line in lines[1:])
    held = data.get("open_positions")
    if isinstance(held, list):
        lines = [_position_line(p) if isinstance(p, Mapping) else _show(p) for p in held] or ["none"]
        rows.append(("open positions", lines[0]))
        rows.extend(("", line) for line in lines[1:])
    rows.append(("alerts", _alerts_text(data.get("alerts"))))
    rows.append(("last error", _show(data.get("last_error"))))
    rows.extend((key.replace("_", " "), _show(v)) for key, v in data.items() if key not in _STATUS_KEYS)
    for label, value in rows:
        out.write(f"  {label + ':' if label else '':<16}{value}\n")


async def status(path: Path, *, as_json: bool, out: TextIO) -> int:
    """`bot status`: exit 0 healthy (paused included: that is deliberate), 1 degraded, 69 not
    running (reported on `out`, not raised)."""
    try:
        result = client.check(await client.request(path, "status"))
    except UserError as exc:
        if exc.code is not ExitCode.UNAVAILABLE:
            raise
        if as_json:
            return write_envelope(out, "status", ExitCode.UNAVAILABLE, error=exc.message)
        out.write(exc.message + "\n")
        return int(ExitCode.UNAVAILABLE)
    code = int(ExitCode.OK) if result.get("healthy") is True else int(ExitCode.DEGRADED)
    if as_json:
        return write_envelope(out, "status", code, result=result)
    render_status(result, out)
    return code


# -- bot history -------------------------------------------------------------------------------


def _weekday(day: object) -> str:
    try:
        return f"{day} ({date.fromisoformat(str(day)):%a})"
    except ValueError:
        return _show(day)


def render_history(data: Mapping[str, Any], out: TextIO) -> None:
    """`bot history` for people, from `{"days": [{"day", "entries": [...], "blocked": {kind: n}}]}`.

    Shared by the socket path and the CLI's read-only journal fallback.
    """
    days = data.get("days")
    if not isinstance(days, list) or not days:
        out.write("no entries or blocked attempts in that period\n")
        return
    for item in days:
        if not isinstance(item, Mapping):
            out.write(_show(item) + "\n")
            continue
        out.write(_weekday(item.get("day")) + "\n")
        entries = item.get("entries")
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, Mapping):
                out.write(f"  {_trade_line(entry)}\n")
                detail = _detail(entry)
                if detail:
                    out.write(f"  {detail}\n")
            else:
                out.write(f"  {_show(entry)}\n")
        blocked = item.get("blocked")
        if isinstance(blocked, Mapping) and blocked:
            counts = ", ".join(
                f"{_show(n)} {str(kind).lower().replace('_', ' ')}" for kind, n in blocked.items()
            )
            out.write(f"  blocked: {counts}\n")
        elif not entries:
            out.write("  no entries\n")
    closed = data.get("closed_positions")
    if isinstance(closed, list) and closed:
        out.write("positions closed in the period\n")
        for position in closed:
            out.write(f"  {_position_line(position) if isinstance(position, Mapping) else _show(position)}\n")
        realized = _num(data.get("realized"))
        if realized is not None:
            out.write(f"realised P&L: {realized:+.2f} USD\n")


async def history(path: Path, *, days: int, as_json: bool, out: TextIO) -> int:
    """`bot history` over the socket. Raises `UserError` (69) when the daemon is down."""
    result = client.check(await client.request(path, "history", {"days": days}))
    if as_json:
        return write_envelope(out, "history", ExitCode.OK, result=result)
    render_history(result, out)
    return int(ExitCode.OK)


# -- bot dashboard -----------------------------------------------------------------------------


async def dashboard(path: Path, *, as_json: bool, out: TextIO, err: TextIO) -> int:
    """`bot dashboard`: the page's URL with its access token, on `out` alone (so
    `xdg-open "$(bot dashboard)"` works); on a terminal, how to open it from another machine on
    `err`. Raises `UserError` (69) when the daemon is down or its dashboard is not serving."""
    result = client.check(await client.request(path, "dashboard"))
    url = result.get("url_with_token")
    if result.get("state") != "serving" or not isinstance(url, str):
        why = result.get("reason") or result.get("state")
        raise UserError(f"the dashboard is not serving: {_show(why)}", ExitCode.UNAVAILABLE)
    if as_json:
        return write_envelope(out, "dashboard", ExitCode.OK, result=result)
    out.write(url + "\n")
    out.flush()
    if _is_tty(out):
        port = url.split("://", 1)[-1].split("/", 1)[0].rpartition(":")[2]
        err.write(
            "open it in a browser on this machine; from another one, tunnel first: "
            f"ssh -L {port}:127.0.0.1:{port} THIS-HOST\n"
        )
    return int(ExitCode.OK)


# -- bot pause / resume / alerts test ----------------------------------------------------------


async def pause(path: Path, out: TextIO, *, as_json: bool = False) -> int:
    """`bot pause`: no scheduled or manual entries until `bot resume` (persisted by the daemon)."""
    result = client.check(await client.request(path, "pause"))
    if as_json:
        return write_envelope(out, "pause", ExitCode.OK, result=result)
    paused = result.get("paused")
    out.write(
        "entries paused; `bot resume` allows them again\n" if paused is not False else f"{_show(result)}\n"
    )
    return int(ExitCode.OK)


async def resume(path: Path, out: TextIO, *, as_json: bool = False) -> int:
    """`bot resume`: allow entries again."""
    result = client.check(await client.request(path, "resume"))
    if as_json:
        return write_envelope(out, "resume", ExitCode.OK, result=result)
    paused = result.get("paused")
    out.write("entries resumed\n" if paused is not True else f"{_show(result)}\n")
    return int(ExitCode.OK)


async def resolve(
    path: Path,
    entry_id: int,
    outcome: str,
    quantity: int | None,
    out: TextIO,
    *,
    price: float | None = None,
    as_json: bool = False,
) -> int:
    """`bot resolve ID filled|unfilled [--price POINTS]`: settle an intent whose outcome is unknown
    (the daemon journals it with who said so); entries are allowed again once nothing is unknown."""
    filled = 0 if outcome == "unfilled" else quantity
    args: dict[str, object] = {"entry_id": entry_id, "filled": filled}
    if price is not None:
        args["price"] = price
    result = client.check(await client.request(path, "resolve", args))
    if as_json:
        return write_envelope(out, "resolve", ExitCode.OK, result=result)
    out.write(f"#{_show(result.get('resolved'))} settled as {_show(result.get('status'))}\n")
    return 0


async def alerts_test(path: Path, out: TextIO, *, as_json: bool = False) -> int:
    """`bot alerts test`: send one test SMS through the daemon; exit 4 if it reports a failure
    (69 when the daemon is down, raised)."""
    result = client.check(await client.request(path, "alerts_test", timeout_s=30.0))
    failed = result.get("ok") is False or bool(result.get("error"))
    code = int(ExitCode.FAILED) if failed else int(ExitCode.OK)
    if as_json:
        return write_envelope(out, "alerts test", code, result=result)
    out.write(f"test alert: {_show(result)}\n")
    return code


# -- bot positions / bot close -------------------------------------------------------------------


def _position_line(p: Mapping[str, Any]) -> str:
    debit = _num(p.get("debit"))
    realized = _num(p.get("realized"))
    parts = [
        f"#{_show(p.get('id'))} {_show(p.get('legs_text') or p.get('entry_key'))}",
        f"qty {_count(p.get('quantity'))}",
        f"debit {debit:.2f}" if debit is not None else "debit -",
        _show(p.get("state")),
    ]
    if p.get("frozen"):
        parts.append(f"FROZEN ({_show(p.get('frozen'))})")
    mark, at = p.get("mark"), p.get("pnl")
    if isinstance(mark, Mapping):
        parts.append(f"mark {_show(mark.get('text'))}")
    if isinstance(at, Mapping) and _num(at.get("usd")) is not None:
        usd, pct = _num(at.get("usd")) or 0.0, _num(at.get("pct")) or 0.0
        parts.append(f"P&L {usd:+.2f} USD ({pct:+.1f}%)")
    if p.get("live_exit") is not None:
        parts.append(f"exit #{_show(p.get('live_exit'))} working")
    if p.get("next_exit"):
        parts.append(f"next: {_show(p.get('next_exit'))}")
    if realized is not None:
        parts.append(f"realised {realized:+.2f} USD")
    return ", ".join(parts)


async def positions(path: Path, *, as_json: bool, out: TextIO) -> int:
    """`bot positions`: the open positions (id, legs, quantity, debit, next exit rule), then the
    closed ones with their realised P&L. Raises `UserError` (69) when the daemon is down."""
    result = client.check(await client.request(path, "positions"))
    if as_json:
        return write_envelope(out, "positions", ExitCode.OK, result=result)
    render_positions(result, out)
    return int(ExitCode.OK)


def render_positions(result: Mapping[str, Any], out: TextIO) -> None:
    """`bot positions` for people; shared by the socket path and the CLI's read-only journal
    fallback."""
    listed = [p for p in result.get("positions") or [] if isinstance(p, Mapping)]
    open_now = [p for p in listed if p.get("state") == "open"]
    out.write(f"open positions: {len(open_now)}\n")
    for p in open_now:
        out.write(f"  {_position_line(p)}\n")
    closed = [p for p in listed if p.get("state") != "open"]
    if closed:
        out.write("closed:\n")
        for p in closed:
            out.write(f"  {_position_line(p)}\n")
    realized = _num(result.get("realized"))
    out.write(f"realised P&L: {realized:+.2f} USD\n" if realized is not None else "realised P&L: -\n")


def _confirm_close(what: str, *, yes: bool, stdin_isatty: bool, stdin: TextIO, err: TextIO) -> None:
    """Return when the close is confirmed; raise `UserError` (exit 2) when it is not."""
    if yes:
        return
    if not stdin_isatty:
        raise UserError(
            "refusing to close without a terminal to confirm it; add --yes to close non-interactively",
            ExitCode.USAGE,
        )
    err.write(f"close {what} at the market's prices now? [y/N] ")
    err.flush()
    answer = stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise UserError("not confirmed; nothing was sent", ExitCode.USAGE)


async def close(
    path: Path,
    position_id: int | None,
    *,
    yes: bool,
    wait: bool,
    as_json: bool,
    out: TextIO,
    err: TextIO,
    stdin_isatty: bool,
    stdin: TextIO | None = None,
) -> int:
    """`bot close ID` / `bot close --all`: ask for the exit now and follow it to its end.

    Exit 0 when every exit asked for filled (or, without `wait`, started); 3 when one was refused
    (the reason and the exit in the way are printed); 4 when one ended without closing."""
    what = f"position #{position_id}" if position_id is not None else "every open position"
    _confirm_close(what, yes=yes, stdin_isatty=stdin_isatty, stdin=stdin or sys.stdin, err=err)
    args: dict[str, Any] = {"wait": wait}
    args.update({"position_id": position_id} if position_id is not None else {"all": True})
    progress = _Progress(out, as_json=as_json)
    try:
        reply = await client.request_streaming(
            path,
            "close",
            args,
            progress.event,
            timeout_s=client.DEFAULT_TIMEOUT_S,
            line_timeout_s=TRADE_LINE_TIMEOUT_S,
        )
    except asyncio.CancelledError:
        progress.end_live_line()
        err.write("stopped following; an exit that started continues in the daemon (`bot positions`)\n")
        err.flush()
        raise
    finally:
        progress.end_live_line()
    result = client.check(reply)
    results = [r for r in result.get("results") or [] if isinstance(r, Mapping)]
    codes = [_trade_exit(r, wait=wait) for r in results] or [int(ExitCode.OK)]
    code = max(codes, key=lambda c: (c == int(ExitCode.BLOCKED), c != int(ExitCode.OK)))
    if as_json:
        return write_envelope(out, "close", code, result=result)
    if not results:
        out.write("no open positions\n")
    for r in results:
        raw = r.get("trade")
        view: Mapping[str, Any] | None = raw if isinstance(raw, Mapping) else None
        head = f"position #{_show(r.get('position_id'))}: "
        if r.get("outcome") == "blocked":
            line = _blocked_line(r.get("reason"), view) if view else f"refused: {_show(r.get('reason'))}"
            out.write(head + line + "\n")
        elif view is not None and not wait:
            out.write(f"{head}exit {_ref(view)} started; follow it with `bot positions`\n")
        elif view is not None:
            out.write(head + _final_line(view, r.get("reason")) + "\n")
    return code
