"""A line-JSON control socket for a simulated gateway running in another process.

Owns the tiny protocol fault-campaign tests use to steer a standalone simulator: one JSON object
per line in (`{"op": "...", ...}`, an optional `"id"` is echoed), one JSON object per line out
(`{"ok": true, ...}` or `{"ok": false, "error": "..."}`). Listens on a loopback TCP port or a Unix
socket path. Operations (arguments as in the Python API of `SimulatedGateway` and `Faults`):

    ping, status, ledger,
    drop_after_place_read {count}, drop_before_place_read {count}, positions_lag {seconds},
    omit {msg_id, count?, client_id?}, delay {msg_id, seconds, max_seconds?, count?, client_id?},
    duplicate {msg_id, count?, client_id?, gap_s?}, coalesce_order_status {window_s, count?, client_id?},
    leg_executions_only {count?, client_id?},
    exec_filter_quirk {quirk: "ignore-empty" | "client-zero", count?, client_id?},
    refuse_final_cancel {count?, client_id?}, fill_before_cancel {count?, client_id?},
    lose_cancel {count?, client_id?},
    reject_orders {count? (1), reason?, client_id?, error_first?},
    market_closed {count?, client_id?, until? (ISO 8601 with zone), warning_first?},
    expire_day_orders (answers {"expired": [orderRef, ...]}),
    hold_client_id {client_id, attempts?}, release_client_id {client_id}, clear_faults,
    restart {next_valid_id?, down_s?, new_day?}, drop_connections,
    connectivity {lost? | restored?, data_maintained?},
    fill_model {mode, threshold_over_mid?, delay_s?, partial_qty?, rest_after_s?},
    set_spot {spot}, set_vol {vol},
    chain_shape {shape} (`ChainShape.parse` text, e.g. "far-sparse:14"),
    remove_contracts {contracts: ["SPXW:20270115:6100[:C]", ...]}, restore_contracts,
    market_rules {enforce?, combo_increments?, modify_processing_s?}, still_processing {count?},
    limits {max_msgs_per_s?, max_market_data_lines?, enforce_pacing?, enforce_lines?, reset_stats?}
    (answers {"limits": ...}; `status` carries the same counters, the chain and the market rules),
    market_walk {enabled? (true), annual_vol?, drift?, vol_of_vol?, vol_reversion?, spot_vol_corr?,
    step_s?} (starts or stops the random walk from the market as it is; answers {"walk": ... | null}),
    account {refs?: [prefix, ...]} (cash, positions with realised P&L, settlements, P&L per prefix),
    pnl {prefix, separator?} (realised P&L with commissions of every order whose orderRef starts with
    prefix; with a separator, prefix itself or prefix + separator + anything),
    settle_expired (settle what is due now; answers {"settled": [...]}),
    latency {profile? ("ib", "none" or a `LatencyProfile.parse` spec), any `LatencyProfile` field?}
    (replaces the latency profile: the named one, or the current one with the fields given;
    answers {"latency": ...})
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.sim.book import FillMode, FillModel
from bot.sim.chain import ChainShape, ContractKey
from bot.sim.exec_filter import ExecFilterQuirk
from bot.sim.latency import LatencyClock, LatencyProfile
from bot.sim.rules import ComboIncrements
from bot.sim.walk import MarketWalk

if TYPE_CHECKING:
    from bot.sim.account import Booking
    from bot.sim.server import SimulatedGateway

__all__ = ["ControlServer"]

_log = logging.getLogger("bot.sim")
_MAX_LINE = 64 * 1024


class ControlServer:
    """Serves the control protocol for one gateway."""

    def __init__(self, gateway: SimulatedGateway) -> None:
        self.gw = gateway
        self._servers: list[asyncio.Server] = []
        self._path: Path | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self.port: int | None = None

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on a TCP port (loopback by default); returns the bound port."""
        server = await asyncio.start_server(self._on_client, host, port, limit=_MAX_LINE)
        self._servers.append(server)
        self.port = int(server.sockets[0].getsockname()[1])
        _log.info("simulator control listening on %s:%d", host, self.port)
        return self.port

    async def start_unix(self, path: str | Path) -> None:
        """Listen on a Unix socket at `path` (replacing a stale socket file)."""
        self._path = Path(path)
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        server = await asyncio.start_unix_server(self._on_client, str(self._path), limit=_MAX_LINE)
        self._servers.append(server)
        _log.info("simulator control listening on %s", self._path)

    async def stop(self) -> None:
        """Stop listening, close open control connections, and remove the socket file."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for writer in list(self._clients):
            writer.close()
        for writer in list(self._clients):
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            while line := await reader.readline():
                reply = await self.handle_line(line)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass  # a client that goes away or sends an over-long line just loses its connection
        finally:
            self._clients.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def handle_line(self, line: bytes) -> dict[str, Any]:
        """Answer one request line."""
        try:
            request = json.loads(line)
        except json.JSONDecodeError as exc:
            return {"ok": False, "error": f"not JSON: {exc}"}
        if not isinstance(request, dict):
            return {"ok": False, "error": "a request is a JSON object"}
        reply: dict[str, Any]
        try:
            reply = {"ok": True, **await self.handle(request)}
        except (KeyError, TypeError, ValueError) as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if "id" in request:
            reply["id"] = request["id"]
        return reply

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        """Perform one operation; raises KeyError/TypeError/ValueError on a bad request."""
        gw = self.gw
        faults = gw.faults
        op = req["op"]
        match op:
            case "ping":
                return {}
            case "status":
                return self._status()
            case "ledger":
                return gw.ledger.to_dict()
            case "drop_after_place_read":
                faults.drop_after_place_read(int(req.get("count", 1)))
            case "drop_before_place_read":
                faults.drop_before_place_read(int(req.get("count", 1)))
            case "omit":
                faults.omit(int(req["msg_id"]), _opt_int(req, "count"), client_id=_opt_int(req, "client_id"))
            case "delay":
                faults.delay(
                    int(req["msg_id"]),
                    float(req["seconds"]),
                    _opt_int(req, "count"),
                    client_id=_opt_int(req, "client_id"),
                    max_seconds=_opt_float(req, "max_seconds"),
                )
            case "duplicate":
                faults.duplicate(
                    int(req["msg_id"]),
                    _opt_int(req, "count"),
                    client_id=_opt_int(req, "client_id"),
                    gap_s=float(req.get("gap_s", 0.0)),
                )
            case "coalesce_order_status":
                faults.coalesce_order_status(
                    float(req["window_s"]), _opt_int(req, "count"), client_id=_opt_int(req, "client_id")
                )
            case "leg_executions_only":
                faults.leg_executions_only(_opt_int(req, "count"), client_id=_opt_int(req, "client_id"))
            case "exec_filter_quirk":
                faults.exec_filter_quirk(
                    ExecFilterQuirk(req["quirk"]),
                    _opt_int(req, "count"),
                    client_id=_opt_int(req, "client_id"),
                )
            case "refuse_final_cancel":
                faults.refuse_final_cancel(_opt_int(req, "count"), client_id=_opt_int(req, "client_id"))
            case "fill_before_cancel":
                faults.fill_before_cancel(_opt_int(req, "count"), client_id=_opt_int(req, "client_id"))
            case "lose_cancel":
                faults.lose_cancel(_opt_int(req, "count"), client_id=_opt_int(req, "client_id"))
            case "positions_lag":
                faults.lag_positions(float(req["seconds"]))
            case "reject_orders":
                _reject_orders(gw, req)
            case "market_closed":
                until = req.get("until")
                faults.market_closed(
                    _opt_int(req, "count"),
                    client_id=_opt_int(req, "client_id"),
                    until=None if until is None else datetime.fromisoformat(str(until)),
                    warning_first=bool(req.get("warning_first", False)),
                )
            case "expire_day_orders":
                return {"expired": [o.order_ref for o in gw.expire_day_orders()]}
            case "hold_client_id":
                faults.hold_client_id(int(req["client_id"]), _opt_int(req, "attempts"))
            case "release_client_id":
                faults.release_client_id(int(req["client_id"]))
            case "clear_faults":
                faults.clear()
            case "restart":
                new_day = req.get("new_day")
                await gw.restart(
                    _opt_int(req, "next_valid_id"),
                    float(req.get("down_s", 0.0)),
                    new_day=None if new_day is None else bool(new_day),
                )
            case "drop_connections":
                await gw.drop_connections()
            case "connectivity":
                await gw.connectivity(
                    lost=bool(req.get("lost", False)),
                    restored=bool(req.get("restored", False)),
                    data_maintained=bool(req.get("data_maintained", True)),
                )
            case "fill_model":
                gw.fill_model = FillModel(
                    mode=FillMode(req["mode"]),
                    threshold_over_mid=float(req.get("threshold_over_mid", 0.10)),
                    delay_s=float(req.get("delay_s", 0.0)),
                    partial_qty=_opt_float(req, "partial_qty"),
                    rest_after_s=_opt_float(req, "rest_after_s"),
                )
            case "set_spot":
                gw.market.set_spot(float(req["spot"]))
                gw.notify()
            case "set_vol":
                gw.market.set_vol(float(req["vol"]))
                gw.notify()
            case "chain_shape":
                gw.market.listing.shape = ChainShape.parse(str(req["shape"]))
            case "remove_contracts":
                for text in req["contracts"]:
                    key = ContractKey.parse(str(text))
                    gw.market.listing.remove(key.trading_class, key.expiry, key.strike, key.right)
            case "restore_contracts":
                gw.market.listing.restore()
            case "market_rules":
                _market_rules(gw, req)
            case "still_processing":
                faults.still_processing(int(req.get("count", 1)))
            case "limits":
                _limits(gw, req)
                return {"limits": gw.limits.to_dict()}
            case "market_walk":
                return _market_walk(gw, req)
            case "account":
                refs = req.get("refs", [])
                if not isinstance(refs, list):
                    raise TypeError("refs is a list of orderRef prefixes")
                return gw.account.to_dict([str(r) for r in refs])
            case "pnl":
                sep = req.get("separator")
                return gw.account.pnl(
                    str(req["prefix"]), separator=None if sep is None else str(sep)
                ).to_dict()
            case "settle_expired":
                return {"settled": [_booking(b) for b in gw.settle_expired()]}
            case "latency":
                return {"latency": _latency(gw, req)}
            case _:
                raise ValueError(f"unknown op {op!r}")
        return {}

    def _status(self) -> dict[str, Any]:
        gw = self.gw
        model = gw.fill_model
        return {
            "port": gw.port,
            "serving": gw.is_serving,
            "connected_client_ids": gw.connected_client_ids,
            "orders": len(gw.ledger.orders),
            "working": sum(1 for _ in gw.ledger.working()),
            "duplicate_refs": gw.ledger.duplicate_refs(),
            "protocol_errors": list(gw.protocol_errors),
            "connectivity_lost": gw.connectivity_lost,
            "spot": gw.market.spot(),
            "vol": round(gw.market.current_vol(), 6),
            "walk": None if gw.market.walk is None else gw.market.walk.to_dict(),
            "clock": gw.clock.now().isoformat(),
            "clock_speed": float(getattr(gw.clock, "factor", 1.0)),
            "cash": round(gw.account.cash, 2),
            "positions": len(gw.positions()),
            "fill_model": {
                "mode": model.mode.value,
                "threshold_over_mid": model.threshold_over_mid,
                "delay_s": model.delay_s,
                "partial_qty": model.partial_qty,
                "rest_after_s": model.rest_after_s,
            },
            "faults": gw.faults.describe(),
            "chain": gw.market.listing.describe(),
            "market_rules": gw.rules.describe(),
            "limits": gw.limits.to_dict(),
            "latency": gw.latency.profile.to_dict(),
        }


def _opt_int(req: dict[str, Any], key: str) -> int | None:
    value = req.get(key)
    return None if value is None else int(value)


def _opt_float(req: dict[str, Any], key: str) -> float | None:
    value = req.get(key)
    return None if value is None else float(value)


def _reject_orders(gw: SimulatedGateway, req: dict[str, Any]) -> None:
    count = _opt_int(req, "count") if "count" in req else 1
    client_id = _opt_int(req, "client_id")
    error_first = bool(req.get("error_first", False))
    if "reason" in req:
        gw.faults.reject_orders(
            count, reason=str(req["reason"]), client_id=client_id, error_first=error_first
        )
    else:
        gw.faults.reject_orders(count, client_id=client_id, error_first=error_first)


def _market_rules(gw: SimulatedGateway, req: dict[str, Any]) -> None:
    rules = gw.rules
    if "enforce" in req:
        rules.enforce_increments = bool(req["enforce"])
    if "combo_increments" in req:
        rules.combo = ComboIncrements(req["combo_increments"])
    if "modify_processing_s" in req:
        seconds = float(req["modify_processing_s"])
        if seconds < 0:
            raise ValueError("modify_processing_s must not be negative")
        rules.modify_processing_s = seconds


def _limits(gw: SimulatedGateway, req: dict[str, Any]) -> None:
    limits = gw.limits
    for key in ("max_msgs_per_s", "max_market_data_lines"):
        if key in req:
            value = int(req[key])
            if value < 1:
                raise ValueError(f"{key} must be at least 1")
            setattr(limits, key, value)
    for key in ("enforce_pacing", "enforce_lines"):
        if key in req:
            setattr(limits, key, bool(req[key]))
    if req.get("reset_stats"):
        limits.reset_stats()


def _latency(gw: SimulatedGateway, req: dict[str, Any]) -> dict[str, float]:
    spec = req.get("profile")
    profile = gw.latency.profile if spec is None else LatencyProfile.parse(str(spec))
    fields = {k: v for k, v in req.items() if k not in ("op", "id", "profile")}
    if fields:
        profile = LatencyProfile.from_dict({**profile.to_dict(), **fields})
    gw.latency = LatencyClock(profile, gw.config.seed)
    return profile.to_dict()


def _market_walk(gw: SimulatedGateway, req: dict[str, Any]) -> dict[str, Any]:
    if not bool(req.get("enabled", True)):
        gw.market.set_walk(None)
    else:
        knobs = {k: float(req[k]) for k in MarketWalk.__dataclass_fields__ if k in req}
        gw.market.set_walk(MarketWalk(**knobs))
    gw.notify()
    walk = gw.market.walk
    return {"walk": None if walk is None else walk.to_dict(), "spot": gw.market.spot()}


def _booking(b: Booking) -> dict[str, Any]:
    return {
        "time": b.time.isoformat(),
        "con_id": b.con_id,
        "order_ref": b.order_ref,
        "qty": b.qty,
        "value": b.price,
        "cash": round(b.cash, 2),
    }
