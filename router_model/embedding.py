"""The `embedding` routing backend: a small ONNX sentence encoder compared against route descriptions."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from router_model.backend import WARM_UP_CONVERSATION, Decision, Message, RouterModelMissing
from router_model.conversation import message_text
from router_model.engine import resolve_providers
from router_model.routes import Route, RouteSet


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from an optimum `feature-extraction` export."""

    def __init__(self, model_dir: str | Path, providers: Sequence[str] | None = None, max_length: int = 256) -> None:
        model_dir = Path(model_dir)
        if not (model_dir / "model.onnx").is_file() or not (model_dir / "tokenizer.json").is_file():
            raise RouterModelMissing(f"{model_dir} needs model.onnx and tokenizer.json (an optimum feature-extraction export)")
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id("[PAD]") or 0)
        ort.set_default_logger_severity(4)
        try:
            self.session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=resolve_providers(providers))
        finally:
            ort.set_default_logger_severity(2)
        self._inputs = {i.name for i in self.session.get_inputs()}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        batch = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in batch], dtype=np.int64)
        mask = np.array([e.attention_mask for e in batch], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = np.asarray(self.session.run(None, feeds)[0], dtype=np.float32)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        normed: np.ndarray = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return normed


#: Turns that carry no task, whatever the routes: greetings, thanks, acknowledgements, goodbyes. Arch-Router
#: answers `other` when the user's intent is irrelevant or already fulfilled; a sentence encoder cannot tell
#: that from a low similarity alone (chit-chat scores as high as real requests), so these compete with the routes.
NO_TASK_PHRASES = (
    "hello",
    "hi, how are you?",
    "good morning",
    "thanks, that's all I needed",
    "thank you!",
    "ok, got it",
    "great, that works",
    "bye, see you",
    "nice",
    "cool",
)


def phrasings(route: Route, use_names: bool = True) -> list[str]:
    """What a route is matched against: its description, its name read as words, and each clause of the
    description, since descriptions list several intents ("stories, poems, song lyrics ...") and a request
    names one of them."""
    out = [route.description]
    if use_names:
        name = route.name.replace("_", " ")
        out += [f"{name}: {route.description}", name]
    clauses = (c.strip() for c in re.split(r"[,;]| or | and ", route.description))
    out += [c for c in clauses if len(c) > 2 and c not in out]
    return out


def lead_in(text: str) -> str | None:
    """The instruction before a payload ("Summarize: <text>", "Explain this type:\\n<code>"): up to 80 characters
    before the first colon or newline, when at least as much follows. A quoted text or code is about something
    else; matched whole, it pulls the request towards its own topic."""
    match = re.match(r"^(.{3,80}?)(?::(?!//)|\n)\s*(.+)$", text.strip(), re.S)  # not the colon of a URL
    if match is None or len(match.group(2)) < len(match.group(1)):
        return None
    return match.group(1).strip()


class EmbeddingRouter:  # all-MiniLM-L6-v2 on bench/data/routing/dev.jsonl: see docs/routing.md
    """Picks the route with a phrasing most similar to the latest user intent; `other` for turns that look like
    chit-chat (NO_TASK_PHRASES) or whose best similarity is below the threshold.

    The query is the latest user turn (and its lead-in, when it carries a payload), nudged towards the previous
    user turn so that short follow-ups ("and to Portuguese?") inherit the topic they continue.
    """

    name = "embedding"

    def __init__(
        self,
        model_dir: str | Path,
        routes: Iterable[Route | Mapping[str, str]] | RouteSet,
        threshold: float = 0.1,
        context_weight: float = 0.5,
        use_names: bool = True,
        providers: Sequence[str] | None = None,
        no_task_phrases: Sequence[str] = NO_TASK_PHRASES,
    ) -> None:
        self.encoder = SentenceEncoder(model_dir, providers)
        self.routes = RouteSet.of(routes)
        self.threshold = threshold
        self.context_weight = context_weight
        self.use_names = use_names
        self._route_vectors: dict[str, list[np.ndarray]] = {}
        self._no_task = self.encoder.encode(list(no_task_phrases)) if no_task_phrases else None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="router-embedding")

    def route_vectors(self, routes: RouteSet) -> list[np.ndarray]:
        """Per route, its phrasings' embeddings [n, dim], computed once per route set."""
        cached = self._route_vectors.get(routes.key)
        if cached is None:
            cached = self._route_vectors[routes.key] = [
                self.encoder.encode(phrasings(route, self.use_names)) for route in routes
            ]
        return cached

    def query_vectors(self, messages: Sequence[Message]) -> np.ndarray | None:
        """The latest user turn as [k, dim] unit vectors: the whole turn and, when it carries a payload, its
        lead-in (see `lead_in`); each nudged towards the previous user turn. None without a user turn."""
        users = [t for m in messages if m.get("role", "user") == "user" and (t := message_text(m.get("content")))]
        if not users:
            return None
        lead = lead_in(users[-1])
        vectors = self.encoder.encode([*users[-2:], *([lead] if lead else [])])
        context = self.context_weight * vectors[0] if len(users) > 1 else 0.0
        queries = vectors[1:] if len(users) > 1 else vectors
        queries = queries + context
        normed: np.ndarray = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        return normed.astype(np.float32)

    def decide_sync(self, messages: Sequence[Message], routes: RouteSet | None = None) -> Decision:
        routes = routes or self.routes
        start = time.perf_counter()
        queries = self.query_vectors(messages)
        if queries is None:
            return Decision(route=None, latency_ms=(time.perf_counter() - start) * 1000, backend=self.name)
        sims = np.array([float((vectors @ queries.T).max()) for vectors in self.route_vectors(routes)])
        best = int(np.argmax(sims))
        scores = {name: float(s) for name, s in zip(routes.names, sims, strict=True)}
        # The whole turn only: a turn with a payload carries a task, even when its lead-in is "Hi team".
        no_task = float((self._no_task @ queries[0]).max()) if self._no_task is not None else -1.0
        return Decision(
            route=routes.names[best] if sims[best] >= self.threshold and sims[best] > no_task else None,
            latency_ms=(time.perf_counter() - start) * 1000,
            backend=self.name,
            scores=scores,
        )

    async def decide(self, messages: Sequence[Message], routes: RouteSet | None = None) -> Decision:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.decide_sync, messages, routes)

    def warm_up(self) -> None:
        self.decide_sync(WARM_UP_CONVERSATION)

    async def aclose(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
