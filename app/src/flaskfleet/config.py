"""Settings read from FLASKFLEET_* environment variables (twelve-factor).

A bad value stops the service at start-up with a message naming the variable, rather than
surfacing later as a confusing runtime error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated

import limits
import psycopg2.extensions
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from flaskfleet._version import __version__

ENV_PREFIX = "FLASKFLEET_"

PositiveInt = Annotated[int, Field(ge=1)]


class ConfigError(RuntimeError):
    """Raised when the environment does not describe a usable configuration."""


def _check_dsn(value: str) -> str:
    try:
        psycopg2.extensions.parse_dsn(value)
    except psycopg2.ProgrammingError as exc:
        raise ValueError(f"not a libpq connection string or URL ({str(exc).strip()})") from None
    return value


class Settings(BaseModel):
    """One field per FLASKFLEET_<FIELD NAME> environment variable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database_url: SecretStr
    database_replica_url: SecretStr | None = None
    redis_url: SecretStr | None = None
    secret_key: SecretStr = SecretStr("")
    api_tokens: tuple[SecretStr, ...] = ()
    db_pool_min: Annotated[int, Field(ge=0)] = 1
    db_pool_max: PositiveInt = 10
    db_pool_timeout: Annotated[float, Field(gt=0)] = 5.0
    db_connect_timeout: PositiveInt = 3
    cache_timeout: PositiveInt = 60
    ratelimit_default: str = "1000 per second"
    read_your_writes_seconds: Annotated[int, Field(ge=0)] = 10
    release: str = __version__
    proxy_count: Annotated[int, Field(ge=0)] = 0
    max_body_bytes: PositiveInt = 64 * 1024

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

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(token.strip() for token in value.split(",") if token.strip())
        return value

    @field_validator("ratelimit_default")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        try:
            limits.parse_many(value)
        except ValueError as exc:
            raise ValueError(f"{exc}; expected e.g. '1000 per second'") from None
        return value

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
                where = ".".join(str(part) for part in error["loc"])
                variable = ENV_PREFIX + where.split(".")[0].upper() if where else "configuration"
                problems.append(f"{variable}: {error['msg']}")
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
