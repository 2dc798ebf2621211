"""Prompt profiles: how a router model is asked for a route and how its answer is read back."""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from router_model.conversation import Turn, select_turns
from router_model.routes import OTHER, RouteSet
from router_model.tokenizer import RouterTokenizer

# Arch-Router-1.5B model card, verbatim (blank lines, the two spaces after "XML tags." and trailing spaces matter).
ARCH_TASK_INSTRUCTION = (
    "\nYou are a helpful assistant designed to find the best suited route.\n"
    "You are provided with route description within <routes></routes> XML tags:\n"
    "<routes>\n\n{routes}\n\n</routes>\n\n<conversation>\n\n{conversation}\n\n</conversation>\n"
)
ARCH_FORMAT_PROMPT = (
    "\nYour task is to decide which route is best suit with user intent on the conversation in "
    "<conversation></conversation> XML tags.  Follow the instruction:\n"
    '1. If the latest intent from user is irrelevant or user intent is full filled, response with other route {"route": "other"}.\n'
    "2. You must analyze the route descriptions and find the best match route for user latest intent. \n"
    "3. You only response the name of the route that best matches the user's request, use the exact name in the <routes></routes>.\n"
    "\nBased on your analysis, provide your response in the following JSON formats if you decide to match any route:\n"
    '{"route": "route_name"} \n'
)

# Plano-Orchestrator's prompt (Plano's orchestrator_model_v1): routes one JSON object per line, the
# conversation as 4-space indented JSON, and a list of routes as the answer.
PLANO_ORCHESTRATOR_PROMPT = (
    "\nYou are a helpful assistant that selects the most suitable routes based on user intent.\n"
    "You are provided with a list of available routes enclosed within <routes></routes> XML tags:\n"
    "<routes>\n{routes}\n</routes>\n\n"
    "You are also given the conversation context enclosed within <conversation></conversation> XML tags:\n"
    "<conversation>\n{conversation}\n</conversation>\n\n"
    "## Instructions\n"
    "1. Analyze the latest user intent from the conversation.\n"
    "2. Compare it against the available routes to find which routes can help fulfill the request.\n"
    "3. Respond only with the exact route names from <routes>.\n"
    "4. If no routes can help or the intent is already fulfilled, return an empty list.\n\n"
    "## Response Format\n"
    "Return your answer strictly in JSON as follows:\n"
    '{"route": ["route_name_1", "route_name_2", "..."]}\n'
    "If no routes are needed, return an empty list for `route`.\n"
)

_CONVERSATION = "{conversation}"
_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def _loads_object(answer: str) -> Mapping[str, Any] | None:
    """The JSON object in a model answer, tolerating code fences, prose around it and single quotes."""
    text = answer.strip()
    match = _JSON_OBJECT.search(text)
    if match is None:
        return None
    blob = match.group(0)
    for candidate in (blob, blob.replace("'", '"')):
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        return value if isinstance(value, Mapping) else None
    return None


class PromptProfile(ABC):
    """One router model family's prompt format, forced answer start and answer parser."""

    name: str
    # The answer always starts like this; the constrained decoder forces it instead of generating it.
    answer_prefix: str

    @abstractmethod
    def template(self, routes: RouteSet) -> str:
        """The user message with routes filled in and `{conversation}` left as the only placeholder."""

    @abstractmethod
    def render_conversation(self, turns: Sequence[Turn]) -> str: ...

    @abstractmethod
    def continuation(self, route: str) -> str:
        """The answer text after `answer_prefix` that selects `route` (OTHER for no route)."""

    @abstractmethod
    def parse(self, answer: str, routes: RouteSet) -> str | None:
        """The route a full answer names; None for `other`, unknown names or malformed answers."""

    def user_message(self, routes: RouteSet, turns: Sequence[Turn]) -> str:
        return self.template(routes).replace(_CONVERSATION, self.render_conversation(turns), 1)


class ArchRouterProfile(PromptProfile):
    name = "arch-router"
    answer_prefix = '{"route": "'

    def template(self, routes: RouteSet) -> str:
        rendered = json.dumps([r.as_json() for r in routes])
        # str.format would also touch braces inside route descriptions; substitute by hand instead.
        return ARCH_TASK_INSTRUCTION.replace("{routes}", rendered, 1) + ARCH_FORMAT_PROMPT

    def render_conversation(self, turns: Sequence[Turn]) -> str:
        return json.dumps([t.as_json() for t in turns])

    def continuation(self, route: str) -> str:
        return route + '"}'

    def parse(self, answer: str, routes: RouteSet) -> str | None:
        value = _loads_object(answer)
        route = value.get("route") if value is not None else None
        if isinstance(route, list):  # tolerate the orchestrator's list form
            route = route[0] if route else None
        if not isinstance(route, str) or route == OTHER or route not in routes.names:
            return None
        return route


