"""Configuration: defaults < TOML file < `BOT_*` environment < secrets directory; validated once.

This is the only module that reads the process environment. Everything else receives the few
values it needs from a `Settings` object (or from `RuntimeEnv`, for what systemd passes in).

Secrets (the Twilio auth token, the IB account id) are `SecretStr`: they print as `**********`
and never appear in a validation message.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bot.dashboard.settings import DashboardSettings
from bot.errors import ExitCode, UserError
from bot.positions.settings import ExitSettings

__all__ = [
    "AlertSettings",
    "BrokerSettings",
    "ControlSettings",
    "RuntimeEnv",
    "ScheduleSettings",
    "ServiceSettings",
    "Settings",
    "SimulatorSettings",
    "StrategySettings",
    "default_state_dir",
    "dump_effective",
    "environ",
    "format_errors",
    "load_settings",
    "unknown_env_vars",
]

BrokerMode = Literal["simulated", "paper", "live"]

#: Credential files (systemd `LoadCredential=` ids) and where each lands in the settings.
CREDENTIAL_FILES: dict[str, tuple[str, str]] = {
    "twilio_auth_token": ("alerts", "auth_token"),
    "ib_account": ("broker", "account"),
}

#: Set while building the settings of a client command (`bot status`, `trade`, ...): the checks
#: that only the daemon needs (an SMS setup's auth token, which operators cannot read) are skipped.
_CLIENT_ONLY: ContextVar[bool] = ContextVar("_CLIENT_ONLY", default=False)

#: Key fragments whose values are never echoed back in an error line.
_SECRET_HINTS = ("token", "account", "secret", "password", "sid", "credential")


def environ() -> Mapping[str, str]:
    """The process environment. Every other module receives values, never `os.environ`."""
    return os.environ


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerSettings(_Section):
    """Which broker, and how to reach it."""

    mode: BrokerMode = "simulated"
    allow_live: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=4002, ge=1, le=65535)
    client_id: int = Field(default=17, ge=0, le=2_147_483_647)
    account: SecretStr | None = None
    market_data_type: Literal["live", "frozen", "delayed", "delayed_frozen"] = "live"
    connect_timeout_s: float = Field(default=10.0, gt=0)
    request_timeout_s: float = Field(default=15.0, gt=0)
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    positions_settle_s: float = Field(default=3.0, ge=0)
    """How long IB's position reports may trail a fill: an order the broker no longer lists is
    settled from the account's positions only from a look-up repeated this long after it was
    first missed, and no position report is read sooner than this after the link came up (a
    restarted gateway forgets the orders of fills its report may not show yet)."""


class SimulatorSettings(_Section):
    """The built-in simulated gateway used when `broker.mode = "simulated"`."""

    seed: int = 7
    spot: float = Field(default=6000.0, gt=0)
    vol: float = Field(default=0.18, gt=0, lt=3)
    fill_over_mid: float = Field(default=0.10, ge=0)
    fill_delay_s: float = Field(default=2.0, ge=0)


class ScheduleSettings(_Section):
    """When the daily entry fires."""

    enabled: bool = True
    entry_time: time = time(9, 45)
    entry_window_end: time = time(10, 30)
    timezone: str = "America/New_York"
    exchange_calendar: str = "XNYS"
    recheck_s: float = Field(default=30.0, gt=0, le=60)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from exc
        return value

    @model_validator(mode="after")
    def _window_after_entry(self) -> ScheduleSettings:
        if self.entry_window_end <= self.entry_time:
            raise ValueError("entry_window_end must be later than entry_time")
        return self


class StrategySettings(_Section):
    """The calendar spread: legs, order walk and risk limits."""

    name: str = Field(default="calendar", pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    shape: Literal["call", "put", "double"] = "call"
    strike_mode: Literal["atm", "delta"] = "atm"
    target_delta: float = Field(default=0.20, gt=0, lt=1)
    delta_tolerance: float = Field(default=0.05, gt=0, lt=1)
    front_dte: int = Field(default=21, ge=0)
    back_dte: int = Field(default=28, ge=1)
    dte_tolerance: int = Field(default=5, ge=0)
    quantity: int = Field(default=1, ge=1)
    price_step: float = Field(default=0.05, gt=0)
    step_interval_s: float = Field(default=15.0, gt=0)
    max_steps: int = Field(default=5, ge=0)
    fill_timeout_s: float = Field(default=30.0, gt=0)
    max_debit: float = Field(default=60.0, gt=0)
    max_contracts: int = Field(default=10, ge=1)
    max_open_calendars: int = Field(default=7, ge=1)
    on_netting: Literal["shift", "skip", "allow"] = "shift"
    """A chosen leg that is an open position's leg on the other side (IB nets positions per
    contract, so the two would cancel at the broker): shift every leg of that strike to the
    nearest listed strike that nets against nothing, skip the day, or allow it (the netted
    positions can then only be closed together, by a person: the exits refuse to take a leg
    through zero)."""
    netting_max_shift_points: float = Field(default=25.0, gt=0)
    """`shift` moves a strike at most this many index points; farther means the day is skipped."""

    @model_validator(mode="after")
    def _back_after_front(self) -> StrategySettings:
        if self.back_dte <= self.front_dte:
            raise ValueError("back_dte must be greater than front_dte")
        if self.quantity > self.max_contracts:
            raise ValueError("quantity exceeds max_contracts")
        return self


class ControlSettings(_Section):
    """The control socket `bot trade` and `bot status` talk to."""

    socket_path: Path | None = None
    allowed_group: str | None = None
    max_line_bytes: int = Field(default=65536, ge=1024)
    read_timeout_s: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=256, ge=1)


class AlertSettings(_Section):
    """SMS alerts through Twilio. Without `account_sid`, alerts are journaled and logged only."""

    account_sid: str | None = Field(default=None, pattern=r"^AC[0-9a-fA-F]{32}$")
    auth_token: SecretStr | None = None
    from_number: str | None = Field(default=None, pattern=r"^\+[1-9]\d{6,14}$")
    messaging_service_sid: str | None = Field(default=None, pattern=r"^MG[0-9a-fA-F]{32}$")
    to: tuple[str, ...] = ()
    base_url: str | None = None
    send_timeout_s: float = Field(default=10.0, gt=0)
    coalesce_window_s: float = Field(default=60.0, ge=0)
    retry_min_s: float = Field(default=2.0, gt=0)
    retry_max_s: float = Field(default=300.0, gt=0)
    link_lost_after_s: float = Field(default=30.0, ge=0)
    poll_s: float = Field(default=5.0, gt=0)
    """How often the outbox is read while nothing wakes the sender (every alert the daemon writes
    wakes it at once; retries keep their own times): a backstop, not the delivery path."""

    @field_validator("to")
    @classmethod
    def _e164(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for number in value:
            if not re.fullmatch(r"\+[1-9]\d{6,14}", number):
                raise ValueError(f"{number!r} is not an E.164 phone number like +15551234567")
        return value

    @model_validator(mode="after")
    def _complete(self) -> AlertSettings:
        if self.account_sid is None or _CLIENT_ONLY.get():
            # A client command never sends SMS; the daemon (and check-config) check the rest.
            return self
        if self.auth_token is None:
            raise ValueError("account_sid is set but auth_token is missing (credential twilio_auth_token)")
        if not self.to:
            raise ValueError("account_sid is set but no recipient in alerts.to")
        if (self.from_number is None) == (self.messaging_service_sid is None):
            raise ValueError("set exactly one of alerts.from_number and alerts.messaging_service_sid")
        return self

    @property
    def sms_enabled(self) -> bool:
        """True when Twilio is configured."""
        return self.account_sid is not None


class ServiceSettings(_Section):
    """The daemon's lifecycle."""

    drain_timeout_s: float = Field(default=60.0, gt=0)
    """On SIGTERM/Ctrl-C a working order is cancelled at once (nothing is left working unwatched);
    this bounds the wait for IB's confirmation of the cancel, or of a fill racing it."""
    max_fatal_errors_per_day: int = Field(default=10, ge=1)
    lock_dir: Path = Path("/run/lock")
    """Where the one-daemon-per-IB-account lock lives. Every bot on the host must use the same
    directory, whichever user or unit runs it: the host's `/run/lock`, not `/tmp` (private per
    unit under `PrivateTmp=`) nor `$RUNTIME_DIRECTORY` (per unit, removed when it stops)."""


