"""Settings read from FLASKFLEET_* environment variables (twelve-factor).

A bad value stops the service at start-up with a message naming the variable, rather than
surfacing later as a confusing runtime error.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from typing import Annotated, Literal
from urllib.parse import parse_qs, urlsplit

import limits
import psycopg2
import psycopg2.extensions
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from flaskfleet._version import __version__

ENV_PREFIX = "FLASKFLEET_"

PositiveInt = Annotated[int, Field(ge=1)]

Scope = Literal["products:write", "orders:write", "orders:read", "reports:read"]
# The owner the 0002 migration gives orders placed before orders had owners. No configured
# client may take the name, so those orders stay readable in the database only.
LEGACY_OWNER = "legacy"


class ConfigError(RuntimeError):
    """Raised when the environment does not describe a usable configuration."""


# The target_session_attrs values libpq accepts, and the libpq version that brought them.
# libpq checks the value only when it connects; checked here, a typo stops start-up instead
# of failing every connection.
SESSION_ATTRS = {
    "any": 100000,
    "read-write": 100000,
    "read-only": 140000,
    "primary": 140000,
    "standby": 140000,
    "prefer-standby": 140000,
}


def _check_dsn(value: str) -> str:
    """A libpq connection string or URL; a URL may list several hosts (host1:port,host2:port)
    and pick among them with target_session_attrs."""
    try:
        params = psycopg2.extensions.parse_dsn(value)
    except psycopg2.ProgrammingError as exc:
        raise ValueError(f"not a libpq connection string or URL ({str(exc).strip()})") from None
    attrs = params.get("target_session_attrs")
    if attrs is not None:
        if attrs not in SESSION_ATTRS:
            raise ValueError(
                f"target_session_attrs {attrs!r} is not one of {', '.join(SESSION_ATTRS)}"
            )
        if psycopg2.__libpq_version__ < SESSION_ATTRS[attrs]:
            raise ValueError(
                f"target_session_attrs={attrs} needs libpq {SESSION_ATTRS[attrs] // 10000}"
                f" or later (psycopg2 uses {psycopg2.__libpq_version__})"
            )
    return value


class ApiClient(BaseModel):
    """One entry of FLASKFLEET_API_CLIENTS: who a bearer token belongs to and what it may do.

    Only the SHA-256 of the token is configured: the token itself stays with the client.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[StrictStr, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
    token_sha256: Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$", repr=False)]
    scopes: Annotated[frozenset[Scope], Field(min_length=1)]

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value == LEGACY_OWNER:
            raise ValueError(f"{LEGACY_OWNER!r} is reserved for orders placed before owners")
        return value


class Settings(BaseModel):
    """One field per FLASKFLEET_<FIELD NAME> environment variable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database_url: SecretStr
    database_replica_url: SecretStr | None = None
    redis_url: SecretStr | None = None
    secret_key: SecretStr = SecretStr("")
    api_clients: tuple[ApiClient, ...] = ()
    db_pool_min: Annotated[int, Field(ge=0)] = 1
    db_pool_max: PositiveInt = 10
    db_pool_timeout: Annotated[float, Field(gt=0)] = 5.0
    db_connect_timeout: PositiveInt = 3
    db_statement_timeout: Annotated[float, Field(gt=0)] = 10.0
    cache_timeout: PositiveInt = 60
    cache_missing_timeout: PositiveInt = 10
    breaker_failures: Annotated[int, Field(ge=1, le=100)] = 3
    breaker_reset_seconds: Annotated[float, Field(gt=0)] = 5.0
    breaker_max_reset_seconds: Annotated[float, Field(gt=0)] = 60.0
    ratelimit_per_client: str = "50 per second"
    read_your_writes_seconds: Annotated[int, Field(ge=0)] = 10
    max_page_offset: Annotated[int, Field(ge=0)] = 10_000
    release: str = __version__
    proxy_count: Annotated[int, Field(ge=0)] = 0
    max_body_bytes: PositiveInt = 64 * 1024
    broker_url: SecretStr | None = None
    task_visibility_timeout: PositiveInt = 3600
    task_time_limit: PositiveInt = 300
    task_max_retries: Annotated[int, Field(ge=0, le=50)] = 5
    order_reservation_seconds: PositiveInt = 900
    report_max_days: PositiveInt = 366
    worker_metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9808
    worker_metrics_address: str = "127.0.0.1"

    @field_validator("database_url", "database_replica_url")
    @classmethod
    def _dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _check_dsn(value.get_secret_value())
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        url = value.get_secret_value()
        # Celery names a Redis socket differently (redis+socket://): TCP only, as deployed.
        if not url.startswith(("redis://", "rediss://")):
            raise ValueError("must start with redis:// or rediss://")
        cert_reqs = parse_qs(urlsplit(url).query).get("ssl_cert_reqs", ["required"])
        if [reqs.lower() for reqs in cert_reqs] not in (["required"], ["cert_required"]):
            raise ValueError("must not turn off verifying the server's certificate")
        return value

    @field_validator("worker_metrics_address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("must be an IPv4 or IPv6 address") from None
        return value

    @field_validator("api_clients", mode="before")
    @classmethod
    def _parse_clients(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"not valid JSON ({exc})") from None
            if not isinstance(value, list):
                raise ValueError("must be a JSON list of {name, token_sha256, scopes} objects")
        return value

    @field_validator("api_clients")
    @classmethod
    def _unique_clients(cls, value: tuple[ApiClient, ...]) -> tuple[ApiClient, ...]:
        names = [client.name for client in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"client names must be unique, repeated: {', '.join(duplicates)}")
        # One token for two clients would make the request's client depend on list order.
        if len({client.token_sha256 for client in value}) != len(value):
            raise ValueError("two clients have the same token_sha256")
        return value

    @field_validator("ratelimit_per_client")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        try:
            limits.parse_many(value)
        except ValueError as exc:
            raise ValueError(f"{exc}; expected e.g. '50 per second'") from None
        return value

    @field_validator("secret_key")
    @classmethod
    def _secret_key(cls, value: SecretStr) -> SecretStr:
        # It signs the read-your-writes cookie: a short key would let anyone forge cookies
        # that send their reads past the cache to the primary.
        if 0 < len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (or unset: read-your-writes off)")
        return value

    @property
    def read_your_writes_window(self) -> int:
        """Seconds a writer's reads follow its writes; 0 (off) without a key to sign them.
        A migration run (flask db upgrade) needs only the database URL."""
        return self.read_your_writes_seconds if self.secret_key.get_secret_value() else 0

    @field_validator("release")
    @classmethod
    def _release(cls, value: str) -> str:
        # The release is echoed in a response header, so it must be a plain header value.
        if not value or not value.isprintable() or not value.isascii() or len(value) > 64:
            raise ValueError("must be 1-64 printable ASCII characters")
        return value

    @model_validator(mode="after")
    def _pool_bounds(self) -> Settings:
        if self.db_pool_min > self.db_pool_max:
            raise ValueError("FLASKFLEET_DB_POOL_MIN must not exceed FLASKFLEET_DB_POOL_MAX")
        return self

    @model_validator(mode="after")
    def _breaker_bounds(self) -> Settings:
        if self.breaker_reset_seconds > self.breaker_max_reset_seconds:
            raise ValueError(
                "FLASKFLEET_BREAKER_RESET_SECONDS must not exceed"
                " FLASKFLEET_BREAKER_MAX_RESET_SECONDS"
            )
        return self

    @model_validator(mode="after")
    def _task_limits(self) -> Settings:
        # The broker hands an unacknowledged task to another worker once the visibility
        # timeout has passed: a task still allowed to run by then would run twice at once.
        if self.task_time_limit >= self.task_visibility_timeout:
            raise ValueError(
                "FLASKFLEET_TASK_TIME_LIMIT must be less than FLASKFLEET_TASK_VISIBILITY_TIMEOUT"
            )
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from FLASKFLEET_* variables; empty values count as unset."""
        environ = os.environ if environ is None else environ
        values = {
            name[len(ENV_PREFIX) :].lower(): value.strip()
            for name, value in environ.items()
            if name.startswith(ENV_PREFIX) and value.strip()
        }
        # Unknown FLASKFLEET_* names are reported by unknown_variables(), not fatal: a deploy
        # tool may set variables for a newer release than the one it is rolling back to.
        values = {name: value for name, value in values.items() if name in cls.model_fields}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                field, *inside = error["loc"] or ("",)
                variable = ENV_PREFIX + str(field).upper() if field else "configuration"
                # Nested values (a client in FLASKFLEET_API_CLIENTS) are named by their path.
                where = "".join(
                    f"[{part}]" if isinstance(part, int) else f".{part}" for part in inside
                )
                problems.append(f"{variable}{where}: {error['msg']}")
            raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """FLASKFLEET_* variables that match no setting, most likely typos."""
    environ = os.environ if environ is None else environ
    return sorted(
        name
        for name in environ
        if name.startswith(ENV_PREFIX)
        and name[len(ENV_PREFIX) :].lower() not in Settings.model_fields
    )
