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

from core.catalogue import AZURE_API_VERSION, AZURE_OPENAI, PROVIDERS, known

log = logging.getLogger("outerloop.config")


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


class ListenerAgent(Section):
    """One agent an agent listener may select: which (an id of the top-level `agents:`), when, and its filters."""

    id: str = Field(min_length=1)
    description: str = Field(min_length=1, description="what the agent does, as the router reads it")
    default: bool = Field(default=False, description="where no match, a router error or the router's budget "
                          "exceeded go (a listener's only agent is its default)")
    filters: list[FilterSpec] = Field(default=[], description="run around this agent's calls only, like a "
                                      "listener's filters")


class Listener(Section):
    name: str = Field(min_length=1)
    #: `agent`: the listener selects agents (served by the agents plugin) instead of serving models.
    type: Literal["model", "agent"] = "model"
    address: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    tls: TLS | None = None
    http2: bool = True
    filters: list[FilterSpec] = []
    # An agent listener's router (the `routing:` section's keys, validated by the routing plugin's model) and
    # the agents it selects among.
    router: Any = None
    agents: list[ListenerAgent] = []


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


class Backoff(Section):
    """The wait before a retry on the same model: full jitter, ``random(0, min(max_ms, base_ms * 2**n))``."""

    base_ms: float = Field(default=100.0, ge=0, description="the wait before the first retry, before jitter")
    max_ms: float = Field(default=5000.0, ge=0, description="the cap of the growing wait")
    jitter: bool = Field(default=True, description="full jitter (a random wait up to the computed one); false "
                         "waits the computed time")


class RetryPolicy(Section):
    """Retries and fallbacks of one model (or the top-level default). Without one: one attempt per model."""

    max_attempts: int = Field(default=1, ge=1, description="attempts on this model (its deployments), the "
                              "first included, before its fallbacks are tried")
    on_status: list[Annotated[int, Field(ge=400, le=599)]] = Field(default=[429, 500, 502, 503, 504, 529],
                                 description="upstream statuses that are retried, then failed over")
    on_connect_error: bool = Field(default=True, description="retry when the upstream could not be reached "
                                   "(a connect failure always moves to another healthy deployment)")
    backoff: Backoff = Field(default=Backoff(), description="the wait between retries on the same model")
    respect_retry_after: bool = Field(default=True, description="wait what a 429/503's Retry-After says "
                                      "(seconds or an HTTP date) when it fits under timeouts.total; when it "
                                      "does not, the next fallback is tried at once")
    fallback_models: list[str] = Field(default=[], description="models (provider/id, id or alias) tried in "
                                       "order when this one fails; one the caller's principal may not use "
                                       "is skipped")


class OutlierDetection(Section):
    """Envoy's consecutive-failure outlier detection, per deployment, per worker process."""

    consecutive_failures: int = Field(default=5, ge=1, description="connect errors or 5xx in a row that "
                                      "eject a deployment")
    base_ejection_seconds: float = Field(default=30.0, gt=0, description="the first ejection's length; the "
                                         "n-th lasts n times as long")
    max_ejection_seconds: float = Field(default=300.0, gt=0, description="the cap of an ejection's length")


LoadBalancing = Literal["weighted_round_robin", "least_outstanding"]


class ModelProvider(Section):
    model: str = Field(description="provider/id, e.g. openai/gpt-4o-mini")
    access_key: SecretStr | None = None
    base_url: str | None = None
    default: bool = False
    passthrough_auth: bool = False
    headers: dict[str, str] = {}
    interface: Literal["openai", "anthropic", "responses", "demo"] | None = Field(
        default=None, description="API shape; inferred from the provider prefix when omitted. `responses`: the "
        "upstream serves the OpenAI Responses API (OpenAI itself does): Responses requests pass through natively"
    )
    resource: str | None = Field(default=None, description="azure_openai: the Azure resource name "
                                 "(https://RESOURCE.openai.azure.com)")
    deployment: str | None = Field(default=None, description="azure_openai: the deployment's name")
    api_version: str | None = Field(default=None, description=f"azure_openai: the api-version query "
                                    f"parameter, {AZURE_API_VERSION} when omitted")
    timeouts: Timeouts = Timeouts()
    max_connections: int = Field(default=512, gt=0)
    weight: int = Field(default=1, ge=1, le=1000, description="this deployment's share among the entries "
                        "with the same model (weighted_round_robin)")
    load_balancing: LoadBalancing | None = Field(
        default=None, description="how requests are spread over the deployments of this model (entries with "
        "the same model): weighted_round_robin or least_outstanding; the top-level load_balancing when omitted")
    retry_policy: RetryPolicy | None = Field(
        default=None, description="retries and fallbacks of this model; the top-level retry_policy when "
        "omitted. Deployments of one model must agree")
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
        return known(self.provider).api

    @property
    def auth(self) -> str:
        """How the key is sent (core.catalogue.AuthStyle)."""
        return known(self.provider).auth

    @property
    def url(self) -> str:
        """The base URL the adapter's path is appended to; Azure's `api-version` query is kept after the path."""
        entry = known(self.provider)
        if entry is not AZURE_OPENAI:
            return self.base_url or entry.base_url or ""
        base = self.base_url or AZURE_OPENAI.base_url or ""
        if self.base_url is None:
            if not (self.resource and self.deployment):
                return ""
            base = base.format(resource=self.resource, deployment=self.deployment)
        return f"{base}?api-version={self.api_version or AZURE_API_VERSION}"

    def catalogue_problems(self) -> list[tuple[str, str]]:
        """(field, problem) for what the catalogue needs of this entry and it lacks: the loader names them."""
        entry = known(self.provider)
        problems = []
        if self.model_id == "*" and self.default:
            problems.append(("default", f"{self.model} serves the model id a client names, so it cannot "
                                        "serve requests that name none"))
        azure_fields = [name for name in ("resource", "deployment", "api_version") if getattr(self, name)]
        if entry is AZURE_OPENAI:
            if self.base_url is None:
                problems += [(name, "required for provider 'azure_openai' (or give base_url)")
                             for name in ("resource", "deployment") if not getattr(self, name)]
        elif azure_fields:
            problems += [(name, "only for provider 'azure_openai'") for name in azure_fields]
        elif self.base_url is None and entry.base_url is None and self.api != "demo":
            if self.provider in PROVIDERS:
                problems.append(("base_url", f"required for provider {self.provider!r} (an OpenAI-compatible "
                                             "server's address, e.g. http://127.0.0.1:8000/v1)"))
            else:
                names = ", ".join(name for name in PROVIDERS if name != "demo")
                problems.append(("base_url", f"required for provider {self.provider!r}, which is not a known "
                                             f"provider ({names}); give the base_url of an OpenAI- or "
                                             "Anthropic-compatible server (and interface: anthropic for the latter)"))
        return problems