class _TomlLayer(PydanticBaseSettingsSource):
    """The TOML file's data, read (and checked to exist) by `load_settings`."""

    def __init__(self, settings_cls: type[BaseSettings], data: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = dict(data)

    def get_field_value(  # the signature is fixed by the base class
        self,
        field: Any,  # noqa: ARG002
        field_name: str,
    ) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


#: The TOML data for the `Settings` being built right now (set only inside `load_settings`).
_TOML_DATA: ContextVar[Mapping[str, Any] | None] = ContextVar("_TOML_DATA", default=None)


class Settings(BaseSettings):
    """The whole, validated configuration of one daemon."""

    model_config = SettingsConfigDict(
        env_prefix="BOT_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
    )

    state_dir: Path = Field(default_factory=lambda: default_state_dir(environ()))
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    broker: BrokerSettings = BrokerSettings()
    simulator: SimulatorSettings = SimulatorSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    strategy: StrategySettings = StrategySettings()
    control: ControlSettings = ControlSettings()
    alerts: AlertSettings = AlertSettings()
    service: ServiceSettings = ServiceSettings()
    exits: ExitSettings = ExitSettings()
    dashboard: DashboardSettings = DashboardSettings()

    @model_validator(mode="after")
    def _live_needs_consent(self) -> Settings:
        if self.broker.mode == "live" and not self.broker.allow_live:
            raise ValueError(
                "broker.mode is 'live' but broker.allow_live is not true; set both to trade a live account"
            )
        return self

    @property
    def journal_path(self) -> Path:
        """The SQLite journal: `journal.sqlite3`, or `journal-simulated.sqlite3` in simulated mode,
        so a demo's fills never land in the journal a paper or live run uses (the journal also
        records its mode and refuses another, see `bot.service.daemon`)."""
        if self.broker.mode == "simulated":
            return self.state_dir / "journal-simulated.sqlite3"
        return self.state_dir / "journal.sqlite3"

    @property
    def lock_path(self) -> Path:
        """The single-instance lock file."""
        return self.state_dir / "bot.lock"

    def socket_path(self, runtime: RuntimeEnv) -> Path:
        """The control socket: configured, else `$RUNTIME_DIRECTORY/bot.sock`, else in the state dir."""
        if self.control.socket_path is not None:
            return self.control.socket_path
        if runtime.runtime_directory is not None:
            return runtime.runtime_directory / "bot.sock"
        return self.state_dir / "bot.sock"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 -- no .env files, by design
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003 -- credentials read by load_settings
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest priority first: credential files (passed as init values by `load_settings`),
        # then the BOT_* environment, then the TOML file; defaults last.
        return (init_settings, env_settings, _TomlLayer(settings_cls, _TOML_DATA.get() or {}))


@dataclass(frozen=True, slots=True)
class RuntimeEnv:
    """What the service manager tells the process through its environment."""

    notify_socket: str | None
    watchdog_usec: int | None
    watchdog_pid: int | None
    journal_stream: str | None
    runtime_directory: Path | None
    state_directory: Path | None
    credentials_directory: Path | None
    invocation_id: str | None

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> RuntimeEnv:
        """Read the systemd-provided variables (all optional)."""

        def first_path(name: str) -> Path | None:
            value = env.get(name)
            # systemd joins several directories with ':'; the first is ours.
            return Path(value.split(":")[0]) if value else None

        def as_int(name: str) -> int | None:
            value = env.get(name, "")
            return int(value) if value.isdigit() else None

        return cls(
            notify_socket=env.get("NOTIFY_SOCKET") or None,
            watchdog_usec=as_int("WATCHDOG_USEC"),
            watchdog_pid=as_int("WATCHDOG_PID"),
            journal_stream=env.get("JOURNAL_STREAM") or None,
            runtime_directory=first_path("RUNTIME_DIRECTORY"),
            state_directory=first_path("STATE_DIRECTORY"),
            credentials_directory=first_path("CREDENTIALS_DIRECTORY"),
            invocation_id=env.get("INVOCATION_ID") or None,
        )


def default_state_dir(env: Mapping[str, str]) -> Path:
    """`$STATE_DIRECTORY` under systemd, else the per-user data directory (XDG)."""
    runtime = RuntimeEnv.from_environ(env)
    if runtime.state_directory is not None:
        return runtime.state_directory
    data_home = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".local/share")
    return Path(data_home) / "bot"


