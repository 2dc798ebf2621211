"""The config model: listeners, model providers, aliases, limits; sections and filter config come from plugins."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

# Providers whose API shape and address are known; any other prefix is an OpenAI-compatible server and
# needs a base_url (vLLM, Ollama, LM Studio, TGI...).
T = TypeVar("T")

KNOWN_PROVIDERS: dict[str, tuple[str, str | None]] = {
    "openai": ("openai", "https://api.openai.com/v1"),
    "anthropic": ("anthropic", "https://api.anthropic.com/v1"),
    "demo": ("demo", None),
    "groq": ("openai", "https://api.groq.com/openai/v1"),
    "mistral": ("openai", "https://api.mistral.ai/v1"),
    "deepseek": ("openai", "https://api.deepseek.com/v1"),
    "together": ("openai", "https://api.together.xyz/v1"),
    "openrouter": ("openai", "https://openrouter.ai/api/v1"),
    "ollama": ("openai", "http://127.0.0.1:11434/v1"),
    "vllm": ("openai", None),
}


class Section(BaseModel):
    """Base of every config model: unknown keys are mistakes, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TLS(Section):
    cert: str
    key: str


class FilterSpec(Section):
    """One entry of a listener's `filters:` list. `config` is validated by the filter's own model."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str = Field(min_length=1)
    config: Any = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `- auth` is shorthand for `- name: auth`.
        return {"name": value} if isinstance(value, str) else value


class Listener(Section):
    name: str = Field(min_length=1)
    address: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    tls: TLS | None = None
    http2: bool = True
    filters: list[FilterSpec] = []


class InlineRoutingPreference(Section):
    """The older inline routing form (Plano < v0.4): a route served by the provider it is written under."""

    name: str = Field(min_length=1)
    description: str = Field(min_length=1)


class ModelProvider(Section):
    model: str = Field(description="provider/id, e.g. openai/gpt-4o-mini")
    access_key: SecretStr | None = None
    base_url: str | None = None
    default: bool = False
    passthrough_auth: bool = False
    headers: dict[str, str] = {}
    interface: Literal["openai", "anthropic", "demo"] | None = Field(
        default=None, description="API shape; inferred from the provider prefix when omitted"
    )
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=120.0, gt=0)
    max_connections: int = Field(default=512, gt=0)
    # Read by the routing plugin.
    routing_preferences: list[InlineRoutingPreference] = []

    @field_validator("model")
    @classmethod
    def _provider_slash_id(cls, value: str) -> str:
        provider, _, model_id = value.partition("/")
        if not provider or not model_id:
            raise ValueError("expected provider/id such as openai/gpt-4o-mini")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @property
    def provider(self) -> str:
        return self.model.partition("/")[0]

    @property
    def model_id(self) -> str:
        return self.model.partition("/")[2]

    @property
    def api(self) -> str:
        if self.interface:
            return self.interface
        return KNOWN_PROVIDERS.get(self.provider, ("openai", None))[0]

    @property
    def url(self) -> str:
        return self.base_url or KNOWN_PROVIDERS.get(self.provider, ("openai", None))[1] or ""


class Limits(Section):
    max_request_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    max_buffered_response_bytes: int = Field(
        default=8 * 1024 * 1024, gt=0, description="cap for filters that must see a whole response"
    )


class Server(Section):
    workers: int = Field(default=1, ge=1)
    drain_seconds: float = Field(default=10.0, ge=0, description="time open streams get to finish on shutdown")
    access_log: bool = Field(default=False, description="one JSON line per request on the outerloop.access logger")
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class Config(Section):
    """The whole file. Plugins add top-level sections (routing, tracing...) via outerloop_register_config."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    version: str = "v0.1"
    listeners: list[Listener] = Field(min_length=1)
    model_providers: list[ModelProvider] = []
    model_aliases: dict[str, str] = {}
    limits: Limits = Limits()
    server: Server = Server()
    # Plugin sections, validated by their own models; absent sections get the model's defaults.
    sections: dict[str, Any] = {}
    # Where the config came from, so late errors can name it.
    source: str = "<config>"
    # What plugins build from this config and share between their hooks and filters (a router model,
    # a tracer provider, metric counters): made once per loaded config, gone with it.
    _state: dict[str, Any] = PrivateAttr(default_factory=dict)

    def section(self, name: str) -> Any:
        return self.sections.get(name)

    def state(self, name: str, build: Callable[[], T]) -> T:
        """The object a plugin keeps for this config under `name`, built on first use."""
        if name not in self._state:
            self._state[name] = build()
        value: T = self._state[name]
        return value

    def drop_state(self, name: str) -> Any:
        """Forget `name` (at shutdown) and return what was kept, or None."""
        return self._state.pop(name, None)
