"""Where a request can go: one upstream pool and the model entries it serves."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import httpx

from core.config import ModelProvider


class Upstream:
    """One pooled client for one (API shape, base URL), shared by every model served there."""

    __slots__ = ("api", "base_url", "client", "transport", "_urls")

    def __init__(self, api: str, base_url: str, client: httpx.AsyncClient,
                 transport: httpx.AsyncBaseTransport) -> None:
        self.api = api
        self.base_url = base_url
        #: The pool's httpx client, for everything off the hot path (model lists, health checks).
        self.client = client
        #: The same pool's transport. Proxied calls go to it directly: the client layer (auth flows,
        #: redirects, cookies, event hooks, per-request logging) has nothing to do for a proxy and
        #: measured ~0.1 ms per request (bench/overhead.py).
        self.transport = transport
        self._urls: dict[str, httpx.URL] = {}

    def url(self, path: str) -> httpx.URL:
        """The parsed URL of an endpoint of this upstream, parsed once."""
        url = self._urls.get(path)
        if url is None:
            # A query in the base URL (Azure's api-version) stays after the path.
            base, _, query = self.base_url.partition("?")
            url = self._urls[path] = httpx.URL(base + path + ("?" + query if query else ""))
        return url


@dataclass(frozen=True, slots=True)
class Target:
    """A model a request can be sent to: its config entry and the pool that reaches it."""

    provider: ModelProvider
    upstream: Upstream
    #: The client's model id, for an entry that serves any id of its provider (`model: openai/*`).
    served_id: str | None = None
    #: The provider's timeouts as the transport reads them (the `timeout` request extension), built once.
    timeouts: dict[str, float] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "timeouts", self.provider.timeouts.transport())

    @property
    def model(self) -> str:
        if self.served_id is not None:
            return f"{self.provider.provider}/{self.served_id}"
        return self.provider.model

    @property
    def model_id(self) -> str:
        return self.served_id if self.served_id is not None else self.provider.model_id

    @property
    def entry(self) -> str:
        """The config entry's model (`openai/*` for a wildcard): what deployments and balancers are keyed by."""
        return self.provider.model

    def serving(self, deployment: Target) -> Target:
        """``deployment`` (an entry of this target's model) asked for this target's id: the client's own id
        where a wildcard entry resolved it, else the deployment as it is."""
        if self.served_id is None:
            return deployment
        return replace(deployment, served_id=self.served_id)
