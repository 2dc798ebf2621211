from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from router_model.export import ExportError, check_parity
from router_model.tokenizer import RouterTokenizer


def test_export_writes_a_loadable_model_with_last_position_logits(tiny_onnx_dir: Path, tiny_hf_dir: Path) -> None:
    report = check_parity(tiny_hf_dir, tiny_onnx_dir)
    assert report.max_abs_diff < 1e-3 and report.prompts == 3
    graph = onnx.load(str(tiny_onnx_dir / "model.onnx"), load_external_data=False).graph
    logits = next(o for o in graph.output if o.name == "logits")
    assert logits.type.tensor_type.shape.dim[1].dim_value == 1
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
