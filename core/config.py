"""The config model: listeners, model providers, aliases, limits; sections and filter config come from plugins."""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

log = logging.getLogger("outerloop.config")

# Providers whose API shape and address are known; any other prefix is an OpenAI-compatible server and
# needs a base_url (vLLM, Ollama, LM Studio, TGI...).
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


#: The validation-context key under which the loader passes the config file's directory.
CONFIG_DIR = "config_dir"


def relative_to_config(value: str, info: ValidationInfo) -> str:
    """`value` as a path relative to the config file's directory, so a config means the same from any cwd."""
    path = Path(value).expanduser()
    base = info.context.get(CONFIG_DIR) if isinstance(info.context, dict) else None
    if base is None or path.is_absolute():
        return str(path)
    return str(Path(base) / path)


def _readable_file(value: str) -> str:
    try:
        with open(value, "rb"):
            pass
    except FileNotFoundError:
        raise PydanticCustomError("file_error", "file {path} not found", {"path": value}) from None
    except IsADirectoryError:
        raise PydanticCustomError("file_error", "{path} is a directory, expected a file", {"path": value}) from None
    except OSError as exc:
        raise PydanticCustomError("file_error", "cannot read file {path}: {reason}",
                                  {"path": value, "reason": exc.strerror or str(exc)}) from None
    return value


#: A path in a config model (core or plugin): a relative one is resolved against the config file's directory.
ConfigPath = Annotated[str, AfterValidator(relative_to_config)]
#: A ConfigPath that must name a file outerloop can read when the config is loaded.
ReadableFile = Annotated[ConfigPath, AfterValidator(_readable_file)]


class TLS(Section):
    cert: ReadableFile = Field(description="PEM certificate chain (`outerloop certs DIR` makes a self-signed one)")
    key: ReadableFile = Field(description="PEM private key, unencrypted")

    @model_validator(mode="after")
    def _pair_loads(self) -> TLS:
        # Caught here, so `validate` finds it and `serve` never dies with an ssl traceback; an encrypted key
        # fails too (password b"") rather than prompting on the terminal.
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.cert, self.key, password=b"")
        except ssl.SSLError:
            raise PydanticCustomError(
                "file_error", "cannot use {cert} with {key}: expected a PEM certificate and its unencrypted PEM key",
                {"cert": self.cert, "key": self.key},
            ) from None
        return self


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


class Timeouts(Section):
    """Deadlines for calls to one provider entry, in seconds."""

    connect: float = Field(default=5.0, gt=0, description="to open a connection (or get one from the pool)")
    first_byte: float = Field(default=120.0, gt=0,
                              description="from sending the request to the response headers")
    idle: float = Field(default=120.0, gt=0, description="between two chunks of the response body")
    total: float = Field(default=600.0, gt=0,
                         description="the whole request, the last byte included, across every attempt")

    def transport(self) -> dict[str, float]:
        """httpx's `timeout` request extension (connect, pool, read, write), plus `idle` for the body."""
        return {"connect": self.connect, "pool": self.connect, "read": self.first_byte, "write": self.first_byte,
                "idle": self.idle}


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
    timeouts: Timeouts = Timeouts()
    max_connections: int = Field(default=512, gt=0)
    # Read by the routing plugin.
    routing_preferences: list[InlineRoutingPreference] = []

    @model_validator(mode="before")
    @classmethod
    def _deprecated_timeouts(cls, data: Any) -> Any:
        """`connect_timeout` and `read_timeout` (before `timeouts:`) still work, with a warning."""
        if not isinstance(data, dict) or not {"connect_timeout", "read_timeout"} & data.keys():
            return data
        data = dict(data)
        timeouts = dict(data.get("timeouts") or {})
        if "connect_timeout" in data:
            timeouts.setdefault("connect", data.pop("connect_timeout"))
        if "read_timeout" in data:
            read = data.pop("read_timeout")
            timeouts.setdefault("first_byte", read)
            timeouts.setdefault("idle", read)
        log.warning("model %s: connect_timeout and read_timeout are deprecated; use timeouts: {connect, "
                    "first_byte, idle, total}", data.get("model"))
        data["timeouts"] = timeouts
        return data

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


class AccessLog(Section):
    """Where the access log goes: one JSON object per line, apart from the diagnostic log on stderr."""

    path: str = Field(default="stdout", description="`stdout`, or a file to append to (relative to the config file)")

    @field_validator("path")
    @classmethod
    def _writable(cls, value: str, info: ValidationInfo) -> str:
        if value == "stdout":
            return value
        path = Path(relative_to_config(value, info))
        if path.is_dir():
            raise ValueError(f"{path} is a directory, expected a file")
        if not path.parent.is_dir():
            raise ValueError(f"directory {path.parent} not found")
        if not os.access(path if path.exists() else path.parent, os.W_OK):
            raise ValueError(f"cannot write to {path}")
        return str(path)


def _access_log_shorthand(value: Any) -> Any:
    # `true` and `stdout` mean stdout; `false` (the default) means off; a mapping says where.
    if value is True or value == "stdout":
        return {}
    if value is False:
        return None
    if isinstance(value, str):
        raise ValueError("expected true, false, stdout or {path: FILE}")
    return value


class Server(Section):
    workers: int = Field(default=1, ge=1)
    drain_seconds: float = Field(default=10.0, ge=0, description="time open streams get to finish on shutdown")
    keep_alive_seconds: float = Field(
        default=65.0, gt=0, description="how long an idle client connection is kept open for its next request "
        "(above the 60 s idle timeout of common load balancers, so they close first)")
    header_timeout_seconds: float = Field(
        default=10.0, gt=0, description="time a request line and its headers may take to arrive; slower "
        "clients are disconnected")
    body_timeout_seconds: float = Field(
        default=60.0, gt=0, description="time a request body may take to arrive whole after its headers; "
        "slower clients get a 408 request.body_timeout")
    access_log: Annotated[
        AccessLog | None,
        BeforeValidator(_access_log_shorthand, json_schema_input_type=bool | Literal["stdout"] | AccessLog | None),
    ] = Field(default=None, description="one JSON object per request: true or stdout, {path: FILE}, or false (off)")
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

    def section(self, name: str) -> Any:
        return self.sections.get(name)
