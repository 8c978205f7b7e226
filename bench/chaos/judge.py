"""The judge: the simulator's ledger (the broker's record) against the daemons' journals.

Only the broker's record decides whether exactly-once held; the journals are checked against it,
never trusted about themselves. Three kinds of finding:

* duplicate: two orders with one orderRef, or two orders with any fill for one strategy and day
  (the day part of the orderRef `<strategy>:<YYYYMMDD>:<attempt>`);
* lost fill: the broker filled more of an order than the journal of the daemon that sent it shows,
  or an execution id the broker reported for it is missing from that journal;
* mismatch: the journal shows fills the broker never made, a final status the broker contradicts,
  an order at the broker in no journal, an entry left live, an order still working at the broker.

An order a restored journal cannot know (placed before the restore, final, with no fill) is not a
finding: the restore took its record away and nothing of it remains to reconcile. It is counted
in `forgotten`.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.chaos.hosts import read_rows
from bot.sim import LedgerOrder, SimulatedGateway

__all__ = ["Verdict", "day_of", "judge"]

_TOLERANCE = 1e-9


@dataclass(slots=True)
class Verdict:
    """The judge's findings for one trial."""

    orders: int = 0
    duplicates: list[str] = field(default_factory=list)
    lost_fills: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    without_executions: list[str] = field(default_factory=list)
    """Fills journaled from the broker's positions because it no longer shows their executions."""
    forgotten: list[str] = field(default_factory=list)
    """Orders placed before a journal restore, final with no fill, that the restored journal lacks."""
    hidden: list[str] = field(default_factory=list)
    """Orders placed before a journal restore that a forced new-day restart of the gateway then hid
    from every client (IB forgets only at its nightly reset, on a new trading day): no journal
    could know them, so they are judged for duplicates only."""

    @property
    def ok(self) -> bool:
        """Nothing found."""
        return not (self.duplicates or self.lost_fills or self.mismatches)

    def findings(self) -> list[str]:
        """Every finding, each prefixed with its kind."""
        return (
            [f"duplicate: {d}" for d in self.duplicates]
            + [f"lost fill: {d}" for d in self.lost_fills]
            + [f"mismatch: {d}" for d in self.mismatches]
        )


def day_of(order_ref: str) -> tuple[str, str]:
    """(strategy, YYYYMMDD) of an orderRef `<strategy>:<YYYYMMDD>:<attempt>[@<client id>]`; the
    whole ref for both when it has another shape (so odd refs are still grouped, never merged)."""
    parts = order_ref.split(":")
    if len(parts) == 3 and parts[1].isdigit() and len(parts[1]) == 8:
        return parts[0], parts[1]
    return order_ref, order_ref


@dataclass(frozen=True, slots=True)
class _Entry:
    key: str
    status: str
    filled: float
    fills: dict[str, float]
    broker_filled: float = 0.0


def _journal(path: Path) -> dict[str, _Entry]:
    try:
        rows = read_rows(path, "SELECT id, idempotency_key, status, filled, broker_filled FROM entries")
    except sqlite3.OperationalError:  # a journal of older code, before broker_filled existed
        rows = [(*r, 0.0) for r in read_rows(path, "SELECT id, idempotency_key, status, filled FROM entries")]
    fills: dict[int, dict[str, float]] = defaultdict(dict)
    for entry_id, exec_id, qty in read_rows(path, "SELECT entry_id, exec_id, quantity FROM fills"):
        fills[int(entry_id)][str(exec_id)] = float(qty)
    return {
        str(key): _Entry(
            str(key), str(status), float(filled), fills.get(int(entry_id), {}), float(broker_filled or 0)
        )
        for entry_id, key, status, filled, broker_filled in rows
    }


def _visible(gw: SimulatedGateway, o: LedgerOrder) -> bool:
    """True when a client can still see `o` (its completed record or any of its executions)."""
    if any(c is o for c in gw.visible_completed()):
        return True
    ids = {f.exec_id for f in o.fills}
    return any(x.exec_id in ids for x in gw.visible_executions())


