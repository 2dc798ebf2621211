"""Exports a Hugging Face causal LM to ONNX for the router engine and checks it against PyTorch."""

from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "config.json",
)

SAMPLE_PROMPTS = (
    '<|im_start|>user\nWrite a Python function that reverses a list.<|im_end|>\n<|im_start|>assistant\n{"route": "',
    "Summarize this meeting transcript in three bullet points, please.",
    "Translate into German: the package was delivered to the wrong address.",
)


class ExportError(RuntimeError):
    """The export failed or the exported model disagrees with the PyTorch model."""


@dataclass(frozen=True)
class ParityReport:
    max_abs_diff: float
    tolerance: float
    prompts: int


def _require_export_extra() -> None:
    try:
        import optimum.exporters.onnx  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "exporting needs the optional export extra (torch, transformers, optimum-onnx): "
            "pip install 'outerloop[export]'"
        ) from exc


def export(
    model: str | Path,
    out: str | Path,
    dtype: str = "fp32",
    device: str = "cpu",
    last_logits_only: bool = True,
    check: bool = True,
    tolerance: float | None = None,
) -> Path:
    """Exports `model` (a Hugging Face id or a local directory) to `out/model.onnx` plus tokenizer files.

    `last_logits_only` slices the hidden states before the LM head so the graph returns logits for the last
    position only: a router never needs the others, and with a 152k vocabulary they dominate prefill cost.
    """
    if dtype not in ("fp32", "fp16"):
        raise ValueError(f"dtype must be fp32 or fp16, not {dtype!r}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, not {device!r}")
    _require_export_extra()
    from optimum.exporters.onnx import main_export

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # The torch tracer and optimum warn about shape-dependent branches they trace away; the parity check
    # below is what decides whether the graph is right, so those warnings are noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(
            str(model),
            output=out,
            task="text-generation-with-past",
            dtype=dtype,
            device=device,
            do_validation=False,  # our own parity check below covers the exported graph we actually ship
            local_files_only=Path(str(model)).is_dir(),
        )
    src = Path(str(model))
    if src.is_dir():
        for name in TOKENIZER_FILES:
            if (src / name).is_file() and not (out / name).is_file():
                shutil.copy2(src / name, out / name)
    if last_logits_only:
        prune_logits(out / "model.onnx")
    if check:
        report = check_parity(model, out, dtype=dtype, device=device, tolerance=tolerance)
        logger.info("router export parity ok: max |diff| %.2e <= %.1e", report.max_abs_diff, report.tolerance)
    return out


def prune_logits(path: Path) -> None:
    """Rewrites the graph so `logits` is computed for the last position only ([batch, 1, vocab])."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    producer = next((n for n in graph.node if "logits" in n.output), None)
    if producer is None:
        raise ExportError(f"{path}: no node produces 'logits'")
    if any(n.name == "router_last_position" for n in graph.node):
        return
    hidden = producer.input[0]
    sliced = hidden + "_last_position"
    consts = [
        helper.make_tensor(name, onnx.TensorProto.INT64, [1], [value])
        for name, value in (("router_slice_start", -1), ("router_slice_end", 2**62), ("router_slice_axis", 1))
    ]
    graph.initializer.extend(consts)
    node = helper.make_node(
        "Slice",
        [hidden, "router_slice_start", "router_slice_end", "router_slice_axis"],
        [sliced],
        name="router_last_position",
    )
    producer.input[0] = sliced
    index = list(graph.node).index(producer)
    graph.node.insert(index, node)
    for output in graph.output:
        if output.name == "logits":
            dims = output.type.tensor_type.shape.dim
            if len(dims) == 3:
                dims[1].ClearField("dim_param")
                dims[1].dim_value = 1
    # Loaded without external data, so models past 2 GB keep pointing at their weight files untouched.
    onnx.save_model(model, str(path))


def check_parity(
    model: str | Path,
    onnx_dir: str | Path,
    dtype: str = "fp32",
    device: str = "cpu",
    tolerance: float | None = None,
    prompts: Sequence[str] = SAMPLE_PROMPTS,
) -> ParityReport:
    """Compares last-position logits of the ONNX model with the PyTorch model; raises ExportError past tolerance."""
    _require_export_extra()
    import torch
    from transformers import AutoModelForCausalLM

    from router_model.engine import OnnxCausalLM
    from router_model.tokenizer import RouterTokenizer

    tol = tolerance if tolerance is not None else (1e-3 if dtype == "fp32" else 5e-2)
    torch_dtype = torch.float16 if dtype == "fp16" else torch.float32
    # Typed as a Module: transformers' decorated `PreTrainedModel.to` has a signature mypy cannot read.
    loaded: torch.nn.Module = AutoModelForCausalLM.from_pretrained(
        str(model), dtype=torch_dtype, local_files_only=Path(str(model)).is_dir()
    )
    reference = loaded.to(device).eval()
    tokenizer = RouterTokenizer.from_dir(onnx_dir)
    providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    engine = OnnxCausalLM(onnx_dir, providers=providers)
    worst = 0.0
    for prompt in prompts:
        ids = tokenizer.encode(prompt)
        with torch.no_grad():
            expected = reference(torch.tensor([ids], device=device)).logits[0, -1].float().cpu().numpy()
        got, _ = engine.forward(np.array([ids], dtype=np.int64))
        if not np.all(np.isfinite(got)):
            raise ExportError(f"{onnx_dir}: ONNX logits are not finite for prompt {prompt[:40]!r}")
        diff = float(np.max(np.abs(got[0] - expected)))
        worst = max(worst, diff)
        if diff > tol:
            raise ExportError(
                f"{onnx_dir}: ONNX logits differ from PyTorch by {diff:.3g} (tolerance {tol:.1g}) "
                f"on prompt {prompt[:40]!r}; the export is broken"
            )
    return ParityReport(worst, tol, len(prompts))
