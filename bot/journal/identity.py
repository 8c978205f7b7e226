"""Which broker a journal belongs to: its mode (simulated, paper, live) and IB account, recorded
when the journal is first used and checked on every start.

A journal's entries are the same-day rule's memory: a demo's simulated fills in the journal a
paper run uses would answer "already traded today" for a fill IB never saw, and hold
open-calendar slots for weeks. So a journal never mixes modes or accounts: a daemon configured
for another one is refused (exit 78, one line naming the fix), and simulated mode has a journal
file of its own by default (`Settings.journal_path`).

The account is stored as a salted, deliberately slow hash (an IB account id is a secret, and
short enough to guess from a fast one). A journal first used without `broker.account` records
none, and takes the account the first time one is configured. Journals from before this record
are bound to the mode every earlier start was journaled with (`DAEMON_STARTED`); one started in
several modes is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from bot.domain import ActionKind
from bot.errors import ExitCode, UserError
from bot.journal.store import Journal

__all__ = ["JournalIdentity", "bind_journal"]

MODE_KEY: Final = "journal.broker_mode"
ACCOUNT_KEY: Final = "journal.broker_account"
_SALT: Final = b"bot journal account v1"
_ROUNDS: Final = 100_000


def _fingerprint(account: str) -> str:
    return hashlib.pbkdf2_hmac("sha256", account.encode(), _SALT, _ROUNDS).hex()[:32]


@dataclass(frozen=True, slots=True)
class JournalIdentity:
    """The broker a daemon is configured for."""

    mode: str
    account: str | None


async def _earlier_modes(journal: Journal) -> set[str]:
    rows = await journal.actions(kinds=(ActionKind.DAEMON_STARTED,))
    return {str(r.detail["mode"]) for r in rows if isinstance(r.detail.get("mode"), str)}


async def bind_journal(journal: Journal, identity: JournalIdentity) -> None:
    """Record `identity` in a journal that has none; raise `UserError` (78) if it has another.

    Raises `JournalError` when the journal cannot be read or written.
    """
    where = f"the journal {journal.path}"
    recorded_mode = await journal.get_state(MODE_KEY)
    if recorded_mode is None:
        earlier = await _earlier_modes(journal)
        if len(earlier) > 1:
            raise UserError(
                f"{where} holds entries of several broker modes ({', '.join(sorted(earlier))}), "
                "so its same-day rule would count fills the broker never saw: move it aside "
                "(`bot backup` it first) and start with a new journal",
                ExitCode.CONFIG,
            )
        recorded_mode = earlier.pop() if earlier else identity.mode
    if recorded_mode != identity.mode:
        raise UserError(
            f"{where} belongs to broker.mode {recorded_mode!r}, and this configuration is "
            f"{identity.mode!r}: a journal never mixes modes; give this mode its own state_dir, "
            f"or set broker.mode = {recorded_mode!r} again",
            ExitCode.CONFIG,
        )
    recorded_account = await journal.get_state(ACCOUNT_KEY)
    fingerprint = _fingerprint(identity.account) if identity.account else None
    if recorded_account and fingerprint and recorded_account != fingerprint:
        raise UserError(
            f"{where} belongs to another IB account than broker.account: a journal never mixes "
            "accounts; give this account its own state_dir, or configure the journal's account",
            ExitCode.CONFIG,
        )
    if await journal.get_state(MODE_KEY) is None:
        await journal.set_state(MODE_KEY, identity.mode, ActionKind.JOURNAL_BOUND, {"mode": identity.mode})
    if fingerprint and not recorded_account:
        await journal.set_state(ACCOUNT_KEY, fingerprint, ActionKind.JOURNAL_BOUND, {"account": "set"})
