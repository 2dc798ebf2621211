"""Exports a Hugging Face causal LM to ONNX for the router engine and checks it against PyTorch."""

from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router_model.engine import LOGIT_POSITIONS, LOGIT_TOKENS, LOGSUMEXP, TREE_MASK, VOCAB_SIZE_KEY

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
    router: bool = True,
    check: bool = True,
    tolerance: float | None = None,
) -> Path:
    """Exports `model` (a Hugging Face id or a local directory) to `out/model.onnx` plus tokenizer files.

    `router` rewrites the graph for the router engine (see `router_graph`): logits only at the positions asked
    for, and the attention mask as a 4D input so one forward scores the whole trie of route names.
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
    if router:
        router_graph(out / "model.onnx")
    if check:
        report = check_parity(model, out, dtype=dtype, device=device, tolerance=tolerance)
        logger.info("router export parity ok: max |diff| %.2e <= %.1e", report.max_abs_diff, report.tolerance)
    return out


def router_graph(path: Path) -> None:
    """Rewrites an optimum causal-LM graph for the router: logits at chosen positions only, and a tree mask.

    Adds two inputs. `tree_mask` [batch, 1, seq, past + seq] (bool, True = may attend) replaces the
    causal-and-padding mask the graph derives from `attention_mask`, so one forward can score the conversation
    and the whole trie of route names (each node sees only its ancestors: tree attention). The LM head runs on
    `logit_positions` [n] only: a router needs one to a few dozen positions, and with a 152k vocabulary the
    head would dominate prefill otherwise. `logits` holds the `logit_tokens` [m] columns only, and a new output
    `logsumexp` [batch, n] each position's normaliser, so a decision moves kilobytes off the device instead
    of n rows of the vocabulary. Idempotent.
    """
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    if any(i.name == LOGIT_POSITIONS for i in graph.input):
        return
    producer = next((n for n in graph.node if "logits" in n.output), None)
    if producer is None:
        raise ExportError(f"{path}: no node produces 'logits'")
    mask = _shared_attention_mask(graph)
    if mask is None:
        raise ExportError(f"{path}: cannot find the attention mask the layers share; not an optimum decoder export?")

    hidden = producer.input[0]
    picked = hidden + "_at_logit_positions"
    producer.input[0] = picked
    graph.node.insert(
        list(graph.node).index(producer),
        helper.make_node("Gather", [hidden, LOGIT_POSITIONS], [picked], name="router_logit_positions", axis=1),
    )
    # The head's full output stays on the device: the host gets the logits of the tokens asked for, and each
    # position's log-normaliser (in fp32 whatever the model's dtype), a few KB instead of n x 152k floats.
    full = "router_full_logits"
    producer.output[list(producer.output).index("logits")] = full
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    reduce_inputs = [full + "_fp32"]
    reduce_attrs: dict[str, Any] = {"keepdims": 0}
    if opset >= 18:  # axes moved from an attribute to an input in opset 18
        graph.initializer.append(helper.make_tensor("router_vocab_axis", onnx.TensorProto.INT64, [1], [2]))
        reduce_inputs.append("router_vocab_axis")
    else:
        reduce_attrs["axes"] = [2]
    at = list(graph.node).index(producer) + 1
    graph.node.insert(at, helper.make_node("Gather", [full, LOGIT_TOKENS], ["logits"], name="router_logit_tokens", axis=2))
    graph.node.insert(at + 1, helper.make_node("Cast", [full], [full + "_fp32"], name="router_logits_fp32", to=1))
    graph.node.insert(
        at + 2, helper.make_node("ReduceLogSumExp", reduce_inputs, [LOGSUMEXP], name="router_logsumexp", **reduce_attrs)
    )
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == mask:
                node.input[i] = TREE_MASK
    dims: list[str | int | None] = ["batch_size", 1, "sequence_length", "past_sequence_length + sequence_length"]
    graph.input.append(helper.make_tensor_value_info(TREE_MASK, onnx.TensorProto.BOOL, dims))
    graph.input.append(helper.make_tensor_value_info(LOGIT_POSITIONS, onnx.TensorProto.INT64, ["logit_positions"]))
    graph.input.append(helper.make_tensor_value_info(LOGIT_TOKENS, onnx.TensorProto.INT64, ["logit_tokens"]))
    for output in graph.output:
        if output.name == "logits":
            dims_out = output.type.tensor_type.shape.dim
            if len(dims_out) != 3 or not dims_out[2].HasField("dim_value"):
                raise ExportError(f"{path}: 'logits' is not [batch, sequence, vocabulary] with a fixed vocabulary")
            helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                           VOCAB_SIZE_KEY: str(dims_out[2].dim_value)})
            dims_out[1].Clear()
            dims_out[1].dim_param = "logit_positions"
            dims_out[2].Clear()
            dims_out[2].dim_param = "logit_tokens"
    graph.output.append(
        helper.make_tensor_value_info(LOGSUMEXP, onnx.TensorProto.FLOAT, ["batch_size", "logit_positions"])
    )
    _drop_dead_nodes(graph)
    # Loaded without external data, so models past 2 GB keep pointing at their weight files untouched.
    onnx.save_model(model, str(path))


def _shared_attention_mask(graph: Any) -> str | None:
    """The tensor derived from `attention_mask` outside the layers that every layer's attention reads."""
    derived = {"attention_mask"}
    for node in graph.node:  # ONNX graphs are topologically sorted
        if any(i in derived for i in node.input):
            derived.update(node.output)
    in_layer = {o for n in graph.node if "/layers." in n.name for o in n.output}
    candidates: dict[str, set[str]] = {}
    for node in graph.node:
        if "/layers." not in node.name:
            continue
        layer = node.name.split("/layers.", 1)[1].split("/", 1)[0]
        for name in node.input:
            if name in derived and name not in in_layer:
                candidates.setdefault(name, set()).add(layer)
    layers = {n.name.split("/layers.", 1)[1].split("/", 1)[0] for n in graph.node if "/layers." in n.name}
    shared = [name for name, seen in candidates.items() if seen == layers]
    return shared[0] if len(shared) == 1 else None


def _drop_dead_nodes(graph: Any) -> None:
    """Removes nodes no graph output depends on, and graph inputs nothing reads any more."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    unused = [i for i in graph.input if i.name not in needed]
    for value in unused:
        graph.input.remove(value)


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
