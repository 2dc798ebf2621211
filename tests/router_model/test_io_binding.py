"""The device code path (IO binding, KV as OrtValues) run on the CPU: same logits, same decisions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


def test_bound_router_decides_like_the_host_router(tiny_onnx_dir: Path, routes: RouteSet) -> None:
    host = OnnxRouter(tiny_onnx_dir, routes, providers=CPU)
    bound = OnnxRouter(tiny_onnx_dir, routes, providers=CPU, io_binding=True)
    expected = [host.decide_sync(c).route for c in CONVERSATIONS]
    assert [bound.decide_sync(c).route for c in CONVERSATIONS] == expected
    # batched decisions take the device path too: a batched prefix prefilled directly, best-first search
    assert [d.route for d in bound.decide_batch_sync(CONVERSATIONS)] == expected
