"""Output checks on streamed and whole responses: redaction across chunk boundaries and blocking under a cap."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.sse import EventSplitter, encode_event, parse_event
from filters.guardrails.rules import Checks, Finding, open_block, redact, to_original, normalize


class HeldTooLong(Exception):
    """Held output passed the configured cap."""


@dataclass
class Outcome:
    """What one step released: the (redacted) text, a blocking finding if one tripped, flagged findings."""

    text: str = ""
    block: Finding | None = None
    seen: list[Finding] = field(default_factory=list)


class HeldText:
    """One stream of text (one choice or content block): releases what can no longer be part of a match.

    A match can only be incomplete near the end of what arrived: within ``tail`` characters for matches that
    may contain whitespace (phone numbers, cards, multi-word terms), in the trailing run of non-whitespace
    for the rest (emails, keys, tokens), and from an open private-key header to its END line.
    """

    __slots__ = ("checks", "tail", "cap", "hold_all", "pending")

    def __init__(self, checks: Checks, tail: int, cap: int, hold_all: bool) -> None:
        self.checks = checks
        self.tail = tail
        self.cap = cap
        self.hold_all = hold_all
        self.pending = ""

    def feed(self, text: str, final: bool) -> Outcome:
        self.pending += text
        pending = self.pending
        if not final and self.hold_all:
            if len(pending) > self.cap // 4 and len(pending.encode()) > self.cap:
                raise HeldTooLong()
            return Outcome()
        norm, index = normalize(pending)
        n = len(norm)
        release = n
        if not final:
            run = n
            while run > 0 and not norm[run - 1].isspace():
                run -= 1
            release = max(0, min(n - self.tail, run))
        outcome = Outcome()
        spans: list[tuple[int, int, str]] = []
        for hit, check, action in self.checks.find_normalized(norm):
            if hit.start >= release:
                break
            end = hit.end
            if open_block(hit, norm):
                if not final:
                    release = hit.start
                    break
                end = n
            start, stop = to_original(index, hit.start, end, len(pending))
            finding = Finding(check, hit.rule.name, action, start, stop, hit.rule.placeholder)
            outcome.seen.append(finding)
            if action == "block" and outcome.block is None:
                outcome.block = finding
            elif action == "redact":
                spans.append((start, stop, hit.rule.placeholder))
            release = max(release, end)
        cut = len(pending) if release >= n else (index[release] if index is not None else release)
        if outcome.block is not None:
            return outcome
        if not final and len(pending) - cut > self.cap // 4 and len(pending[cut:].encode()) > self.cap:
            raise HeldTooLong()
        outcome.text = redact(pending[:cut], spans) if spans else pending[:cut]
        self.pending = pending[cut:]
        return outcome


class SseRedactor:
    """Parses an SSE stream of OpenAI chunks (or Anthropic events), runs each text stream through HeldText
    and re-emits the events with the released text. Events without text pass through as they came."""

    def __init__(self, api: str, make_held: Callable[[], HeldText]) -> None:
        self.api = api
        self.make_held = make_held
        self.events = EventSplitter()
        self.held: dict[int, HeldText] = {}
        self.templates: dict[int, dict[str, Any]] = {}
        self.seen: list[Finding] = []

    def feed(self, chunk: bytes, end: bool) -> tuple[bytes, Finding | None]:
        events = self.events.feed(chunk)
        if end:
            rest = self.events.close()
            if rest:
                events.append(rest)
        out: list[bytes] = []
        for event in events:
            if not event.strip():
                continue
            emitted, block = self._event(event)
            if block is not None:
                return b"", block
            out.extend(emitted)
        if end:
            for key in list(self.held):
                emitted, block = self._flush(key, None)
                if block is not None:
                    return b"", block
                out.extend(emitted)
        return b"".join(out), None

    def _held(self, key: int) -> HeldText:
        held = self.held.get(key)
        if held is None:
            held = self.held[key] = self.make_held()
        return held

    def _run(self, key: int, text: str, final: bool) -> Outcome:
        outcome = self._held(key).feed(text, final)
        self.seen.extend(outcome.seen)
        if final:
            del self.held[key]
        return outcome

    def _event(self, event: bytes) -> tuple[list[bytes], Finding | None]:
        name, data = parse_event(event)
        if data is None:
            return [event], None
        if data == "[DONE]":
            flushed: list[bytes] = []
            for key in list(self.held):
                emitted, block = self._flush(key, None)
                if block is not None:
                    return [], block
                flushed.extend(emitted)
            return [*flushed, event], None
        try:
            obj = json.loads(data)
        except ValueError:
            return [event], None
        if not isinstance(obj, dict):
            return [event], None
        if self.api == "anthropic":
            return self._anthropic(name, obj, event)
        return self._openai(obj, event)

    def _openai(self, obj: dict[str, Any], event: bytes) -> tuple[list[bytes], Finding | None]:
        choices = obj.get("choices")
        if not isinstance(choices, list):
            return [event], None
        changed = False
        empty = True
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            key = choice.get("index", 0) if isinstance(choice.get("index", 0), int) else 0
            delta = choice.get("delta")
            final = choice.get("finish_reason") is not None
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(delta, dict) and (isinstance(content, str) or (final and key in self.held)):
                if isinstance(content, str):
                    self.templates[key] = obj
                outcome = self._run(key, content if isinstance(content, str) else "", final)
                if outcome.block is not None:
                    return [], outcome.block
                if outcome.text or isinstance(content, str):
                    delta["content"] = outcome.text
                    changed = True
            if final or not isinstance(delta, dict) or set(delta) - {"content"} or delta.get("content"):
                empty = False
        if obj.get("usage"):
            empty = False
        if not changed:
            return [event], None
        return ([] if empty else [encode_event(obj)]), None

    def _anthropic(self, name: str | None, obj: dict[str, Any], event: bytes) -> tuple[list[bytes], Finding | None]:
        kind = obj.get("type")
        key = obj.get("index", 0) if isinstance(obj.get("index", 0), int) else 0
        delta = obj.get("delta")
        if kind == "content_block_delta" and isinstance(delta, dict) and delta.get("type") == "text_delta" \
                and isinstance(delta.get("text"), str):
            self.templates[key] = obj
            outcome = self._run(key, delta["text"], False)
            if outcome.block is not None:
                return [], outcome.block
            if not outcome.text:
                return [], None
            delta["text"] = outcome.text
            return [encode_event(obj, name)], None
        flushed: list[bytes] = []
        if kind == "content_block_stop" and key in self.held:
            flushed, block = self._flush(key, name)
            if block is not None:
                return [], block
        elif kind in ("message_delta", "message_stop"):
            for other in list(self.held):
                emitted, block = self._flush(other, name)
                if block is not None:
                    return [], block
                flushed.extend(emitted)
        return [*flushed, event], None

    def _flush(self, key: int, name: str | None) -> tuple[list[bytes], Finding | None]:
        outcome = self._run(key, "", True)
        if outcome.block is not None:
            return [], outcome.block
        template = self.templates.get(key)
        if not outcome.text or template is None:
            return [], None
        if self.api == "anthropic":
            obj = {**template, "delta": {**template["delta"], "text": outcome.text}}
            return [encode_event(obj, "content_block_delta")], None
        choices = [{**c, "delta": {"content": outcome.text}, "finish_reason": None}
                   for c in template["choices"] if isinstance(c, dict) and c.get("index", 0) == key]
        return [encode_event({**template, "choices": choices})], None


def redact_json(api: str, body: dict[str, Any], scan: Callable[[str, bool], Outcome]) -> tuple[bool, Finding | None]:
    """Run the text of a whole (non-stream) response through ``scan``; returns (changed, blocking finding)."""
    changed = False
    slots: list[tuple[dict[str, Any], str]] = []
    if api == "anthropic":
        slots = [(block, "text") for block in body.get("content") or []
                 if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)]
    else:
        for choice in body.get("choices") or []:
            message = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                slots.append((message, "content"))
    for holder, key in slots:
        outcome = scan(holder[key], True)
        if outcome.block is not None:
            return changed, outcome.block
        if outcome.text != holder[key]:
            holder[key] = outcome.text
            changed = True
    return changed, None
