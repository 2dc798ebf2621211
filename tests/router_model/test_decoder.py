"""The batched trie decoder against brute-force scoring, on a fake engine whose logits depend on the last token."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from router_model.decoder import Batch, log_softmax, trie_batched, trie_search
from router_model.engine import PastKV
from router_model.trie import TokenTrie

VOCAB = 12
CANDIDATES = {"code_generation": (1, 2, 9), "code_review": (1, 3, 9), "summarization": (4, 9), "other": (5, 6, 9)}


class TableEngine:
    """Next-token logits are a fixed row per last fed token: a bigram model, enough to check search logic."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table
        self.forwards = 0

    def forward(self, ids: np.ndarray, past: PastKV, mask: Any = None, positions: Any = None) -> tuple[Any, PastKV]:
        self.forwards += 1
        return self.table[ids[:, -1]].astype(np.float32), PastKV(past.values, past.length + ids.shape[1], ids.shape[0])

    def repeat_past(self, past: PastKV, batch: int) -> PastKV:
        return PastKV(past.values, past.length, batch)


def brute_force(table: np.ndarray, root: np.ndarray) -> dict[str, float]:
    scores = {}
    for name, tokens in CANDIDATES.items():
        logp, total = log_softmax(root), 0.0
        for tok in tokens:
            total += float(logp[tok])
            logp = log_softmax(table[tok])
        scores[name] = total
    return scores


def start(root: np.ndarray) -> Batch:
    past = PastKV((), 4, 1)
    return Batch(past, root[None].astype(np.float32), np.ones((1, 4), dtype=np.int64), np.array([4]))


@pytest.mark.parametrize("seed", range(20))
def test_batched_and_best_first_equal_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    table, root = rng.normal(0, 3, (VOCAB, VOCAB)), rng.normal(0, 3, VOCAB)
    scores = brute_force(table, root)
    best = max(scores, key=lambda k: scores[k])
    trie = TokenTrie(CANDIDATES)
    batched = trie_batched(TableEngine(table), start(root), trie, pad_id=0)  # type: ignore[arg-type]
    searched = trie_search(TableEngine(table), start(root), trie, pad_id=0)[0]  # type: ignore[arg-type]
    assert batched.candidate == searched.candidate == best
    assert batched.logprob == pytest.approx(scores[best], abs=1e-4)


def test_peaked_distributions_settle_in_one_forward() -> None:
    # Like a trained router: the answer's path is near-certain, every other first token far behind.
    table = np.zeros((VOCAB, VOCAB))
    table[1, 3], table[3, 9] = 30.0, 30.0
    root = np.zeros(VOCAB)
    root[1] = 30.0
    engine = TableEngine(table)
    result = trie_batched(engine, start(root), TokenTrie(CANDIDATES), pad_id=0)  # type: ignore[arg-type]
    assert result.candidate == "code_review"
    assert result.steps == engine.forwards == 1


def test_flat_distributions_need_the_second_forward() -> None:
    engine = TableEngine(np.zeros((VOCAB, VOCAB)))
    result = trie_batched(engine, start(np.zeros(VOCAB)), TokenTrie(CANDIDATES), pad_id=0)  # type: ignore[arg-type]
    assert result.steps == engine.forwards == 2
    assert result.logprob == pytest.approx(2 * np.log(1 / VOCAB))  # summarization: the shortest
