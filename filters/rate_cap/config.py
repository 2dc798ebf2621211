"""rate_cap's config: the caps, their windows and keys, and the backend they are counted in."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from filters.rate_cap.memory import Kind

_UNITS = {"s": 1.0, "second": 1.0, "m": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0, "d": 86400.0, "day": 86400.0}
_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)?\s*(s|second|m|minute|h|hour|d|day)s?\s*$")
_KEY_PART = re.compile(r"^(principal|model|route|client_ip|global|header:[a-z0-9_-]+)$")


# What editors see (`outerloop schema`): the shorthands the validators below accept.
_WINDOW_SCHEMA = WithJsonSchema({"anyOf": [
    {"type": "number", "exclusiveMinimum": 0},
    {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?)?\s*(s|second|m|minute|h|hour|d|day)s?\s*$"},
]})
_KEY_SCHEMA = WithJsonSchema({"anyOf": [
    {"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1},
]})


class Cap(BaseModel):
    """One cap: exactly one of `requests`, `tokens` or `concurrent`, counted per key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, description="stable name (appears in errors and backend keys)")
    requests: int | None = Field(default=None, gt=0, description="requests per window")
    tokens: int | None = Field(default=None, gt=0, description="input + output tokens per window")
    concurrent: int | None = Field(default=None, gt=0, description="requests in flight at once")
    window: Annotated[float, _WINDOW_SCHEMA] = Field(
        default=60.0, gt=0, description="seconds, or a duration such as 10s, 1m, 1h, 1d")
    burst: int | None = Field(default=None, gt=0, description="requests allowed at once (default: all of `requests`)")
    key: Annotated[list[str], _KEY_SCHEMA] = Field(default=["principal"], min_length=1,
                           description="principal, model, route, client_ip, global or header:<name>")

    @field_validator("window", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = _WINDOW.match(value.lower())
            if match is None:
                raise ValueError(f"expected seconds or a duration such as 10s, 1m, 1h, 1d; got {value!r}")
            return float(match.group(1) or 1) * _UNITS[match.group(2)]
        return value

    @field_validator("key", mode="before")
    @classmethod
    def _parts(cls, value: Any) -> Any:
        parts = [value] if isinstance(value, str) else value
        if isinstance(parts, list):
            parts = [p.lower() if isinstance(p, str) else p for p in parts]
            for part in parts:
                if not isinstance(part, str) or not _KEY_PART.match(part):
                    raise ValueError(f"unknown key part {part!r} (expected principal, model, route, client_ip, "
                                     "global or header:<name>)")
        return parts

    @model_validator(mode="after")
    def _one_kind(self) -> Cap:
        if sum(v is not None for v in (self.requests, self.tokens, self.concurrent)) != 1:
            raise ValueError("give exactly one of requests, tokens or concurrent")
        if self.burst is not None and self.requests is None:
            raise ValueError("burst applies to requests caps only")
        return self

    @property
    def kind(self) -> Kind:
        return "requests" if self.requests is not None else "tokens" if self.tokens is not None else "concurrent"

    @property
    def limit(self) -> int:
        return self.requests or self.tokens or self.concurrent or 0

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        per = "" if self.kind == "concurrent" else f"-per-{self.window:g}s"
        return f"{self.kind}{per}-by-{'+'.join(self.key)}"


class RedisSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="redis://[user:password@]host:port/db, rediss://... or unix://...")
    timeout_seconds: float = Field(default=0.25, gt=0, le=5, description="socket connect and read timeout")
    max_connections: int = Field(default=64, gt=0)
    key_prefix: str = "outerloop:rate_cap"
    retry_after_failure_seconds: float = Field(default=1.0, ge=0, description="skip Redis this long after a failure")

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected a redis://, rediss:// or unix:// URL")
        return value


class RateCapConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    caps: list[Cap] = Field(min_length=1)
    backend: Literal["memory", "redis"] = "memory"
    redis: RedisSettings | None = None
    on_backend_error: Literal["fail_open", "fail_closed"] = "fail_open"
    warn_interval_seconds: float = Field(default=30.0, gt=0, description="at most one backend warning per interval")
    concurrency_lease_seconds: float = Field(default=900.0, gt=0,
                                             description="Redis only: a slot held longer (crashed proxy) is freed")

    @model_validator(mode="after")
    def _consistent(self) -> RateCapConfig:
        if self.backend == "redis" and self.redis is None:
            raise ValueError("backend redis needs a redis section with a url")
        labels = [cap.label for cap in self.caps]
        for i, label in enumerate(labels):
            if labels.index(label) != i:
                raise ValueError(f"caps[{i}]: two caps are named {label!r}; give them distinct names")
        return self