def _read_toml(path: Path, *, client: bool = False) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except PermissionError as exc:
        if client:
            # An operator outside the service's group: a permission problem, not a bad config.
            raise UserError(
                f"cannot read the configuration {path}: permission denied; add your user to the "
                "daemon's group (usermod -aG bot $USER) and log in again",
                ExitCode.NOPERM,
            ) from exc
        raise UserError(f"config error: cannot read {path}: {exc.strerror}", ExitCode.CONFIG) from exc
    except FileNotFoundError as exc:
        raise UserError(
            f"config error: file {path} does not exist (fix the path given by --config or BOT_CONFIG)",
            ExitCode.CONFIG,
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config error: {path} is not valid TOML: {exc}", ExitCode.CONFIG) from exc
    except OSError as exc:
        raise UserError(f"config error: cannot read {path}: {exc.strerror}", ExitCode.CONFIG) from exc


def _read_credentials(directory: Path) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for file_name, (section, key) in CREDENTIAL_FILES.items():
        path = directory / file_name
        try:
            value = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise UserError(
                f"config error: cannot read credential {file_name}: {exc.strerror}", ExitCode.CONFIG
            ) from exc
        if value:
            found.setdefault(section, {})[key] = value
    return found


def _is_secret_path(loc: tuple[int | str, ...]) -> bool:
    return any(hint in str(part).lower() for part in loc for hint in _SECRET_HINTS)


def format_errors(exc: ValidationError) -> list[str]:
    """One line per problem, naming the key; inputs are echoed only for keys that cannot hold secrets."""
    lines: list[str] = []
    for err in exc.errors(include_url=False, include_input=True, include_context=False):
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(settings)"
        message = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        if err["type"] == "extra_forbidden":
            message = "unknown key (check the spelling against config/bot.example.toml)"
            got = None
        if got is not None and not _is_secret_path(loc) and isinstance(got, str | int | float | bool):
            lines.append(f"config error: {key}: {message} (got {got!r})")
        else:
            lines.append(f"config error: {key}: {message}")
    return lines


def load_settings(config_file: Path | None = None, *, client: bool = False) -> Settings:
    """Build and validate the settings; raise `UserError` (exit 78) listing every problem.

    `client`: for the commands that talk to a running daemon or read its journal; what only the
    daemon uses (the SMS credentials) is not required, so operators need none of its secrets.
    """
    env = environ()
    runtime = RuntimeEnv.from_environ(env)
    path = config_file or (Path(env["BOT_CONFIG"]) if env.get("BOT_CONFIG") else None)
    data: dict[str, Any] = _read_toml(path, client=client) if path is not None else {}
    credentials = _read_credentials(runtime.credentials_directory) if runtime.credentials_directory else {}
    token = _TOML_DATA.set(data)
    client_token = _CLIENT_ONLY.set(client)
    try:
        return Settings(**credentials)  # type: ignore[arg-type]  # nested dicts, validated by pydantic
    except ValidationError as exc:
        raise UserError("\n".join(format_errors(exc)), ExitCode.CONFIG) from None
    finally:
        _CLIENT_ONLY.reset(client_token)
        _TOML_DATA.reset(token)


def unknown_env_vars(env: Mapping[str, str]) -> list[str]:
    """The `BOT_*` variables that name no setting (pydantic-settings ignores them silently), each
    as a line with the nearest known name when there is one (`BOT_BROKR__PORT`)."""
    known = {"BOT_CONFIG"}
    for name, field in Settings.model_fields.items():
        known.add(f"BOT_{name}".upper())
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            known.update(f"BOT_{name}__{key}".upper() for key in section.model_fields)
    lines: list[str] = []
    for var in sorted(env):
        if not var.upper().startswith("BOT_") or var.upper() in known:
            continue
        close = difflib.get_close_matches(var.upper(), sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        lines.append(f"warning: environment variable {var} is not a setting and is ignored{hint}")
    return lines


def dump_effective(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, secrets masked."""
    data: dict[str, Any] = settings.model_dump(mode="json")
    return data
