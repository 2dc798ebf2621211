"""The device code path (IO binding, KV as OrtValues) run on the CPU: same logits, same decisions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from router_model.engine import OnnxCausalLM
from router_model.onnx_router import OnnxRouter
from router_model.routes import RouteSet

CPU = ["CPUExecutionProvider"]
CONVERSATIONS = [
    [{"role": "user", "content": "Write a JavaScript debounce function."}],
    [{"role": "user", "content": "Translate 'good morning' into French."}],
    [{"role": "user", "content": "Summarise this thread."}, {"role": "assistant", "content": "Paste it."},
     {"role": "user", "content": "here: the meeting moved to Tuesday"}],
]


def test_bound_forward_matches_host_forward(tiny_onnx_dir: Path) -> None:
    host = OnnxCausalLM(tiny_onnx_dir, providers=CPU)
    bound = OnnxCausalLM(tiny_onnx_dir, providers=CPU, io_binding=True)
    assert bound.bound and not host.bound
    prefix = np.array([[5, 17, 33, 8, 91, 4]], dtype=np.int64)
    host_logits, host_past = host.forward(prefix)
    bound_logits, bound_past = bound.forward(prefix)
    np.testing.assert_allclose(bound_logits, host_logits, rtol=1e-5, atol=1e-5)
    assert not isinstance(bound_past.values[0], np.ndarray)  # KV stays an OrtValue between steps
    # the same bound prefix feeds two continuations, read-only, as the prefix cache does
    for step in ([[12]], [[40]]):
        ids = np.array(step, dtype=np.int64)
        want, _ = host.forward(ids, host_past)
        got, after = bound.forward(ids, bound_past)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert after.length == bound_past.length + 1


def test_bound_repeat_past_tiles_on_the_device_like_the_host(tiny_onnx_dir: Path) -> None:
    host = OnnxCausalLM(tiny_onnx_dir, providers=CPU)
    bound = OnnxCausalLM(tiny_onnx_dir, providers=CPU, io_binding=True)
    ids = np.array([[5, 17, 33, 8, 91, 4]], dtype=np.int64)
    host_past, bound_past = host.forward(ids)[1], bound.forward(ids)[1]
    tiled = bound.repeat_past(bound_past, 3)
    assert (tiled.batch, tiled.length) == (3, 6)
    assert not isinstance(tiled.values[0], np.ndarray)  # an OrtValue made by the Tile run, never a host copy
    for got, want in zip(tiled.values, host.repeat_past(host_past, 3).values, strict=True):
        assert got.shape() == [3, *want.shape[1:]]
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)
    # rows of the tiled cache continue independently, each like the batch-1 cache
    steps = np.array([[12], [40], [12]], dtype=np.int64)
    logits, _ = bound.forward(steps, tiled)
    for row, tok in enumerate((12, 40, 12)):
        want_row, _ = host.forward(np.array([[tok]], dtype=np.int64), host_past)
        np.testing.assert_allclose(logits[row], want_row[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="batch-1"):
        bound.repeat_past(tiled, 2)


@pytest.mark.parametrize("decoder", ["tree", "batched", "best-first"])
def test_bound_router_decides_like_the_host_router(tiny_onnx_dir: Path, routes: RouteSet, decoder: str) -> None:
    host = OnnxRouter(tiny_onnx_dir, routes, providers=CPU)
    bound = OnnxRouter(tiny_onnx_dir, routes, providers=CPU, io_binding=True)
    assert host.tree_scoring and bound.tree_scoring
    bound.tree_scoring, bound.batched_trie = decoder == "tree", decoder == "batched"
    want = [host.decide_sync(c) for c in CONVERSATIONS]
    got = [bound.decide_sync(c) for c in CONVERSATIONS]
    assert [d.route for d in got] == [d.route for d in want]
    for g, w in zip(got, want, strict=True):  # the host router scored every candidate; bound ones, the winner
        assert g.scores.keys() <= w.scores.keys()
        assert all(abs(score - w.scores[name]) < 1e-4 for name, score in g.scores.items())
    # batched decisions take the device path too: the prefix tiled on the device, then one tree forward or
    # best-first in lockstep
    assert [d.route for d in bound.decide_batch_sync(CONVERSATIONS)] == [d.route for d in want]