class Agent(Section):
    """Where an agent lives (top-level `agents:`): an HTTP server answering OpenAI chat completions."""

    id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="the name agent listeners select it by")
    url: str = Field(description="its base URL: it serves POST {url}/v1/chat/completions")
    timeouts: Timeouts = Timeouts()
    retry_policy: RetryPolicy | None = Field(default=None, description="retries of this agent's calls; the "
                                             "top-level retry_policy when omitted")
    headers: dict[str, str] = Field(default={}, description="added to every request to the agent")
    max_connections: int = Field(default=512, gt=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value.rstrip("/")

    def provider(self) -> ModelProvider:
        """The agent as an OpenAI-shaped model entry `agent/<id>`: dispatch calls it as it calls models."""
        return ModelProvider(model=f"{AGENT_PROVIDER}/{self.id}", base_url=f"{self.url}/v1", interface="openai",
                             headers=self.headers, timeouts=self.timeouts, retry_policy=self.retry_policy,
                             max_connections=self.max_connections)


#: The provider prefix of agents' model entries; reserved, so no model is served under it.
AGENT_PROVIDER = "agent"


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


#: How long OpenAI keeps a stored response: 30 days.
THIRTY_DAYS = 30 * 24 * 3600.0

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class ResponsesConfig(Section):
    """Where `store: true` Responses API responses live (`previous_response_id`, GET /v1/responses/{id})."""

    store: str = Field(
        default="memory",
        description="where `store: true` responses live: `memory` (this process only) or a Redis URL "
                    "(`redis://host:port/db`, `rediss://...`, `unix:///path.sock`) shared by every replica",
    )
    ttl_seconds: float = Field(default=THIRTY_DAYS, gt=0,
                               description="a stored response expires this long after it was stored "
                                           "(OpenAI keeps 30 days)")
    max_entries: int = Field(default=10000, ge=1,
                             description="memory store: most responses (conversation turns) kept; the least "
                                         "recently used go first")
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=1,
                           description="memory store: most JSON kept, all responses together (each holds its "
                                       "own turn); the least recently used go first")
    redis_timeout_seconds: float = Field(default=0.5, gt=0,
                                         description="Redis store: connect and per-command timeout, no retries")
    key_prefix: str = Field(default="outerloop:responses:",
                            description="Redis store: key prefix, one key per response (`{prefix}{id}`)")

    @field_validator("store")
    @classmethod
    def _memory_or_redis(cls, value: str) -> str:
        if value == "memory" or value.startswith(_REDIS_SCHEMES):
            return value
        # The value is not echoed: a Redis URL may carry a password.
        raise ValueError("expected `memory` or a Redis URL starting with redis://, rediss:// or unix://")


class Config(Section):
    """The whole file. Plugins add top-level sections (routing, tracing...) via outerloop_register_config."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    version: str = "v0.1"
    listeners: list[Listener] = Field(min_length=1)
    model_providers: list[ModelProvider] = []
    agents: list[Agent] = Field(default=[], description="agents that agent listeners select among")
    model_aliases: dict[str, str] = {}
    retry_policy: RetryPolicy = Field(default=RetryPolicy(), description="the default for models without "
                                      "their own: one attempt, no fallbacks (as Envoy)")
    load_balancing: LoadBalancing = Field(default="weighted_round_robin",
                                          description="the default for models without their own")
    outlier_detection: OutlierDetection = Field(default=OutlierDetection(),
                                                description="when a failing deployment is ejected, and for how long")
    limits: Limits = Limits()
    server: Server = Server()
    responses: ResponsesConfig = ResponsesConfig()
    # Plugin sections, validated by their own models; absent sections get the model's defaults.
    sections: dict[str, Any] = {}
    # Where the config came from, so late errors can name it.
    source: str = "<config>"

    def section(self, name: str) -> Any:
        return self.sections.get(name)
