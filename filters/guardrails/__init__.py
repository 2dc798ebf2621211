"""Guardrails: PII and prompt-injection checks on requests, redaction of responses across stream chunks."""

from __future__ import annotations

from core.hookspecs import RegisterFilter, hookimpl
from filters.guardrails.filter import GuardrailsConfig, GuardrailsFilter


@hookimpl
def outerloop_register_filters(register: RegisterFilter) -> None:
    register("guardrails", GuardrailsFilter.from_config, GuardrailsConfig)
