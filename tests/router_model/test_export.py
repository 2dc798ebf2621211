from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from router_model.engine import OnnxCausalLM, causal_mask
from router_model.export import ExportError, check_parity, router_graph
from router_model.tokenizer import RouterTokenizer


def test_export_writes_a_loadable_router_graph(tiny_onnx_dir: Path, tiny_hf_dir: Path) -> None:
    report = check_parity(tiny_hf_dir, tiny_onnx_dir)
    assert report.max_abs_diff < 1e-3 and report.prompts == 3
    graph = onnx.load(str(tiny_onnx_dir / "model.onnx"), load_external_data=False).graph
    inputs = {i.name for i in graph.input}
    assert {"tree_mask", "logit_positions"} <= inputs and "attention_mask" not in inputs  # nothing reads it now
    assert {"tree_mask", "logit_positions", "logit_tokens"} <= inputs
    logits = next(o for o in graph.output if o.name == "logits")
    assert [d.dim_param for d in logits.type.tensor_type.shape.dim[1:]] == ["logit_positions", "logit_tokens"]
    assert "logsumexp" in {o.name for o in graph.output}
    router_graph(tiny_onnx_dir / "model.onnx")  # idempotent: a second pass changes nothing
    assert onnx.load(str(tiny_onnx_dir / "model.onnx"), load_external_data=False).graph == graph
    tok = RouterTokenizer.from_dir(tiny_onnx_dir)
    assert tok.encode("<|im_start|>") == [tok._tokenizer.token_to_id("<|im_start|>")]


def test_parity_check_fails_loudly_on_a_corrupted_model(tiny_onnx_dir: Path, tiny_hf_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_onnx_dir, broken)
    model = onnx.load(str(broken / "model.onnx"))
    target = next(t for t in model.graph.initializer if "norm" in t.name and t.dims == [64])
    target.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(target) * np.float32(3.0), target.name))
    onnx.save(model, str(broken / "model.onnx"))
    with pytest.raises(ExportError, match="differ from PyTorch"):
        check_parity(tiny_hf_dir, broken)


def test_router_graph_logits_at_positions_and_tree_mask(tiny_onnx_dir: Path) -> None:
    engine = OnnxCausalLM(tiny_onnx_dir, providers=["CPUExecutionProvider"])
    ids = np.array([[5, 17, 33, 8, 91, 4]], dtype=np.int64)
    every, _ = engine.forward(ids, logit_positions=range(6))
    assert every.shape == (1, 6, engine.vocab_size)
    for end in range(1, 7):  # position k's logits are the last-position logits of the first k + 1 tokens
        last, _ = engine.forward(ids[:, :end])
        np.testing.assert_allclose(every[0, end - 1], last[0], rtol=1e-5, atol=1e-5)
    # the causal mask given explicitly is the default; a mask hiding token 2 from the end changes the result
    causal = causal_mask(np.ones((1, 6), dtype=np.int64), 0, 6)
    explicit, _ = engine.forward(ids, tree_mask=causal)
    np.testing.assert_allclose(explicit, every[:, -1], rtol=1e-6, atol=1e-6)
    hidden = causal.copy()
    hidden[0, 0, 3:, 2] = False  # no later token sees token 2 (else it would reach the last one a layer up)
    assert not np.allclose(engine.forward(ids, tree_mask=hidden)[0], explicit, atol=1e-4)
    # ...and equals running without that token at all (same positions for the rest)
    keep = [0, 1, 3, 4, 5]
    without, _ = engine.forward(ids[:, keep], position_ids=np.array([keep]))
    np.testing.assert_allclose(engine.forward(ids, tree_mask=hidden)[0], without, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bound", [False, True], ids=["host", "io-binding"])
def test_token_logprobs_are_the_full_log_softmax_columns(tiny_onnx_dir: Path, bound: bool) -> None:
    engine = OnnxCausalLM(tiny_onnx_dir, providers=["CPUExecutionProvider"], io_binding=bound)
    assert engine.vocab_size > 100  # read from the graph's metadata: its logits are per asked token now
    ids = np.array([[5, 17, 33, 8, 91, 4], [9, 9, 40, 2, 7, 11]], dtype=np.int64)
    full, _ = engine.forward(ids, logit_positions=[2, 5])
    shifted = full - full.max(axis=-1, keepdims=True)
    want = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    tokens = [3, 17, 99, engine.vocab_size - 1]
    positions = np.broadcast_to(np.arange(6), (2, 6))
    got = engine.token_logprobs(ids, None, positions, causal_mask(np.ones((2, 6)), 0, 6), [2, 5], tokens)
    assert got.shape == (2, 2, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, want[:, :, tokens], rtol=1e-5, atol=1e-5)
