"""Built-in agents plugin: serves `type: agent` listeners (selection by description, sequences, per-agent filters).

The config lives in core (top-level `agents:`, a listener's `type`, `router` and `agents`, checked by the
loader; core.upstream makes each agent an `agent/<id>` entry that dispatch calls as it calls a model); this
plugin owns what an agent listener does with a request (plugins.agents.endpoint) and how it selects
(plugins.agents.selection, on the routing plugin's backends).
"""

from __future__ import annotations

from typing import Any

from core.config import Listener
from core.hookspecs import ListenerEndpoint, hookimpl
from plugins.agents.endpoint import AgentListener


@hookimpl
def outerloop_listener_endpoint(runtime: Any, listener: Listener) -> ListenerEndpoint | None:
    if listener.type != "agent":
        return None
    return AgentListener(runtime, listener)
