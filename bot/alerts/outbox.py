"""The alert sender: drains the journal's alert outbox to SMS, with retries and without storms.

Invariant 6, "alerts are never lost and never block", is kept this way:

* **Never lost.** Alerts are rows in the journal, committed with the event that caused them. The
  sender reads them from there, so alerts queued before a crash or while the provider was down are
  sent when the daemon (or the provider) is back. Each send and each outcome is journaled
  (`alert_attempts`, and the row's final state); per-recipient progress is stored before moving on,
  so a retry never re-sends to a recipient that already got the message. Delivery is therefore at
  least once: only a crash between Twilio's answer and our commit can repeat an SMS.
* **Never blocking.** The sender is a task of its own. Producers commit the row and at most call
  `wake()`, which is synchronous and never waits; no journal transaction is held across a send,
  and every send is bounded by `send_timeout_s`.
* **No storms.** Per alert kind, the first alert goes out at once. Others of that kind arriving
  while it is being sent, or within `window_s` after it went out (or was refused), are folded into
  one follow-up alert sent when the window ends: "+37 more blocked attempts since 09:46:31; latest:
  ...". The follow-up is itself an alert row, and each folded row points at it (`folded_into`). The
  window is derived from the journal (the last sent or refused alert per kind), so it survives a
  restart. `test` alerts are never coalesced.

Transient failures are retried with exponential backoff between `retry_min_s` and `retry_max_s`
plus jitter; permanent ones (invalid number, authentication) end the alert as `failed` after one
attempt, visible in `status()`. Without a notifier (SMS off), alerts are logged and marked `logged`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from bot.alerts import texts
from bot.alerts.notifier import Notifier, PermanentSendError, TransientSendError, mask_number
from bot.clock import Clock
from bot.config import AlertSettings
from bot.domain import AlertKind
from bot.journal import outbox
from bot.journal.outbox import AlertState, AttemptOutcome, PendingAlert
from bot.journal.store import Journal, JournalError
from bot.logs import get_logger

__all__ = ["FOLLOW_UP_MAX_CHARS", "AlertSender", "follow_up_text"]

_log = get_logger(__name__)
_T = TypeVar("_T")

#: Two GSM-7 SMS segments (2 x 153 characters): the follow-up quotes the latest alert only if it fits.
FOLLOW_UP_MAX_CHARS = 306

_BLOCKED_KINDS = frozenset({AlertKind.CONCURRENT_BLOCKED.value, AlertKind.DUPLICATE_PREVENTED.value})


def follow_up_text(kind: str, count: int, since: datetime, latest: str) -> str:
    """The follow-up SMS for `count` folded alerts of `kind`, the first at `since`.

    E.g. "bot: +37 more blocked attempts since 09:46:31; latest: blocked concurrent manual entry
    ...", without the latest alert's text when the whole would exceed `FOLLOW_UP_MAX_CHARS`.
    """
    noun = "blocked attempts" if kind in _BLOCKED_KINDS else f"{kind} alerts"
    head = f"bot: +{count} more {noun} since {texts.hhmmss(since)}"
    full = f"{head}; latest: {latest.removeprefix('bot: ')}"
    return full if len(full) <= FOLLOW_UP_MAX_CHARS else head


class AlertSender:
    """Delivers the journal's pending alerts through a `Notifier` (or the log, when it is None).

    Run `run()` as its own task; it owns the notifier and closes it when it ends. `recipients`
    are E.164 numbers; an alert is `sent` once every one of them has a message id.
    """

    def __init__(
        self,
        journal: Journal,
        notifier: Notifier | None,
        recipients: Sequence[str],
        clock: Clock,
        *,
        window_s: float = 60.0,
        retry_min_s: float = 2.0,
        retry_max_s: float = 300.0,
        send_timeout_s: float = 10.0,
        poll_s: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        if notifier is not None and not recipients:
            raise ValueError("an SMS notifier needs at least one recipient")
        if not 0 < retry_min_s <= retry_max_s:
            raise ValueError("need 0 < retry_min_s <= retry_max_s")
        self._journal = journal
        self._notifier = notifier
        self._recipients = tuple(dict.fromkeys(recipients))
        self._clock = clock
        self._window = timedelta(seconds=window_s)
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._send_timeout_s = send_timeout_s
        self._poll_s = poll_s
        # Jitter spreads retries; it is not a secret, so the stdlib generator is right.
        self._rng = rng or random.Random()  # noqa: S311 -- jitter, not cryptography
        self._wake = asyncio.Event()
        self._passes_started = 0
        self._passes_done = 0
        self._last_pass_acted = False
        self._pass_done = asyncio.Condition()
        self._last_final: dict[str, datetime] | None = None
        self._waiters: dict[int, list[asyncio.Future[dict[str, Any]]]] = {}
        self._bookkeeping: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_settings(
        cls, journal: Journal, settings: AlertSettings, clock: Clock, *, rng: random.Random | None = None
    ) -> AlertSender:
        """The sender `settings` describe: Twilio when SMS is enabled, the log otherwise."""
        notifier: Notifier | None = None
        if settings.sms_enabled:
            # Imported here so that importing this module does not load the Twilio SDK.
            from bot.alerts.twilio_sms import TwilioNotifier  # noqa: PLC0415

            notifier = TwilioNotifier.from_settings(settings)
        return cls(
            journal,
            notifier,
            settings.to,
            clock,
            window_s=settings.coalesce_window_s,
            retry_min_s=settings.retry_min_s,
            retry_max_s=settings.retry_max_s,
            send_timeout_s=settings.send_timeout_s,
            poll_s=settings.poll_s,
            rng=rng,
        )

    @property
    def sms_enabled(self) -> bool:
        """False when alerts only go to the log."""
        return self._notifier is not None

    # -- the producer's side -------------------------------------------------------------------

    def wake(self) -> None:
        """Nudge the sender to look at the outbox now (after committing an alert). Never blocks."""
        self._wake.set()

    async def settle(self) -> None:
        """Wake the sender; return once it has made a pass that found nothing more to do now.

        For tests and diagnostics: it waits on the running `run()` task, so bound it with
        `asyncio.timeout`. A pass includes its sends, each bounded by `send_timeout_s`.
        """
        target = self._passes_started + 1
        self.wake()
        async with self._pass_done:
            await self._pass_done.wait_for(lambda: self._passes_done >= target and not self._last_pass_acted)

    async def send_test(self, *, timeout_s: float = 30.0) -> dict[str, Any]:
        """Queue a `test` alert and wait (at most `timeout_s`) for its first delivery round.

        Returns `alert_id`, `state` (`sent`, `failed`, `logged`, or `pending` if it will be retried
        or there was no answer in time), `provider_ids`, `error` and `sms`.
        """
        body = f"bot: test alert {texts.hhmmss(self._clock.now())} - SMS alerts work"
        alert_id = await outbox.insert_alert(self._journal, AlertKind.TEST, body)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(alert_id, []).append(waiter)
        self.wake()
        try:
            async with asyncio.timeout(timeout_s):
                return await waiter
        except TimeoutError:
            result = await self._outcome_dict(alert_id)
            if result["state"] == AlertState.PENDING and not result["error"]:
                result["error"] = f"no outcome within {timeout_s:g}s; the alert stays queued"
            return result
        finally:
            waiters = self._waiters.get(alert_id, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(alert_id, None)

    async def status(self) -> dict[str, Any]:
        """For `bot status`: SMS on/off, counts by state, last SMS sent and last error (no secrets)."""
        info = await outbox.summary(self._journal)
        result: dict[str, Any] = {
            "sms": "on" if self.sms_enabled else "off",
            "recipients": len(self._recipients) if self.sms_enabled else 0,
            "pending": info.counts.get(AlertState.PENDING, 0),
            "failed": info.counts.get(AlertState.FAILED, 0),
            "sent": info.counts.get(AlertState.SENT, 0),
            "folded": info.counts.get(AlertState.FOLDED, 0),
            "logged": info.counts.get(AlertState.LOGGED, 0),
            "last_sent_at": info.last_sent_at.isoformat() if info.last_sent_at else None,
            "last_error": info.last_error,
            "last_error_at": info.last_error_at.isoformat() if info.last_error_at else None,
        }
        if not self.sms_enabled:
            result["note"] = "SMS is off (no alerts.account_sid): alerts are journaled and logged only"
        return result

    # -- the task --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Drain the outbox until cancelled; a failing pass is logged and retried, never fatal."""
        _log.info("alert sender started", sms=self.sms_enabled, recipients=len(self._recipients))
        try:
            while True:
                self._wake.clear()
                self._passes_started += 1
                acted = False
                delay_s = self._poll_s
                try:
                    acted, delay_s = await self._pass()
                except JournalError as exc:
                    _log.error("alert outbox unavailable; will retry", error=str(exc))
                except Exception:  # noqa: BLE001 -- the sender must outlive a bug in one pass; traceback logged
                    _log.exception("alert outbox pass failed; will retry")
                async with self._pass_done:
                    self._passes_done += 1
                    self._last_pass_acted = acted
                    self._pass_done.notify_all()
                await self._idle(0.0 if acted else delay_s)
        finally:
            # Shielded bookkeeping still running (a send's result) lands before we let go.
            if self._bookkeeping:
                await asyncio.gather(*self._bookkeeping, return_exceptions=True)
            if self._notifier is not None:
                try:
                    await self._notifier.aclose()
                except Exception as exc:  # noqa: BLE001 -- closing is best effort at shutdown
                    _log.warning("closing the notifier failed", error=type(exc).__name__)
            _log.info("alert sender stopped")

    async def _idle(self, delay_s: float) -> None:
        if self._wake.is_set():
            return
        sleeper = asyncio.create_task(self._clock.sleep(delay_s), name="alert-sender-sleep")
        waker = asyncio.create_task(self._wake.wait(), name="alert-sender-wake")
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    async def _pass(self) -> tuple[bool, float]:
        """One look at the outbox: returns (did anything, seconds until something is due)."""
        batch = await outbox.read_pending(self._journal)
        acted = False
        if batch.unreadable:
            for alert_id, error in batch.unreadable:
                _log.error("alert row unreadable; marked failed", alert_id=alert_id, error=error)
            await outbox.mark_failed(self._journal, batch.unreadable)
            for alert_id, _ in batch.unreadable:
                await self._resolve(alert_id)
            acted = True
        if not batch.alerts:
            return acted, self._poll_s
        if self._notifier is None:
            await self._log_only(batch.alerts)
            return True, self._poll_s
        if self._last_final is None:
            self._last_final = await outbox.last_final_by_kind(self._journal)
        by_kind: dict[str, list[PendingAlert]] = {}
        for alert in batch.alerts:
            by_kind.setdefault(alert.kind, []).append(alert)
        now = self._clock.now()
        next_due: datetime | None = None
        for kind, alerts in by_kind.items():
            due = await self._serve_kind(kind, alerts, now, self._last_final)
            if due is None:
                acted = True
            elif next_due is None or due < next_due:
                next_due = due
        if next_due is None:
            return acted, self._poll_s
        wait_s = (next_due - self._clock.now()).total_seconds()
        return acted, min(self._poll_s, max(0.0, wait_s))

    async def _serve_kind(
        self, kind: str, alerts: list[PendingAlert], now: datetime, last_final: dict[str, datetime]
    ) -> datetime | None:
        """Do at most one delivery for `kind`; return None if done, else when it is next due."""
        heads = [a for a in alerts if a.attempts > 0 or kind == AlertKind.TEST]
        if heads:
            # An alert already under way (retrying) goes first; the rest of its kind wait behind it.
            # A retry time further away than the longest backoff means the wall clock stepped back.
            latest_retry = now + timedelta(seconds=self._retry_max_s)
            for head in heads:
                if head.next_attempt_at <= now or head.next_attempt_at > latest_retry:
                    await self._deliver(head)
                    return None
            return min(h.next_attempt_at for h in heads)
        last = last_final.get(kind)
        if last is not None and last > now:
            # The wall clock stepped back: count the window from now rather than wait out the step.
            last = last_final[kind] = now
        quiet_until = last + self._window if last is not None else None
        if quiet_until is not None and now < quiet_until:
            return quiet_until
        arrived_in_window = quiet_until is not None and alerts[0].created_at < quiet_until
        if not arrived_in_window or len(alerts) == 1:
            # The first of a new burst (or a lone latecomer) goes out as itself.
            await self._deliver(alerts[0])
            return None
        body = follow_up_text(kind, len(alerts), alerts[0].created_at, alerts[-1].body)
        follow_up_id = await self._bookkeep(outbox.fold(self._journal, kind, body, [a.id for a in alerts]))
        _log.info("alerts folded", kind=kind, folded=len(alerts), follow_up_id=follow_up_id)
        for alert in alerts:
            await self._resolve(alert.id)
        stamp = self._clock.now()
        await self._deliver(PendingAlert(follow_up_id, kind, body, stamp, 0, stamp))
        return None

    async def _deliver(self, alert: PendingAlert) -> None:
        """One delivery round: send to every recipient still missing; journal each attempt."""
        assert self._notifier is not None  # noqa: S101 -- only called with SMS on
        progress: dict[str, str | None] = dict(alert.provider_ids)
        last_error: str | None = None
        for to in self._recipients:
            if to in progress:
                continue
            outcome, message_id, error = await self._send_one(alert, to)
            last_error = error or last_error
            if outcome is AttemptOutcome.TRANSIENT:
                await self._bookkeep(outbox.record_attempt(self._journal, alert.id, outcome, error=error))
                continue
            progress[to] = message_id
            await self._bookkeep(
                outbox.record_attempt(
                    self._journal,
                    alert.id,
                    outcome,
                    provider_id=message_id,
                    error=error,
                    provider_ids=progress,
                )
            )
        attempts = alert.attempts + 1
        next_attempt_at: datetime | None = None
        if all(to in progress for to in self._recipients):
            refused = any(progress[to] is None for to in self._recipients)
            state = AlertState.FAILED if refused else AlertState.SENT
        else:
            state = AlertState.PENDING
            retry_in_s = self._backoff_s(attempts)
            next_attempt_at = self._clock.now() + timedelta(seconds=retry_in_s)
            _log.warning(
                "alert not delivered; will retry",
                alert_id=alert.id,
                kind=alert.kind,
                attempts=attempts,
                retry_in_s=round(retry_in_s, 1),
                error=last_error,
            )
        stamp = await self._bookkeep(
            outbox.end_round(
                self._journal,
                alert.id,
                state,
                attempts=attempts,
                next_attempt_at=next_attempt_at,
                last_error=last_error,
            )
        )
        if state is AlertState.SENT:
            _log.info("alert sent", alert_id=alert.id, kind=alert.kind, recipients=len(self._recipients))
        elif state is AlertState.FAILED:
            _log.error("alert failed for good", alert_id=alert.id, kind=alert.kind, error=last_error)
        if state is not AlertState.PENDING and self._last_final is not None:
            self._last_final[alert.kind] = stamp
        await self._resolve(alert.id)

    async def _send_one(self, alert: PendingAlert, to: str) -> tuple[AttemptOutcome, str | None, str | None]:
        """Send to one recipient, bounded in time; (outcome, message id, error text)."""
        assert self._notifier is not None  # noqa: S101 -- only called with SMS on
        try:
            async with asyncio.timeout(self._send_timeout_s):
                message_id = await self._notifier.send(to, alert.body)
        except TimeoutError:
            return AttemptOutcome.TRANSIENT, None, f"no answer within {self._send_timeout_s:g}s"
        except TransientSendError as exc:
            return AttemptOutcome.TRANSIENT, None, str(exc)
        except PermanentSendError as exc:
            _log.error("sms refused", alert_id=alert.id, to=mask_number(to), error=str(exc))
            return AttemptOutcome.PERMANENT, None, str(exc)
        except Exception as exc:  # noqa: BLE001 -- a notifier bug must not kill the sender; the alert fails
            _log.exception("notifier raised an unexpected error", alert_id=alert.id)
            return AttemptOutcome.PERMANENT, None, f"internal error in the notifier: {type(exc).__name__}"
        _log.info("sms accepted", alert_id=alert.id, to=mask_number(to), message_id=message_id)
        return AttemptOutcome.SENT, message_id, None

    async def _log_only(self, alerts: list[PendingAlert]) -> None:
        for alert in alerts:
            _log.warning("alert (SMS off)", alert_id=alert.id, kind=alert.kind, body=alert.body)
        await self._bookkeep(outbox.mark_logged(self._journal, [a.id for a in alerts]))
        for alert in alerts:
            await self._resolve(alert.id)

    def _backoff_s(self, attempts: int) -> float:
        """Exponential from `retry_min_s`, capped at `retry_max_s`, with "equal jitter" (half random)."""
        ceiling_s = min(self._retry_max_s, self._retry_min_s * 2.0 ** min(attempts - 1, 32))
        return max(self._retry_min_s, self._rng.uniform(ceiling_s / 2, ceiling_s))

    async def _bookkeep(self, write: Coroutine[Any, Any, _T]) -> _T:
        """Run a journal write that must land even if the sender is cancelled meanwhile."""
        task = asyncio.create_task(write, name="alert-outbox-write")
        self._bookkeeping.add(task)
        task.add_done_callback(self._bookkeeping.discard)
        return await asyncio.shield(task)

    async def _resolve(self, alert_id: int) -> None:
        """Tell whoever waits on `alert_id` (send_test) how its round ended."""
        waiters = self._waiters.pop(alert_id, None)
        if not waiters:
            return
        result = await self._outcome_dict(alert_id)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(result)

    async def _outcome_dict(self, alert_id: int) -> dict[str, Any]:
        found = await outbox.outcome(self._journal, alert_id)
        if found is None:
            return {"alert_id": alert_id, "state": None, "provider_ids": {}, "error": "no such alert"}
        return {
            "alert_id": alert_id,
            "state": found.state.value,
            "attempts": found.attempts,
            "provider_ids": found.provider_ids,
            "error": found.last_error,
            "folded_into": found.folded_into,
            "sms": "on" if self.sms_enabled else "off",
        }
