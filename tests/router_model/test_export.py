from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from router_model.engine import OnnxCausalLM, causal_mask
from router_model.export import ROUTER_GRAPH_KEY, ROUTER_GRAPH_VERSION, ExportError, check_parity, router_graph
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
    props = {p.key: p.value for p in onnx.load(str(tiny_onnx_dir / "model.onnx"), load_external_data=False).metadata_props}
    assert props[ROUTER_GRAPH_KEY] == ROUTER_GRAPH_VERSION  # tells a stale export (bench/routing.py rebuilds those)
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


def test_attention_is_fused_and_computes_what_the_traced_graph_does(
    tiny_onnx_dir: Path, tiny_hf_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from router_model import export as export_module

    ops = Counter(n.op_type for n in onnx.load(str(tiny_onnx_dir / "model.onnx"), load_external_data=False).graph.node)
    assert ops["MultiHeadAttention"] == 2 and ops["Softmax"] == 0  # one per layer of the tiny model
    # The same rewrite with the attention left as traced: same logits and normalisers, under a tree mask that
    # hides tokens, after a cached past, for a batch.
    plain = export_module.export(tiny_hf_dir, tmp_path / "unfused", router=False, check=False)
    monkeypatch.setattr(export_module, "_num_heads", lambda _: None)
    router_graph(plain / "model.onnx")
    assert "MultiHeadAttention" not in {n.op_type for n in onnx.load(str(plain / "model.onnx")).graph.node}
    ids = np.array([[5, 17, 33, 8, 91, 4, 60], [9, 9, 40, 2, 7, 11, 3]], dtype=np.int64)
    mask = causal_mask(np.ones((2, 9)), 2, 7)
    mask[0, 0, 4:, 4] = False
    mask[1, 0, 5:, 6] = False
    positions = np.broadcast_to(np.arange(2, 9), (2, 7))
    results = []
    for model_dir in (tiny_onnx_dir, plain):
        engine = OnnxCausalLM(model_dir, providers=["CPUExecutionProvider"])
        _, past = engine.forward(np.array([[70, 71], [72, 73]], dtype=np.int64))
        results.append(engine.token_logprobs(ids, past, positions, mask, [1, 4, 6], [3, 17, 99]))
        results.append(engine.forward(ids, past, tree_mask=mask, logit_positions=[6])[0])
    np.testing.assert_allclose(results[0], results[2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(results[1], results[3], rtol=1e-5, atol=1e-5)
    assert not np.allclose(results[1][0], results[1][1], atol=1e-3)  # the rows differ: a real comparison


def test_left_padded_rows_match_their_unpadded_run(tiny_onnx_dir: Path) -> None:
    """Pad positions see no token at all; their fully masked rows must not turn into NaNs that reach real rows."""
    engine = OnnxCausalLM(tiny_onnx_dir, providers=["CPUExecutionProvider"])
    ids = np.array([[0, 0, 5, 17, 33], [9, 9, 40, 2, 7]], dtype=np.int64)
    attention = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=np.int64)
    positions = np.array([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]], dtype=np.int64)
    padded, _ = engine.forward(ids, attention_mask=attention, position_ids=positions)
    alone, _ = engine.forward(ids[:1, 2:])
    assert np.all(np.isfinite(padded))
    np.testing.assert_allclose(padded[0], alone[0], rtol=1e-5, atol=1e-5)
