"""The `routing:` and `routing_preferences:` config sections (Plano v0.4 shape, plus what it lacks)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, SecretStr

from core.config import Config, ConfigPath


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoutingPreference(_Section):
    name: str = Field(min_length=1)
    description: str = Field(min_length=1)
    models: list[str] = Field(default=[], description="provider/id or alias, tried in order")


class RoutingPreferences(RootModel[list[RoutingPreference]]):
    """The top-level list: each route a name, a description the router model reads, and its models."""

    root: list[RoutingPreference] = []


class HttpBackend(_Section):
    url: str = Field(description="an OpenAI-compatible base URL serving the router model, e.g. http://127.0.0.1:8000/v1")
    model: str = "katanemo/Arch-Router-1.5B"
    access_key: SecretStr | None = None
    timeout: float = Field(default=2.0, gt=0)


class EmbeddingBackend(_Section):
    model_path: ConfigPath = Field(description="a directory with an ONNX sentence encoder (model.onnx + tokenizer.json)")
    threshold: float = Field(default=0.1, ge=-1, le=1, description="below this similarity the answer is `other`")


class Routing(_Section):
    """How decisions are made. Without routing_preferences, routing is off whatever is set here."""

    backend: Literal["onnx", "http", "embedding"] = "onnx"
    model_path: ConfigPath | None = Field(default=None, description="the exported router model directory (onnx backend)")
    profile: Literal["arch-router", "plano-orchestrator"] = "arch-router"
    execution_providers: list[str] = Field(
        default=["CUDAExecutionProvider", "CPUExecutionProvider"],
        description="onnxruntime execution providers in order of preference",
    )
    budget_ms: float = Field(default=150.0, gt=0, description="past this, the request goes to the default model")
    route_named_models: bool = Field(
        default=False, description="also route requests that name a model (default: only `auto` or none)"
    )
    max_conversation_tokens: int = Field(default=2048, gt=0)
    http: HttpBackend | None = None
    embedding: EmbeddingBackend | None = None


def preferences(config: Config) -> list[RoutingPreference]:
    """Top-level routing_preferences, then the older inline form on model_providers[]."""
    section = config.section("routing_preferences")
    found = list(section.root) if section is not None else []
    for provider in config.model_providers:
        for inline in provider.routing_preferences:
            found.append(RoutingPreference(name=inline.name, description=inline.description,
                                           models=[provider.model]))
    return found
