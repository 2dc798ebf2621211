"""Sessions: a session id per conversation, and pinning of agentic loops to one model."""

from __future__ import annotations

from core.hookspecs import RegisterFilter, hookimpl
from filters.session.filter import SessionConfig, SessionFilter


@hookimpl
def outerloop_register_filters(register: RegisterFilter) -> None:
    register("session", SessionFilter.from_config, SessionConfig)
