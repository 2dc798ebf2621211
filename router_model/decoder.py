"""Decoding strategies over the engine: exact trie search, full candidate scoring, and free generation."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from router_model.engine import OnnxCausalLM, PastKV
from router_model.trie import TokenTrie, TrieNode


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    out: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


@dataclass(frozen=True)
class TrieResult:
    candidate: str
    logprob: float
    steps: int


@dataclass(frozen=True)
class Batch:
    """Left-padded per-request tokens behind a shared cached prefix."""

    past: PastKV
    logits: np.ndarray  # [batch, vocab] after the last real token of each row
    mask: np.ndarray  # [batch, past.length] which cached positions each row attends to
    next_position: np.ndarray  # [batch] position id of each row's next token


def prefill(
    engine: OnnxCausalLM, prefix: PastKV | None, rows: Sequence[Sequence[int]], pad_id: int
) -> Batch:
    """Feeds each row after the (shared, batch-sized) prefix cache in one forward, left-padding short rows."""
    batch = len(rows)
    prefix_len = prefix.length if prefix is not None else 0
    width = max(len(r) for r in rows)
    ids = np.full((batch, width), pad_id, dtype=np.int64)
    mask = np.zeros((batch, prefix_len + width), dtype=np.int64)
    mask[:, :prefix_len] = 1
    positions = np.full((batch, width), prefix_len, dtype=np.int64)
    for i, row in enumerate(rows):
        start = width - len(row)
        ids[i, start:] = row
        mask[i, prefix_len + start :] = 1
        positions[i, start:] = np.arange(prefix_len, prefix_len + len(row))
    logits, past = engine.forward(ids, prefix, mask, positions)
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    return Batch(past, logits, mask, prefix_len + lengths)


def trie_search(engine: OnnxCausalLM, batch: Batch, trie: TokenTrie, pad_id: int) -> list[TrieResult]:
    """Per row, the candidate with the highest total log-probability, found by best-first search.

    Log-probabilities only fall as a path grows, so the first complete candidate popped from the frontier is
    the exact argmax over all candidates (the answer full teacher-forced scoring gives), usually after one
    forward per token of the winner. Rows advance in lockstep, one token each per forward; a row's attention
    mask admits only the steps on its current path, so rows may backtrack into other branches freely.
    """
    rows = batch.logits.shape[0]
    counter = itertools.count()
    frontiers: list[list[tuple[float, int, TrieNode, bool]]] = [[] for _ in range(rows)]
    step_of: list[dict[int, int]] = [{} for _ in range(rows)]  # id(node) -> step column where it was fed
    results: list[TrieResult | None] = [None] * rows

    def push_children(row: int, node: TrieNode, base: float, logp: np.ndarray) -> None:
        for tok, child in node.children.items():
            score = base + float(logp[tok])
            if child.candidate is not None:
                heapq.heappush(frontiers[row], (-score, next(counter), child, True))
            if child.children:
                heapq.heappush(frontiers[row], (-score, next(counter), child, False))

    first = log_softmax(batch.logits)
    for row in range(rows):
        push_children(row, trie.root, 0.0, first[row])

    past, mask, steps = batch.past, batch.mask, 0
    while True:
        expand: list[tuple[TrieNode, float] | None] = [None] * rows
        for row in range(rows):
            if results[row] is not None:
                continue
            neg, _, node, complete = heapq.heappop(frontiers[row])
            if complete:
                results[row] = TrieResult(str(node.candidate), -neg, steps)
            else:
                expand[row] = (node, -neg)
        if all(e is None for e in expand):
            break
        ids = np.full((rows, 1), pad_id, dtype=np.int64)
        positions = np.zeros((rows, 1), dtype=np.int64)
        column = np.zeros((rows, 1), dtype=np.int64)
        mask = np.concatenate([mask, column], axis=1)
        for row, item in enumerate(expand):
            if item is None:
                continue
            node, _ = item
            ids[row, 0] = node.token
            positions[row, 0] = batch.next_position[row] + node.depth - 1
            # This row sees its cached prompt plus exactly the steps that fed this node's ancestors.
            mask[row, batch.mask.shape[1] :] = 0
            for ancestor in node.path():
                if ancestor is not node:
                    mask[row, step_of[row][id(ancestor)]] = 1
            mask[row, -1] = 1
            step_of[row][id(node)] = mask.shape[1] - 1
        logits, past = engine.forward(ids, past, mask, positions)
        steps += 1
        logp = log_softmax(logits)
        for row, item in enumerate(expand):
            if item is not None:
                push_children(row, item[0], item[1], logp[row])
    return [r for r in results if r is not None]


def trie_batched(engine: OnnxCausalLM, batch: Batch, trie: TokenTrie, pad_id: int) -> TrieResult:
    """The highest-scoring candidate of a single request, in at most two batched forwards.

    Exact like `trie_search`. The first forward expands the whole subtree of the best first token (one row per
    inner node, each repeating the request's KV cache and feeding that node's path); if its best candidate
    beats every other first token's log-probability (an upper bound on any candidate below it), that is the
    answer, as it is for a trained router whose distributions are peaked on its answer. Otherwise a second
    forward expands every remaining inner node and all candidates are scored in full. Decode steps on a CPU
    are bound by reading the weights (with a 152k vocabulary, mostly the LM head), so a forward of a dozen rows
    costs far less than a dozen sequential ones; on a GPU, where a forward of a dozen rows costs what one does,
    it saves the sequential passes outright.
    """
    if batch.logits.shape[0] != 1:
        raise ValueError("trie_batched decides one request; use trie_search for batches")
    logp_after: dict[int, np.ndarray] = {id(trie.root): log_softmax(batch.logits)[0]}
    first = logp_after[id(trie.root)]
    order = sorted(trie.root.children.values(), key=lambda n: -float(first[n.token]))
    best, rest = order[0], order[1:]
    steps = 0
    for phase in ([best], rest):
        inner = [n for top in phase for n in _nodes(top) if n.children]
        if inner:
            logp_after.update(expand_nodes(engine, batch, inner, pad_id))
            steps += 1
        scores = _scores(trie, logp_after)
        winner = max(scores, key=lambda name: scores[name])
        if phase is rest or all(scores[winner] >= float(first[n.token]) for n in rest):
            break
    return TrieResult(winner, scores[winner], steps)


def expand_nodes(engine: OnnxCausalLM, batch: Batch, nodes: Sequence[TrieNode], pad_id: int) -> dict[int, np.ndarray]:
    """Log-probabilities after each node (keyed by id), one left-padded row per node in one forward."""
    cached = batch.mask.shape[1]
    width = max(n.depth for n in nodes)
    ids = np.full((len(nodes), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(nodes), cached + width), dtype=np.int64)
    mask[:, :cached] = batch.mask[0]
    positions = np.zeros((len(nodes), width), dtype=np.int64)
    for row, node in enumerate(nodes):
        path = [n.token for n in node.path()][::-1]
        start = width - len(path)
        ids[row, start:] = path
        mask[row, cached + start :] = 1
        positions[row, start:] = np.arange(batch.next_position[0], batch.next_position[0] + len(path))
    past = batch.past if len(nodes) == 1 else engine.repeat_past(batch.past, len(nodes))
    logits, _ = engine.forward(ids, past, mask, positions)
    return {id(node): row for node, row in zip(nodes, log_softmax(logits), strict=True)}


def _scores(trie: TokenTrie, logp_after: Mapping[int, np.ndarray]) -> dict[str, float]:
    """Total log-probability of every candidate whose path has been expanded so far."""
    scores: dict[str, float] = {}
    for name, tokens in trie.candidates.items():
        node, total = trie.root, 0.0
        for tok in tokens:
            after = logp_after.get(id(node))
            if after is None:
                break
            total += float(after[tok])
            node = node.children[tok]
        else:
            scores[name] = total
    return scores


def _nodes(root: TrieNode) -> Iterator[TrieNode]:
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.children.values())


def tree_score(
    engine: OnnxCausalLM, prefix: PastKV | None, rows: Sequence[Sequence[int]], trie: TokenTrie, pad_id: int
) -> list[dict[str, float]]:
    """Every candidate's total log-probability for each row, in one forward (tree attention).

    Each row is its prompt remainder (left-padded) followed by the trie's inner nodes; a node's query sees the
    cached prefix, the row's prompt and its own ancestors only, at the position it would have in that single
    continuation, so its logits are exactly those a separate pass over that path gives. Logits are computed
    after the prompt (the root) and after each inner node: that is every factor of every candidate's score,
    whatever the weights, so the result is `score_full`'s with one forward instead of one per token.
    Needs a tree-capable export (`engine.tree`).
    """
    batch, inner = len(rows), trie.inner
    cached = prefix.length if prefix is not None else 0
    width, n = max(len(r) for r in rows), len(inner)
    column = {id(node): k for k, node in enumerate(inner)}
    sees = np.zeros((n, n), dtype=np.bool_)  # node k sees node j: j is k or one of its ancestors
    for k, node in enumerate(inner):
        for ancestor in node.path():
            sees[k, column[id(ancestor)]] = True
    depth = np.array([node.depth for node in inner], dtype=np.int64)

    ids = np.full((batch, width + n), pad_id, dtype=np.int64)
    positions = np.zeros((batch, width + n), dtype=np.int64)
    mask = np.zeros((batch, 1, width + n, cached + width + n), dtype=np.bool_)
    mask[:, 0, :, :cached] = True
    for i, row in enumerate(rows):
        start = width - len(row)
        ids[i, start:width] = row
        ids[i, width:] = [node.token for node in inner]
        positions[i, start:width] = np.arange(cached, cached + len(row))
        positions[i, width:] = cached + len(row) + depth - 1
        tail = slice(cached + start, cached + width)
        mask[i, 0, start:width, tail] = np.tril(np.ones((len(row), len(row)), dtype=np.bool_))
        mask[i, 0, np.arange(start), cached + np.arange(start)] = True  # padding sees itself, never all-masked
        mask[i, 0, width:, tail] = True
        mask[i, 0, width:, cached + width :] = sees
    logit_positions = [width - 1, *range(width, width + n)]
    vocab = sorted({tok for tokens in trie.candidates.values() for tok in tokens})
    index = {tok: k for k, tok in enumerate(vocab)}
    # [batch, 1 + n, len(vocab)]: after the prompt, then after each inner node, for the trie's tokens only
    logp = engine.token_logprobs(ids, prefix, positions, mask, logit_positions, vocab)

    out: list[dict[str, float]] = []
    for i in range(batch):
        scores: dict[str, float] = {}
        for name, tokens in trie.candidates.items():
            node, at, total = trie.root, 0, 0.0
            for tok in tokens:
                total += float(logp[i, at, index[tok]])
                node = node.children[tok]
                at = 1 + column[id(node)] if node.children else -1
            scores[name] = total
        out.append(scores)
    return out


def score_full(engine: OnnxCausalLM, prompt: Sequence[int], candidates: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Teacher-forced log-probability of every candidate, each token scored by an uncached forward.

    Slow on purpose: it shares no cache or search with `trie_search`, so it can check it.
    """
    scores: dict[str, float] = {}
    for name, tokens in candidates.items():
        total = 0.0
        for i, tok in enumerate(tokens):
            ids = np.array([[*prompt, *tokens[:i]]], dtype=np.int64)
            logits, _ = engine.forward(ids)
            total += float(log_softmax(logits)[0, tok])
        scores[name] = total
    return scores


def generate(
    engine: OnnxCausalLM,
    prompt: Sequence[int],
    prefix: PastKV | None,
    eos_ids: Collection[int],
    max_new_tokens: int,
) -> list[int]:
    """Greedy free generation after `prefix` (may be None) and `prompt`, stopping at an EOS token."""
    logits, past = engine.forward(np.array([list(prompt)], dtype=np.int64), prefix)
    out: list[int] = []
    while len(out) < max_new_tokens:
        tok = int(np.argmax(logits[0]))
        if tok in eos_ids:
            break
        out.append(tok)
        logits, past = engine.forward(np.array([[tok]], dtype=np.int64), past)
    return out