class PlanoOrchestratorProfile(PromptProfile):
    name = "plano-orchestrator"
    answer_prefix = '{"route": ['

    def template(self, routes: RouteSet) -> str:
        lines = "\n".join(json.dumps(r.as_json(), ensure_ascii=False) for r in routes)
        return PLANO_ORCHESTRATOR_PROMPT.replace("{routes}", lines, 1)

    def render_conversation(self, turns: Sequence[Turn]) -> str:
        return json.dumps([t.as_json() for t in turns], indent=4, ensure_ascii=False)

    def continuation(self, route: str) -> str:
        return "]}" if route == OTHER else json.dumps(route, ensure_ascii=False) + "]}"

    def parse(self, answer: str, routes: RouteSet) -> str | None:
        value = _loads_object(answer)
        route = value.get("route") if value is not None else None
        if isinstance(route, str):
            route = [route]
        if not isinstance(route, list):
            return None
        # Only the first route is used for model routing; skip empty or unknown names.
        for name in route:
            if isinstance(name, str) and name in routes.names:
                return name
        return None


PROFILES: dict[str, PromptProfile] = {p.name: p for p in (ArchRouterProfile(), PlanoOrchestratorProfile())}


def get_profile(name: str) -> PromptProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown prompt profile {name!r}; expected one of {sorted(PROFILES)}") from None


@dataclass(frozen=True)
class StaticPrefix:
    """The part of every prompt that depends only on the route set, and its tokens."""

    routes_key: str
    text: str
    ids: tuple[int, ...]


@dataclass(frozen=True)
class RenderedPrompt:
    """A full router prompt, split where the static prefix ends."""

    user_message: str
    text: str  # chat-templated, ending with the generation prompt
    prefix: StaticPrefix
    turns: tuple[Turn, ...]

    @property
    def remainder(self) -> str:
        return self.text[len(self.prefix.text) :]


class PromptBuilder:
    """Renders prompts for one profile through one tokenizer, caching the static prefix per route set."""

    def __init__(
        self, profile: PromptProfile, tokenizer: RouterTokenizer, max_conversation_tokens: int = 2048
    ) -> None:
        self.profile = profile
        self.tokenizer = tokenizer
        self.max_conversation_tokens = max_conversation_tokens
        self._prefixes: dict[str, StaticPrefix] = {}

    def chat_text(self, user_message: str) -> str:
        return self.tokenizer.apply_chat_template([{"role": "user", "content": user_message}])

    def prefix(self, routes: RouteSet) -> StaticPrefix:
        cached = self._prefixes.get(routes.key)
        if cached is not None:
            return cached
        # A sentinel conversation locates the first character that varies per request.
        sentinel = "\x00CONVERSATION\x00"
        text = self.chat_text(self.profile.template(routes).replace(_CONVERSATION, sentinel, 1))
        end = text.index(sentinel)
        # Back off to the start of the last pre-token before the conversation: the pre-tokenizer may extend that
        # piece with what follows (whitespace runs, punctuation), but nothing earlier can change, so BPE merges
        # never cross the split and tokens(prefix) + tokens(remainder) == tokens(whole).
        starts = [s for s in self.tokenizer.pretoken_starts(text[:end]) if s < end]
        split = starts[-1] if starts else 0
        prefix = StaticPrefix(routes.key, text[:split], tuple(self.tokenizer.encode(text[:split])))
        self._prefixes[routes.key] = prefix
        return prefix

    def select(self, messages: Sequence[Mapping[str, Any]]) -> list[Turn]:
        return select_turns(messages, self.max_conversation_tokens, self.tokenizer.count)

    def render(self, messages: Sequence[Mapping[str, Any]], routes: RouteSet) -> RenderedPrompt:
        turns = self.select(messages)
        user_message = self.profile.user_message(routes, turns)
        text = self.chat_text(user_message)
        prefix = self.prefix(routes)
        if not text.startswith(prefix.text):
            raise AssertionError("chat template output does not start with the cached static prefix")
        return RenderedPrompt(user_message, text, prefix, tuple(turns))

    def candidates(self, routes: RouteSet) -> dict[str, tuple[int, ...]]:
        """Token sequences that complete the forced answer prefix with each route name and `other`."""
        forced = self.tokenizer.encode(self.profile.answer_prefix)
        out: dict[str, tuple[int, ...]] = {}
        for name in (*routes.names, OTHER):
            whole = self.tokenizer.encode(self.profile.answer_prefix + self.profile.continuation(name))
            # Prefer the tokenization the model saw in training (the whole answer); fall back when the forced
            # prefix does not tokenize as a prefix of it.
            tail = whole[len(forced) :] if whole[: len(forced)] == forced else None
            out[name] = tuple(tail or self.tokenizer.encode(self.profile.continuation(name)))
        return out
