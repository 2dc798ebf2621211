"""The guardrails filter: prompt-injection, PII and deny-list checks on requests, redaction and blocking of output."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.config import ConfigPath
from core.filter import Filter, FilterContext, LocalReply
from core.flow import Flow
from filters.guardrails.classifier import TextClassifier
from filters.guardrails.rules import (
    INJECTION_RULES, PII_ENTITIES, PII_RULES, SPACED_PII_CHARS, Checks, CombinedDetector, Detector, Finding,
    deny_rules, redact,
)
from filters.guardrails.stream import HeldText, HeldTooLong, Outcome, SseRedactor, redact_json

log = logging.getLogger("outerloop.guardrails")

Action = Literal["block", "redact", "flag"]
Switch = Literal["block", "redact", "flag", "off"]
PiiEntity = Literal[
    "private_key", "jwt", "aws_access_key", "github_token", "api_key", "slack_token", "email", "iban", "ssn",
    "credit_card", "phone", "ipv4", "ipv6",
]
INJECTION_RULE_NAMES = tuple(rule.name for rule in INJECTION_RULES)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PiiCheck(_Model):
    action: Switch = "redact"
    entities: list[PiiEntity] = Field(default_factory=lambda: list(PII_ENTITIES))  # type: ignore[arg-type]
    #: Per-entity actions overriding ``action`` (``{api_key: block}``).
    entity_actions: dict[PiiEntity, Action] = {}


class InjectionCheck(_Model):
    action: Switch = "block"
    disabled_rules: list[str] = []

    @field_validator("disabled_rules")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(INJECTION_RULE_NAMES))
        if unknown:
            raise ValueError(f"unknown rules {unknown}; rules are {list(INJECTION_RULE_NAMES)}")
        return value


class DenyList(_Model):
    action: Switch = "block"
    #: Whole words or phrases, matched after normalisation (case, width, accents, zero-width, homoglyphs).
    terms: list[str] = []
    #: Regular expressions over the normalised (casefolded) text.
    patterns: list[str] = []

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        import re

        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from None
        return value


class ClassifierCheck(_Model):
    path: ConfigPath = Field(description="ONNX sequence-classification model")
    tokenizer: ConfigPath | None = Field(default=None, description="tokenizer.json; default: beside the model")
    threshold: float = Field(default=0.5, ge=0, le=1)
    label_index: int = Field(default=1, ge=0, description="the logit column meaning 'injection'")
    max_length: int = Field(default=512, gt=0)
    threads: int = Field(default=1, ge=1)
    action: Literal["block", "flag"] = "block"

    @model_validator(mode="after")
    def _files_exist(self) -> ClassifierCheck:
        for path in (self.path, self.tokenizer_path):
            if not Path(path).is_file():
                raise ValueError(f"file not found: {path}")
        return self

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer or str(Path(self.path).with_name("tokenizer.json"))


class OutputCheck(_Model):
    pii: Switch = "off"
    pii_entities: list[PiiEntity] = Field(default_factory=lambda: list(PII_ENTITIES))  # type: ignore[arg-type]
    #: The top-level deny list, applied to output too.
    deny: Switch = "off"
    #: Hold the whole streamed output until it passed the checks (nothing reaches the client before).
    hold_all: bool = False
    #: Cap on output held back at once; past it the response ends with ``guardrails.output_too_large``.
    max_held_bytes: int = Field(default=256 * 1024, gt=0)
    #: Longest match of a deny pattern, so the stream holds back enough text to catch it across chunks.
    max_pattern_chars: int = Field(default=256, gt=0)


class GuardrailsConfig(_Model):
    #: Message roles whose text the input checks read (``system``, ``tool``...).
    roles: list[str] = ["user"]
    prompt_injection: InjectionCheck = InjectionCheck()
    pii: PiiCheck = PiiCheck()
    deny: DenyList = DenyList()
    classifier: ClassifierCheck | None = None
    output: OutputCheck = OutputCheck()


def _pii_checks(entities: list[PiiEntity], action: Switch, overrides: dict[PiiEntity, Action]) -> tuple[
        str, Detector, dict[str, str]]:
    chosen = set(entities)
    rules = [r for r in PII_RULES if r.name in chosen and (action != "off" or r.name in overrides)]
    by_name: dict[str, str] = {str(name): act for name, act in overrides.items()}
    return "pii", Detector(rules), {r.name: by_name.get(r.name, action) for r in rules}


class GuardrailsFilter(Filter):
    """Input checks only: the response path is left alone (no body inspection, no cost)."""

    def __init__(self, settings: GuardrailsConfig, context: FilterContext) -> None:
        self.settings = settings
        self.roles = frozenset(settings.roles)
        entries: list[tuple[str, Detector | CombinedDetector, dict[str, str]]] = [
            _pii_checks(settings.pii.entities, settings.pii.action, settings.pii.entity_actions)]
        injection = settings.prompt_injection
        if injection.action != "off":
            rules = [r for r in INJECTION_RULES if r.name not in injection.disabled_rules]
            entries.append(("prompt_injection", Detector(rules), {r.name: injection.action for r in rules}))
        self.deny_rules = deny_rules(settings.deny.terms, settings.deny.patterns)
        if settings.deny.action != "off":
            entries.append(("denied_term", CombinedDetector(self.deny_rules),
                            {r.name: settings.deny.action for r in self.deny_rules}))
        self.checks = Checks(entries)
        self.classifier: TextClassifier | None = None
        if settings.classifier is not None:
            c = settings.classifier
            self.classifier = TextClassifier(c.path, c.tokenizer_path, c.label_index, c.max_length, c.threads)

    @classmethod
    def from_config(cls, settings: GuardrailsConfig, context: FilterContext) -> GuardrailsFilter:
        out = settings.output
        if out.pii != "off" or out.deny != "off":
            return GuardrailsOutputFilter(settings, context)
        return cls(settings, context)

    async def start(self) -> None:
        if self.classifier is not None:
            await self.classifier.start()

    async def close(self) -> None:
        if self.classifier is not None:
            await self.classifier.close()

    async def on_request(self, flow: Flow) -> LocalReply | None:
        slots = _text_slots(flow.json, self.roles, flow.api)
        changed = False
        for where, holder, key in slots:
            text = holder[key]
            findings = self.checks.find(text) if self.checks else []
            if not findings:
                continue
            _annotate(flow, "request", findings, where)
            for finding in findings:
                if finding.action == "block":
                    return LocalReply(400, f"request blocked by guardrails: {_label(finding)} matched in {where}",
                                      f"guardrails.{finding.check}")
            spans = [(f.start, f.end, f.placeholder) for f in findings if f.action == "redact"]
            if spans:
                holder[key] = redact(text, spans)
                changed = True
        if changed:
            flow.json_changed()
        if self.classifier is not None and slots:
            return await self._classify(flow, slots[-1])
        return None

    async def _classify(self, flow: Flow, slot: tuple[str, dict[str, Any], str]) -> LocalReply | None:
        assert self.classifier is not None and self.settings.classifier is not None
        where, holder, key = slot
        try:
            score = await self.classifier.score(holder[key])
        except Exception as exc:
            # A broken model must not take the proxy down with it; the rule set still ran.
            log.error("guardrails classifier failed (%s); request %s passes unclassified",
                      type(exc).__name__, flow.request_id)
            flow.annotations.setdefault("guardrails", []).append({"phase": "request", "check": "classifier",
                                                                  "error": type(exc).__name__})
            return None
        check = self.settings.classifier
        if score < check.threshold:
            return None
        flow.annotations.setdefault("guardrails", []).append({
            "phase": "request", "check": "classifier", "rule": "classifier", "action": check.action,
            "score": round(score, 4), "where": where})
        if check.action == "block":
            return LocalReply(400, f"request blocked by guardrails: the prompt-injection classifier scored "
                                   f"{where} at {score:.2f} (threshold {check.threshold})", "guardrails.classifier")
        return None


class GuardrailsOutputFilter(GuardrailsFilter):
    """Input checks plus output checks: streams are redacted across chunk boundaries, JSON bodies whole."""

    def __init__(self, settings: GuardrailsConfig, context: FilterContext) -> None:
        super().__init__(settings, context)
        out = settings.output
        entries: list[tuple[str, Detector | CombinedDetector, dict[str, str]]] = [
            _pii_checks(out.pii_entities, out.pii, {})]
        if out.deny != "off":
            entries.append(("denied_term", CombinedDetector(self.deny_rules),
                            {r.name: out.deny for r in self.deny_rules}))
        self.output_checks = Checks(entries)
        tail = SPACED_PII_CHARS if out.pii != "off" else 0
        if out.deny != "off":
            tail = max([tail, *(2 * len(t) + 8 for t in settings.deny.terms)])
            if settings.deny.patterns:
                tail = max(tail, out.max_pattern_chars)
        self.tail = tail + 1
        self.json_cap = context.config.limits.max_buffered_response_bytes

    def _held(self) -> HeldText:
        out = self.settings.output
        return HeldText(self.output_checks, self.tail, out.max_held_bytes, out.hold_all)

    async def on_response_chunk(self, flow: Flow, chunk: bytes, end: bool) -> bytes | LocalReply:
        state = flow.state.get(self.name)
        if state is None:
            state = flow.state[self.name] = SseRedactor(flow.api, self._held) if flow.stream else bytearray()
        if isinstance(state, SseRedactor):
            try:
                out, block = state.feed(chunk, end)
            except HeldTooLong:
                return _too_large(flow, self.settings.output.max_held_bytes)
            if state.seen:
                _annotate(flow, "response", state.seen, "output")
                state.seen.clear()
            return out if block is None else _blocked(block)
        state += chunk
        if len(state) > self.json_cap:
            return _too_large(flow, self.json_cap)
        if not end:
            return b""
        try:
            body = json.loads(state)
        except ValueError:
            return bytes(state)
        if not isinstance(body, dict):
            return bytes(state)
        seen: list[Finding] = []

        def scan(text: str, final: bool) -> Outcome:
            outcome = self._held().feed(text, final)
            seen.extend(outcome.seen)
            return outcome

        changed, block = redact_json(flow.api, body, scan)
        if seen:
            _annotate(flow, "response", seen, "output")
        if block is not None:
            return _blocked(block)
        return json.dumps(body, ensure_ascii=False).encode() if changed else bytes(state)


def _label(finding: Finding) -> str:
    kind = {"pii": "PII", "prompt_injection": "prompt-injection rule", "denied_term": "deny-list entry"}
    return f"{kind.get(finding.check, finding.check)} {finding.rule!r}"


def _blocked(finding: Finding) -> LocalReply:
    # 400 rather than 5xx: SDKs retry 5xx, and the same output would be blocked again.
    return LocalReply(400, f"response blocked by guardrails: {_label(finding)} matched in the output",
                      f"guardrails.{finding.check}")


def _too_large(flow: Flow, cap: int) -> LocalReply:
    return LocalReply(502, f"response blocked by guardrails: output held for checking exceeded {cap} bytes",
                      "guardrails.output_too_large")


def _annotate(flow: Flow, phase: str, findings: list[Finding], where: str) -> None:
    notes = flow.annotations.setdefault("guardrails", [])
    for f in findings:
        notes.append({"phase": phase, "check": f.check, "rule": f.rule, "action": f.action, "where": where})


def _text_slots(body: dict[str, Any], roles: frozenset[str], api: str) -> list[tuple[str, dict[str, Any], str]]:
    """(where, holder, key) for every text the input checks read, so redaction can write it back."""
    slots: list[tuple[str, dict[str, Any], str]] = []
    if api == "anthropic" and "system" in roles:
        _content_slots(slots, "system", body, "system")
    for i, message in enumerate(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") in roles:
            _content_slots(slots, f"messages[{i}]", message, "content")
        if api == "anthropic" and "tool" in roles and isinstance(message, dict):
            content = message.get("content")
            for part in content if isinstance(content, list) else []:
                if isinstance(part, dict) and part.get("type") == "tool_result":
                    _content_slots(slots, f"messages[{i}]", part, "content")
    return slots


def _content_slots(slots: list[tuple[str, dict[str, Any], str]], where: str, holder: dict[str, Any],
                   key: str) -> None:
    content = holder.get(key)
    if isinstance(content, str):
        slots.append((where, holder, key))
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                slots.append((where, part, "text"))
