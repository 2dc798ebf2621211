"""Rate caps: requests (GCRA), tokens (token bucket) and concurrency per principal, model, route, IP or header."""

from __future__ import annotations

from core.hookspecs import RegisterFilter, hookimpl
from filters.rate_cap.config import RateCapConfig
from filters.rate_cap.filter import RateCapFilter


@hookimpl
def outerloop_register_filters(register: RegisterFilter) -> None:
    register("rate_cap", RateCapFilter.from_config, RateCapConfig)
