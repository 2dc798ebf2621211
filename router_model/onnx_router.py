"""The `onnx` routing backend: a router model on ONNX Runtime with a prefix KV cache and a trie decoder."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np

from router_model.backend import WARM_UP_CONVERSATION, Decision, Message, RouterError
from router_model.decoder import Batch, generate, prefill, score_full, tree_score, trie_batched, trie_search
from router_model.engine import OnnxCausalLM, PastKV
from router_model.kv_cache import PrefixCache
from router_model.prompts import ListMove, PromptBuilder, RenderedPrompt, get_profile
from router_model.routes import OTHER, Route, RouteSet
from router_model.tokenizer import RouterTokenizer
from router_model.trie import TokenTrie

# "trie": cached prefix + constrained trie search (the fast path); "prefix": cached prefix + free generation;
# "free": the whole prompt prefilled and the whole answer generated, as Plano serves Arch-Router.
Mode = Literal["trie", "prefix", "free"]

_Pending = tuple[Sequence[Message], RouteSet, "asyncio.Future[Decision]", float]


class OnnxRouter:
    """Routes conversations with a local router model. Build once, share across requests."""

    name = "onnx"

    def __init__(
        self,
        model_dir: str | Path,
        routes: Iterable[Route | Mapping[str, str]] | RouteSet,
        profile: str = "arch-router",
        providers: Sequence[str] | None = None,
        max_conversation_tokens: int = 2048,
        mode: Mode = "trie",
        max_batch: int | None = None,
        max_new_tokens: int = 32,
        intra_op_threads: int | None = None,
        io_binding: bool | None = None,
        max_routes: int = 1,
    ) -> None:
        if max_routes < 1:
            raise ValueError(f"max_routes must be at least 1, got {max_routes}")
        self.model_dir = Path(model_dir)
        self.routes = RouteSet.of(routes)
        self.engine = OnnxCausalLM(self.model_dir, providers=providers, intra_op_threads=intra_op_threads,
                                   io_binding=io_binding)
        self.tokenizer = RouterTokenizer.from_dir(self.model_dir)
        self.prompts = PromptBuilder(get_profile(profile), self.tokenizer, max_conversation_tokens)
        self.mode: Mode = mode
        # Requests that queue up while a forward runs share the next one. On the GPU a forward of 8 rows costs
        # about what one row costs; on this project's 2-core CPU (bench mid model, 151936 vocab) 4 and 8
        # queued decisions took 274 and 541 ms batched against 355 and 738 ms one at a time, so batching pays
        # there too under load, and a lone request still runs alone.
        self.max_batch = max_batch if max_batch is not None else (32 if self.engine.on_device else 8)
        self.max_new_tokens = max_new_tokens
        # Up to this many routes in order (an agent sequence), where the profile answers with a list; one
        # route keeps the single-choice decoders.
        self.max_routes = max_routes if self.prompts.profile.lists_routes else 1
        # A single request scores its trie nodes in one or two batched forwards (measured faster on a CPU than
        # best-first's sequential steps; on a GPU each sequential forward costs a full pass of kernel launches);
        # batches of requests use best-first search in lockstep.
        self.batched_trie = True
        # Models exported by `outerloop router export` score every candidate of every request in one forward
        # (decoder.tree_score), whatever the weights; the trie searches serve plain optimum exports.
        self.tree_scoring = self.engine.tree
        self.prefix_cache = PrefixCache()
        self._tries: dict[str, TokenTrie] = {}
        self._first_moves: dict[str, tuple[dict[str, ListMove], TokenTrie]] = {}
        # One inference thread: ORT already uses every core for a single run, and one thread keeps batches whole.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="router-model")
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._draining = False

    @property
    def provider(self) -> str:
        return self.engine.provider

    # -- building blocks -------------------------------------------------------------------------------------

    def trie(self, routes: RouteSet) -> TokenTrie:
        trie = self._tries.get(routes.key)
        if trie is None:
            trie = self._tries[routes.key] = TokenTrie(self.prompts.candidates(routes))
        return trie

    def first_moves(self, routes: RouteSet) -> tuple[dict[str, ListMove], TokenTrie]:
        """The first step of a list answer and its trie, built once per route set."""
        cached = self._first_moves.get(routes.key)
        if cached is None:
            moves = self.prompts.list_moves(routes, (), self.max_routes)
            cached = self._first_moves[routes.key] = (moves, _move_trie(moves))
        return cached

    def prefix_kv(self, routes: RouteSet, batch: int = 1) -> PastKV:
        prefix = self.prompts.prefix(routes)

        def build() -> PastKV:
            if batch > 1:  # a copy of the batch-1 prefix, made where the KV lives (host or device)
                return self.engine.repeat_past(self.prefix_kv(routes, 1), batch)
            return self.engine.forward(np.array([prefix.ids], dtype=np.int64))[1]

        return self.prefix_cache.get(routes.key, batch, build)

    def render(self, messages: Sequence[Message], routes: RouteSet | None = None) -> RenderedPrompt:
        return self.prompts.render(messages, routes or self.routes)

    def remainder_ids(self, rendered: RenderedPrompt, forced: bool) -> list[int]:
        suffix = self.prompts.profile.answer_prefix if forced else ""
        return self.tokenizer.encode(rendered.remainder + suffix)

    # -- synchronous decisions (run these off the event loop) -------------------------------------------------

    def decide_sync(self, messages: Sequence[Message], routes: RouteSet | None = None, mode: Mode | None = None) -> Decision:
        return self.decide_batch_sync([messages], routes, mode)[0]

    def decide_batch_sync(
        self, conversations: Sequence[Sequence[Message]], routes: RouteSet | None = None, mode: Mode | None = None
    ) -> list[Decision]:
        routes = routes or self.routes
        mode = mode or self.mode
        start = time.perf_counter()
        try:
            rendered = [self.render(m, routes) for m in conversations]
            if mode == "trie":
                return self._decide_trie(rendered, routes, start)
            return [self._decide_generate(r, routes, mode, start) for r in rendered]
        except RouterError:
            raise
        except Exception as exc:  # an engine failure must reach the caller as a router error, not a crash
            raise RouterError(f"router model failed: {exc}") from exc

    def _decide_trie(self, rendered: list[RenderedPrompt], routes: RouteSet, start: float) -> list[Decision]:
        rows = [self.remainder_ids(r, forced=True) for r in rendered]
        if self.max_routes > 1:
            return [self._decide_list(r, row, routes, start) for r, row in zip(rendered, rows, strict=True)]
        prefix = self.prefix_kv(routes, len(rows))
        if self.tree_scoring:
            return self._decide_tree(rendered, rows, prefix, routes, start)
        batch = prefill(self.engine, prefix, rows, self.tokenizer.info.pad_id)
        if self.batched_trie and len(rows) == 1:
            results = [trie_batched(self.engine, batch, self.trie(routes), self.tokenizer.info.pad_id)]
        else:
            results = trie_search(self.engine, batch, self.trie(routes), self.tokenizer.info.pad_id)
        elapsed = (time.perf_counter() - start) * 1000
        decisions = []
        for r, row, res in zip(rendered, rows, results, strict=True):
            route = None if res.candidate == OTHER else res.candidate
            decisions.append(
                Decision(
                    route=route,
                    latency_ms=elapsed,
                    backend=self.name,
                    prompt_tokens=len(r.prefix.ids) + len(row),
                    cached_tokens=len(r.prefix.ids),
                    steps=res.steps + 1,
                    raw=self.prompts.profile.answer_prefix + self.prompts.profile.continuation(res.candidate),
                    scores={res.candidate: res.logprob},
                )
            )
        return decisions

    def _decide_tree(
        self, rendered: list[RenderedPrompt], rows: list[list[int]], prefix: PastKV, routes: RouteSet, start: float
    ) -> list[Decision]:
        all_scores = tree_score(self.engine, prefix, rows, self.trie(routes), self.tokenizer.info.pad_id)
        elapsed = (time.perf_counter() - start) * 1000
        decisions = []
        for r, row, scores in zip(rendered, rows, all_scores, strict=True):
            best = max(scores, key=lambda name: scores[name])
            decisions.append(
                Decision(
                    route=None if best == OTHER else best,
                    latency_ms=elapsed,
                    backend=self.name,
                    prompt_tokens=len(r.prefix.ids) + len(row),
                    cached_tokens=len(r.prefix.ids),
                    steps=1,
                    raw=self.prompts.profile.answer_prefix + self.prompts.profile.continuation(best),
                    scores=scores,
                )
            )
        return decisions

    def _decide_list(self, rendered: RenderedPrompt, row: list[int], routes: RouteSet, start: float) -> Decision:
        """Up to `max_routes` routes in order, one exact trie choice per list item.

        Each step chooses between naming a route not chosen yet and closing the list after it, or naming it and
        continuing (the order the model writes `"a"]}` or `"a", "b"...`). On a tree-capable export the first
        step is one forward, as a single decision is; the list continues on a KV cache of the prompt and the
        items decided so far, each step one forward that feeds the last item plus the trie search's one or two.
        """
        pad = self.tokenizer.info.pad_id
        moves, trie = self.first_moves(routes)
        batch: Batch | None = None
        if self.tree_scoring:
            tree = tree_score(self.engine, self.prefix_kv(routes), [row], trie, pad)[0]
            key = max(tree, key=lambda text: tree[text])
            logprob, steps = tree[key], 1
        else:
            batch = prefill(self.engine, self.prefix_kv(routes), [row], pad)
            first = trie_batched(self.engine, batch, trie, pad)
            key, logprob, steps = first.candidate, first.logprob, first.steps + 1
        chosen: list[str] = []
        scores: dict[str, float] = {}
        raw = self.prompts.profile.answer_prefix
        while True:
            move = moves[key]
            raw += move.text
            scores[move.route or OTHER] = logprob
            if move.route is not None:
                chosen.append(move.route)
            if move.closes:
                break
            if batch is None:
                batch = prefill(self.engine, self.prefix_kv(routes), [row + list(move.ids)], pad)
            else:
                batch = prefill(self.engine, batch.past, [move.ids], pad)
            moves = self.prompts.list_moves(routes, chosen, self.max_routes)
            result = trie_batched(self.engine, batch, _move_trie(moves), pad)
            key, logprob, steps = result.candidate, result.logprob, steps + result.steps + 1
        return Decision(
            route=chosen[0] if chosen else None,
            routes=tuple(chosen),
            latency_ms=(time.perf_counter() - start) * 1000,
            backend=self.name,
            prompt_tokens=len(rendered.prefix.ids) + len(row),
            cached_tokens=len(rendered.prefix.ids),
            steps=steps,
            raw=raw,
            scores=scores,
        )

    def _decide_generate(self, rendered: RenderedPrompt, routes: RouteSet, mode: Mode, start: float) -> Decision:
        if mode == "prefix":
            prefix: PastKV | None = self.prefix_kv(routes)
            prompt = self.remainder_ids(rendered, forced=False)
            cached = len(rendered.prefix.ids)
        else:
            prefix, prompt, cached = None, self.tokenizer.encode(rendered.text), 0
        out = generate(self.engine, prompt, prefix, self.tokenizer.info.eos_ids, self.max_new_tokens)
        answer = self.tokenizer.decode(out)
        chosen = self.prompts.profile.parse_all(answer, routes)[: self.max_routes]
        return Decision(
            route=chosen[0] if chosen else None,
            routes=chosen,
            latency_ms=(time.perf_counter() - start) * 1000,
            backend=self.name,
            prompt_tokens=cached + len(prompt),
            cached_tokens=cached,
            steps=len(out) + 1,
            raw=answer,
        )

    def score_candidates(self, messages: Sequence[Message], routes: RouteSet | None = None) -> dict[str, float]:
        """Full teacher-forced score of every candidate without any cache: the reference for the trie path."""
        routes = routes or self.routes
        rendered = self.render(messages, routes)
        prompt = self.tokenizer.encode(rendered.text + self.prompts.profile.answer_prefix)
        return score_full(self.engine, prompt, self.prompts.candidates(routes))

    def next_token_logits(self, messages: Sequence[Message], cached: bool, routes: RouteSet | None = None) -> np.ndarray:
        """Logits after the forced answer prefix, with or without the prefix cache (for parity checks)."""
        routes = routes or self.routes
        rendered = self.render(messages, routes)
        if cached:
            logits, _ = self.engine.forward(
                np.array([self.remainder_ids(rendered, forced=True)], dtype=np.int64), self.prefix_kv(routes)
            )
        else:
            ids = self.tokenizer.encode(rendered.text + self.prompts.profile.answer_prefix)
            logits, _ = self.engine.forward(np.array([ids], dtype=np.int64))
        return np.asarray(logits[0], dtype=np.float32)

    # -- async API ------------------------------------------------------------------------------------------

    async def decide(self, messages: Sequence[Message], routes: RouteSet | None = None) -> Decision:
        """Decides off the event loop; requests that arrive while the model is busy share the next forward."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Decision] = loop.create_future()
        with self._lock:
            self._pending.append((messages, routes or self.routes, future, time.perf_counter()))
            start_worker = not self._draining
            self._draining = True
        if start_worker:
            loop.run_in_executor(self._pool, self._drain)
        return await future

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._draining = False
                    return
                # One batch per route set: rows of a batch share one prefix cache.
                key = self._pending[0][1].key
                take = [p for p in self._pending if p[1].key == key][: self.max_batch]
                self._pending = [p for p in self._pending if all(p is not t for t in take)]
            try:
                decisions = self.decide_batch_sync([p[0] for p in take], take[0][1])
            except Exception as exc:  # noqa: BLE001 - delivered to every waiting caller
                for _, _, fut, _ in take:
                    _deliver(fut, _set_exception, exc)
                continue
            now = time.perf_counter()
            for (_, _, fut, enqueued), decision in zip(take, decisions, strict=True):
                total = dataclasses.replace(decision, latency_ms=(now - enqueued) * 1000)
                _deliver(fut, _set_result, total)

    def warm_up(self) -> None:
        self.decide_sync(WARM_UP_CONVERSATION)

    async def aclose(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _move_trie(moves: Mapping[str, ListMove]) -> TokenTrie:
    return TokenTrie({text: move.ids for text, move in moves.items()})


def _deliver(fut: asyncio.Future[Decision], setter: Any, value: Any) -> None:
    # Each waiter is woken on its own loop: one worker thread can outlive the loop that started it.
    try:
        fut.get_loop().call_soon_threadsafe(setter, fut, value)
    except RuntimeError:  # that loop is closed; nobody is waiting any more
        pass


def _set_result(fut: asyncio.Future[Decision], value: Decision) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Decision], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def describe(router: OnnxRouter) -> dict[str, Any]:
    """Facts about a loaded router for logs and span attributes."""
    return {
        "backend": router.name,
        "provider": router.provider,
        "profile": router.prompts.profile.name,
        "routes": list(router.routes.names),
        "max_batch": router.max_batch,
        "max_routes": router.max_routes,
    }