def judge(
    gw: SimulatedGateway,
    journals: Sequence[tuple[str, int, Path]],
    restored: Mapping[int, int] | None = None,
) -> Verdict:
    """Judge one trial: `journals` are (daemon name, its IB client id, its journal file);
    `restored` maps a client id to how many orders the ledger held when that daemon's journal
    was last replaced by an earlier copy (a position, not a time: clocks may be stepped)."""
    restored = restored or {}
    verdict = Verdict()
    orders = list(gw.ledger.orders)
    verdict.orders = len(orders)
    by_ref: dict[str, list[LedgerOrder]] = defaultdict(list)
    filled_by_day: dict[tuple[str, str], list[LedgerOrder]] = defaultdict(list)
    for o in orders:
        by_ref[o.order_ref].append(o)
        if o.filled_qty > _TOLERANCE:
            filled_by_day[day_of(o.order_ref)].append(o)
    for ref, same in by_ref.items():
        if len(same) > 1:
            owners = ", ".join(f"client {o.client_id} #{o.order_id} {o.status}" for o in same)
            verdict.duplicates.append(f"{ref}: {len(same)} orders at the broker ({owners})")
    for (strategy, day), filled in filled_by_day.items():
        if len(filled) > 1:
            refs = ", ".join(f"{o.order_ref} ({o.filled_qty:g} filled)" for o in filled)
            verdict.duplicates.append(f"{strategy} {day}: {len(filled)} orders with fills: {refs}")

    entries = {name: _journal(path) for name, _cid, path in journals}
    owner = {cid: name for name, cid, _path in journals}
    known: set[str] = set()
    for o in orders:
        known |= _identities(gw, o)
    for position, o in enumerate(orders):
        name = owner.get(o.client_id)
        entry = entries.get(name, {}).get(o.order_ref) if name is not None else None
        where = f"{o.order_ref} (client {o.client_id} #{o.order_id})"
        before_restore = position < restored.get(o.client_id, 0)
        if before_restore and o.is_done and not _visible(gw, o):
            verdict.hidden.append(f"{where}: {o.status}, {o.filled_qty:g} filled, hidden after the restore")
            continue
        if entry is None:
            if before_restore and o.is_done and o.filled_qty <= _TOLERANCE:
                verdict.forgotten.append(f"{where}: {o.status}, placed before the journal restore")
                continue
            holders = [n for n, e in entries.items() if o.order_ref in e]
            seen = f"only in journal {', '.join(holders)}" if holders else "in no journal"
            verdict.mismatches.append(f"{where}: at the broker ({o.status}, {o.filled_qty:g} filled), {seen}")
            continue
        _compare(verdict, gw, where, o, entry, name or "?", multi=len(by_ref[o.order_ref]) > 1)
        if o.is_working:
            verdict.mismatches.append(f"{where}: still {o.status} at the broker after the trial")
    sent = {(o.order_ref, o.client_id) for o in orders}
    for name, cid, _path in journals:
        for key, e in entries[name].items():
            if e.status in ("claimed", "working"):
                verdict.mismatches.append(f"{key} ({name}): left {e.status} in the journal")
            if e.status == "never_sent" and (key, cid) in sent:
                verdict.mismatches.append(f"{key} ({name}): never_sent, but the broker has it")
            phantom = sorted(x for x in e.fills if x not in known)
            if phantom:
                verdict.mismatches.append(f"{key} ({name}): fills the broker never made: {phantom}")
    return verdict


def _units(o: LedgerOrder) -> list[str]:
    """The per-combo-unit fill keys `<permId>/<n>` a journal may use instead of execution ids."""
    return [f"{o.perm_id}/{n}" for n in range(1, round(o.filled_qty) + 1)]


def _identities(gw: SimulatedGateway, o: LedgerOrder) -> set[str]:
    """Every name under which a journal may record this order's fills: the broker's execution ids
    (combo level and legs) and the combo-unit keys."""
    return (
        {e.exec_id for e in gw.ledger.executions_for(o.perm_id)}
        | {f.exec_id for f in o.fills}
        | set(_units(o))
    )


def _compare(
    verdict: Verdict, gw: SimulatedGateway, where: str, o: LedgerOrder, e: _Entry, name: str, *, multi: bool
) -> None:
    broker_qty = o.filled_qty
    mine = _identities(gw, o)
    # Under a duplicated key (already a finding) only the fills naming this order's executions
    # count for it; otherwise every fill of the entry does.
    journal_qty = sum(q for x, q in e.fills.items() if x in mine) if multi else sum(e.fills.values())
    # The journal names fills by execution id, or (the newer scheme) by combo unit.
    expected = _units(o) if any("/" in x for x in e.fills) else [f.exec_id for f in o.fills]
    missing = [x for x in expected if x not in e.fills]
    visible = {x.exec_id for x in gw.visible_executions()}
    forgotten = [f.exec_id for f in o.fills if f.exec_id not in visible]
    from_positions = False
    if (
        broker_qty > journal_qty + _TOLERANCE
        and forgotten
        and e.broker_filled >= broker_qty - _TOLERANCE
        and not multi
    ):
        # The broker no longer shows these executions to any client (a restart on a later day
        # forgets them, as at IB): the journal holds the quantity from the broker's other record
        # (positions), which is all that is left. Counted, not hidden.
        verdict.without_executions.append(f"{where} ({name}): {broker_qty:g} filled, executions gone")
        journal_qty = e.broker_filled
        from_positions = True
    if broker_qty > journal_qty + _TOLERANCE:
        verdict.lost_fills.append(
            f"{where} ({name}): broker filled {broker_qty:g}, journal {journal_qty:g}"
            + (f"; not journaled: {missing}" if missing else "")
        )
    elif journal_qty > broker_qty + _TOLERANCE:
        verdict.mismatches.append(f"{where} ({name}): journal filled {journal_qty:g}, broker {broker_qty:g}")
    elif missing and not from_positions:
        verdict.mismatches.append(f"{where} ({name}): fills journaled under other names; missing {missing}")
    if abs(e.filled - journal_qty) > _TOLERANCE and not multi and not from_positions:
        verdict.mismatches.append(
            f"{where} ({name}): entry says filled {e.filled:g}, its fills sum {journal_qty:g}"
        )
    if multi or o.is_working:
        return
    if broker_qty >= o.quantity - _TOLERANCE:
        expected_status: tuple[str, ...] = ("filled",)
    elif broker_qty > _TOLERANCE:
        expected_status = ("partial",)
    else:
        expected_status = ("cancelled", "rejected", "failed")
    if e.status not in expected_status:
        verdict.mismatches.append(
            f"{where} ({name}): journal {e.status}, broker {o.status} {broker_qty:g}/{o.quantity:g}"
        )
