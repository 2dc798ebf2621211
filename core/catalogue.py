"""The provider catalogue: each known provider prefix's API shape, default address and auth header."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Api = Literal["openai", "anthropic", "demo"]
#: How the key is sent: `authorization: Bearer KEY`, Anthropic's `x-api-key: KEY`, Azure's `api-key: KEY`.
AuthStyle = Literal["bearer", "x-api-key", "api-key"]

#: Azure OpenAI's latest GA data-plane inference version, used when an entry gives no `api_version`.
AZURE_API_VERSION = "2024-10-21"


@dataclass(frozen=True, slots=True)
class KnownProvider:
    """What a `provider/` prefix means when the entry does not say otherwise (`base_url`, `interface`)."""

    name: str
    api: Api
    #: The default base URL (the adapter appends `/chat/completions` or `/messages`); None when the entry must
    #: give one (a self-hosted server) or when there is no HTTP server at all (the demo model).
    base_url: str | None
    auth: AuthStyle = "bearer"


AZURE_OPENAI = KnownProvider("azure_openai", "openai",
                             "https://{resource}.openai.azure.com/openai/deployments/{deployment}", "api-key")

PROVIDERS: dict[str, KnownProvider] = {p.name: p for p in (
    KnownProvider("openai", "openai", "https://api.openai.com/v1"),
    KnownProvider("anthropic", "anthropic", "https://api.anthropic.com/v1", "x-api-key"),
    AZURE_OPENAI,
    KnownProvider("gemini", "openai", "https://generativelanguage.googleapis.com/v1beta/openai"),
    KnownProvider("xai", "openai", "https://api.x.ai/v1"),
    KnownProvider("groq", "openai", "https://api.groq.com/openai/v1"),
    KnownProvider("mistral", "openai", "https://api.mistral.ai/v1"),
    KnownProvider("deepseek", "openai", "https://api.deepseek.com/v1"),
    KnownProvider("together", "openai", "https://api.together.xyz/v1"),
    KnownProvider("openrouter", "openai", "https://openrouter.ai/api/v1"),
    KnownProvider("fireworks", "openai", "https://api.fireworks.ai/inference/v1"),
    KnownProvider("cerebras", "openai", "https://api.cerebras.ai/v1"),
    KnownProvider("ollama", "openai", "http://127.0.0.1:11434/v1"),
    KnownProvider("vllm", "openai", None),
    KnownProvider("lmstudio", "openai", "http://127.0.0.1:1234/v1"),
    KnownProvider("demo", "demo", None),
)}

#: Any other prefix: an OpenAI-compatible server (unless `interface:` says otherwise) at its `base_url`.
COMPATIBLE = KnownProvider("", "openai", None)


def known(prefix: str) -> KnownProvider:
    """The catalogue entry of a provider prefix; COMPATIBLE for a prefix the catalogue does not know."""
    return PROVIDERS.get(prefix, COMPATIBLE)
