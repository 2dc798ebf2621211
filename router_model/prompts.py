"""Prompt profiles: how a router model is asked for a route and how its answer is read back."""

from __future__ import annotations

import dataclasses
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
    def parse_all(self, answer: str, routes: RouteSet) -> tuple[str, ...]:
        """Every known route a full answer names, in order and without repeats; empty for `other`, an empty
        list, unknown names or malformed answers."""

    def parse(self, answer: str, routes: RouteSet) -> str | None:
        """The first route a full answer names (see `parse_all`); None when it names none."""
        names = self.parse_all(answer, routes)
        return names[0] if names else None

    #: Whether answers are lists (`list_item`), so the constrained decoder can name several routes in order.
    lists_routes = False

    def list_item(self, route: str, index: int, closes: bool) -> str:
        """The answer text after `answer_prefix` and `index` earlier items that names `route` and then either
        closes the list or continues it (the next item follows)."""
        raise ValueError(f"the {self.name} profile answers with one route, not a list (lists_routes is False)")

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

    def parse_all(self, answer: str, routes: RouteSet) -> tuple[str, ...]:
        value = _loads_object(answer)
        route = value.get("route") if value is not None else None
        if isinstance(route, list):  # tolerate the orchestrator's list form; this model names one route
            route = route[0] if route else None
        if not isinstance(route, str) or route == OTHER or route not in routes.names:
            return ()
        return (route,)


class PlanoOrchestratorProfile(PromptProfile):
    name = "plano-orchestrator"
    answer_prefix = '{"route": ['
    lists_routes = True

    def template(self, routes: RouteSet) -> str:
        lines = "\n".join(json.dumps(r.as_json(), ensure_ascii=False) for r in routes)
        return PLANO_ORCHESTRATOR_PROMPT.replace("{routes}", lines, 1)

    def render_conversation(self, turns: Sequence[Turn]) -> str:
        return json.dumps([t.as_json() for t in turns], indent=4, ensure_ascii=False)

    def continuation(self, route: str) -> str:
        return "]}" if route == OTHER else json.dumps(route, ensure_ascii=False) + "]}"

    def list_item(self, route: str, index: int, closes: bool) -> str:
        # json.dumps's separators, as the model was trained to write a list. An item ends after its comma, not
        # after the name's closing quote: Qwen's pre-tokenizer joins that quote with what follows (`",` and
        # `"]}`), so only there does a step boundary fall between tokens the model saw in training.
        return (" " if index else "") + json.dumps(route, ensure_ascii=False) + ("]}" if closes else ",")

    def parse_all(self, answer: str, routes: RouteSet) -> tuple[str, ...]:
        value = _loads_object(answer)
        route = value.get("route") if value is not None else None
        if isinstance(route, str):
            route = [route]
        if not isinstance(route, list):
            return ()
        # Model routing uses the first name, agent routing the sequence; unknown names and repeats are skipped.
        known = (name for name in route if isinstance(name, str) and name in routes.names)
        return tuple(dict.fromkeys(known))


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
        prefix = self.profile.answer_prefix
        return {name: self.continuation_ids(prefix, self.profile.continuation(name)) for name in (*routes.names, OTHER)}

    def continuation_ids(self, context: str, text: str) -> tuple[int, ...]:
        """The tokens of `text` written after `context`."""
        forced = self.tokenizer.encode(context)
        whole = self.tokenizer.encode(context + text)
        # Prefer the tokenization the model saw in training (the whole answer); fall back when the context does
        # not tokenize as a prefix of it.
        tail = whole[len(forced) :] if whole[: len(forced)] == forced else None
        return tuple(tail or self.tokenizer.encode(text))

    def list_moves(self, routes: RouteSet, chosen: Sequence[str], max_routes: int) -> dict[str, ListMove]:
        """The next step of a list answer after the routes `chosen` so far, keyed by its text: each route not
        chosen yet, closing the list or (while fewer than `max_routes` would be named and routes remain)
        continuing it; before the first item, also the empty list (`other`)."""
        profile, index = self.profile, len(chosen)
        context = profile.answer_prefix + "".join(profile.list_item(n, i, False) for i, n in enumerate(chosen))
        remaining = [name for name in routes.names if name not in chosen]
        continues = (False, True) if index + 1 < max_routes and len(remaining) > 1 else (False,)
        moves = [ListMove(name, not more, profile.list_item(name, index, not more)) for name in remaining for more in continues]
        if index == 0:
            moves.append(ListMove(None, True, profile.continuation(OTHER)))
        return {m.text: dataclasses.replace(m, ids=self.continuation_ids(context, m.text)) for m in moves}


@dataclass(frozen=True)
class ListMove:
    """One step of a list answer: `route` (None for the empty list) and whether the list closes after it."""

    route: str | None
    closes: bool
    text: str
    ids: tuple[int, ...] = ()
