from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

import numpy as np
import pytest

from router_model.backend import RouterBackend, RouterError, RouterModelMissing
from router_model.engine import OnnxCausalLM
from router_model.onnx_router import OnnxRouter
from router_model.routes import RouteSet

WORDS = "write code please summarize translate poem why error the a of into German story bug test plan".split()


def random_conversations(n: int, seed: int = 1) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        turns = rng.choice([1, 1, 3])
        out.append(
            [
                {"role": "user" if i % 2 == 0 else "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(1, 12)))}
                for i in range(turns)
            ]
        )
    return out


def test_cuda_preference_falls_back_to_cpu_with_one_log_line(tiny_onnx_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="router_model.engine"):
        engine = OnnxCausalLM(tiny_onnx_dir, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    if engine.provider == "CUDAExecutionProvider":
        pytest.skip("this machine has a working CUDA provider")
    lines = [r.getMessage() for r in caplog.records if r.name == "router_model.engine"]
    assert lines == ["router model: CUDA execution provider unavailable, running on CPUExecutionProvider"]
    assert caplog.records[-1].levelno == logging.WARNING


def test_missing_model_is_a_clear_error(tmp_path: Path, routes: RouteSet) -> None:
    with pytest.raises(RouterModelMissing, match="model.onnx not found"):
        OnnxRouter(tmp_path, routes)


def test_prefix_cached_logits_equal_uncached(router: OnnxRouter, dev_examples) -> None:  # type: ignore[no-untyped-def]
    for messages in [ex["messages"] for ex in dev_examples[::4]] + random_conversations(5):
        cached = router.next_token_logits(messages, cached=True)
        uncached = router.next_token_logits(messages, cached=False)
        assert np.allclose(cached, uncached, rtol=1e-5, atol=1e-5), np.abs(cached - uncached).max()
    assert router.prefix_cache.hits > 0


DECODERS = {"tree": (True, True), "batched": (False, True), "best-first": (False, False)}


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_trie_decision_equals_full_candidate_scoring(  # type: ignore[no-untyped-def]
    router: OnnxRouter, dev_examples, decoder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert router.engine.tree  # the fixture's export is tree-capable, so "tree" below is really the tree path
    tree, batched = DECODERS[decoder]
    monkeypatch.setattr(router, "tree_scoring", tree)
    monkeypatch.setattr(router, "batched_trie", batched)
    conversations = [ex["messages"] for ex in dev_examples[::3]] + random_conversations(10)
    chosen = set()
    for messages in conversations:
        decision = router.decide_sync(messages)
        scores = router.score_candidates(messages)
        best = max(scores, key=lambda k: scores[k])
        assert (decision.route or "other") == best, (messages, scores, decision)
        assert decision.scores[best] == pytest.approx(scores[best], abs=1e-3)
        if tree:  # one forward scores every candidate, and each score is the full one
            assert decision.steps == 1
            assert decision.scores == pytest.approx(scores, abs=1e-3)
        chosen.add(best)
    # The random model must not answer the same thing for everything, or this test proves little.
    assert len(chosen) > 1


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_batched_decisions_equal_single_ones(router: OnnxRouter, decoder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    tree, batched = DECODERS[decoder]
    monkeypatch.setattr(router, "tree_scoring", tree)
    monkeypatch.setattr(router, "batched_trie", batched)
    conversations = random_conversations(6, seed=7)  # 1- and 3-turn: rows of a batch are left-padded
    batch = router.decide_batch_sync(conversations)
    for messages, b in zip(conversations, batch, strict=True):
        single = router.decide_sync(messages)
        assert b.route == single.route
        assert b.scores.keys() == single.scores.keys()
        assert list(b.scores.values()) == pytest.approx(list(single.scores.values()), abs=1e-4)


def test_plain_optimum_export_routes_with_the_trie_search(tiny_hf_dir: Path, routes: RouteSet, router: OnnxRouter) -> None:
    """A model exported by optimum without the router graph rewrite still routes, on the trie searches."""
    from router_model.export import export

    plain_dir = export(tiny_hf_dir, tiny_hf_dir.parent / "plain-onnx", router=False, check=True)
    plain = OnnxRouter(plain_dir, routes, providers=["CPUExecutionProvider"])
    assert not plain.engine.tree and not plain.tree_scoring
    with pytest.raises(ValueError, match="no tree mask input"):
        plain.engine.forward(np.array([[5, 6]], dtype=np.int64), logit_positions=[0, 1])
    conversations = random_conversations(6, seed=11)
    assert [d.route for d in plain.decide_batch_sync(conversations)] == [router.decide_sync(m).route for m in conversations]
    assert [plain.decide_sync(m).route for m in conversations] == [router.decide_sync(m).route for m in conversations]


def test_free_generation_modes_agree_and_report_tokens(router: OnnxRouter) -> None:
    messages = [{"role": "user", "content": "Write a poem about the sea."}]
    free = router.decide_sync(messages, mode="free")
    prefix = router.decide_sync(messages, mode="prefix")
    assert free.raw == prefix.raw  # same greedy answer with and without the prefix cache
    assert free.cached_tokens == 0 and prefix.cached_tokens > 0
    assert free.prompt_tokens == prefix.prompt_tokens
    assert free.steps == prefix.steps >= 1


def test_async_decide_runs_off_loop_and_batches(router: OnnxRouter) -> None:
    conversations = random_conversations(8, seed=3)
    expected = [router.decide_sync(m).route for m in conversations]
    assert isinstance(router, RouterBackend)

    async def main() -> list[str | None]:
        router.max_batch = 4
        try:
            decisions = await asyncio.gather(*(router.decide(m) for m in conversations))
        finally:
            router.max_batch = 1
        assert all(d.latency_ms > 0 for d in decisions)
        return [d.route for d in decisions]

    assert asyncio.run(main()) == expected


def test_engine_failure_surfaces_as_router_error(router: OnnxRouter, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(router.engine, "forward", broken)
    router.prefix_cache.clear()
    with pytest.raises(RouterError, match="boom"):
        router.decide_sync([{"role": "user", "content": "hi"}])

    async def main() -> None:
        with pytest.raises(RouterError, match="boom"):
            await router.decide([{"role": "user", "content": "hi"}])

    asyncio.run(main())
