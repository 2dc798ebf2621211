"""Exports a Hugging Face causal LM to ONNX for the router engine and checks it against PyTorch."""

from __future__ import annotations

import json
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


#: Written to the model's metadata under ROUTER_GRAPH_KEY; bumped when router_graph's rewrite changes.
ROUTER_GRAPH_VERSION = "2"  # 2: fused attention, normalisers from LogSoftmax
ROUTER_GRAPH_KEY = "outerloop.router_graph"


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
    # logsumexp = x[0] - log_softmax(x)[0]: ORT's LogSoftmax is one fused, threaded pass, where its
    # ReduceLogSumExp takes 7x as long (6.3 vs 0.9 ms for 20 positions of a 152k vocabulary on 2 cores).
    wide, first = full + "_fp32", "router_vocab_first"
    graph.initializer.append(helper.make_tensor(first, onnx.TensorProto.INT64, [], [0]))
    _insert(graph, list(graph.node).index(producer) + 1, [
        helper.make_node("Gather", [full, LOGIT_TOKENS], ["logits"], name="router_logit_tokens", axis=2),
        helper.make_node("Cast", [full], [wide], name="router_logits_fp32", to=onnx.TensorProto.FLOAT),
        helper.make_node("LogSoftmax", [wide], [wide + "_logsoftmax"], name="router_log_softmax", axis=-1),
        helper.make_node("Gather", [wide, first], [wide + "_first"], name="router_logit_first", axis=2),
        helper.make_node(
            "Gather", [wide + "_logsoftmax", first], [wide + "_logprob_first"], name="router_logprob_first", axis=2
        ),
        helper.make_node("Sub", [wide + "_first", wide + "_logprob_first"], [LOGSUMEXP], name="router_logsumexp"),
    ])
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
            props = {p.key: p.value for p in model.metadata_props}
            props.update({VOCAB_SIZE_KEY: str(dims_out[2].dim_value), ROUTER_GRAPH_KEY: ROUTER_GRAPH_VERSION})
            helper.set_model_props(model, props)
            dims_out[1].Clear()
            dims_out[1].dim_param = "logit_positions"
            dims_out[2].Clear()
            dims_out[2].dim_param = "logit_tokens"
    graph.output.append(
        helper.make_tensor_value_info(LOGSUMEXP, onnx.TensorProto.FLOAT, ["batch_size", "logit_positions"])
    )
    layers = len({_layer(n.name) for n in graph.node if "/layers." in n.name})
    heads = _num_heads(path.parent)
    fused = _fuse_attention(graph, heads) if heads else 0
    if fused and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    if fused < layers:
        logger.warning("router export: attention fused in %d of %d layers (the rest run unfused, slower)", fused, layers)
    _drop_dead_nodes(graph)
    # Loaded without external data, so models past 2 GB keep pointing at their weight files untouched.
    onnx.save_model(model, str(path))


def _num_heads(model_dir: Path) -> int | None:
    """The query heads of the exported model, from the config.json optimum writes next to it."""
    try:
        heads = json.loads((model_dir / "config.json").read_text())["num_attention_heads"]
    except (OSError, ValueError, KeyError):
        return None
    return int(heads)


def _fuse_attention(graph: Any, heads: int) -> int:
    """Replaces each layer's traced attention with ORT's MultiHeadAttention; returns how many it replaced.

    The traced attention is MatMul(q * c, k^T * c) (cast to the mask's dtype in fp16 models) + bias, Softmax,
    a NaN guard, MatMul with v, Transpose and Reshape to [batch, seq, hidden]: some fifteen kernels a layer
    over [batch, heads, seq, past + seq] tensors. MultiHeadAttention does it in one (15% off a CPU prefill, and
    on CUDA a fraction of the launches). It takes q as [batch, seq, hidden], k and v as the graph has them after
    the GQA repeat ([batch, heads, total, dim]), and the layer's additive mask (from `tree_mask`) as its
    attention bias, so tree attention is unchanged. The mask's -inf becomes half the lowest finite value (a
    score added to it stays finite, in fp16 too): the fused kernel has no NaN guard, and a pad position that
    sees nothing would turn its row, then through its values every row, into NaN. A layer that does not match
    the pattern is left as it is.
    """
    from onnx import TensorProto, helper, numpy_helper

    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {  # scalars only: the weights of a large model stay in their external files
        t.name: numpy_helper.to_array(t)
        for t in graph.initializer
        if t.data_location != TensorProto.EXTERNAL and int(np.prod(t.dims)) <= 1
    }
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            if int(np.prod(node.attribute[0].t.dims)) <= 1:
                constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    kv_type = next(i.type.tensor_type.elem_type for i in graph.input if i.name.startswith("past_key_values."))
    floor_value = np.finfo(helper.tensor_dtype_to_np_dtype(kv_type)).min / 2

    def op(name: str, op_type: str) -> Any:
        node = producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def only_user(name: str, op_type: str) -> Any:
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    def attr(node: Any, name: str) -> Any:
        return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)

    def unscaled(name: str) -> tuple[str, float]:
        """`x` and `c` where `name` is x * c for a scalar constant c; else `name` and 1."""
        mul = op(name, "Mul")
        if mul is not None:
            for i, other in ((0, 1), (1, 0)):
                value = constants.get(mul.input[other])
                if value is not None and value.size == 1:
                    return mul.input[i], float(value.reshape(()))
        return name, 1.0

    def uncast(name: str) -> tuple[str, int | None]:
        cast = op(name, "Cast")
        return (cast.input[0], int(attr(cast, "to"))) if cast is not None else (name, None)

    shape, floor = "router_mha_query_shape", "router_mha_bias_floor"
    fused = 0
    for softmax in [n for n in graph.node if n.op_type == "Softmax" and "/layers." in n.name]:
        add = op(softmax.input[0], "Add")
        if add is None:
            continue
        side = next((i for i in (0, 1) if op(uncast(add.input[i])[0], "MatMul") is not None), None)
        if side is None:
            continue
        scores, cast_to = uncast(add.input[side])
        qk, bias = producer[scores], add.input[1 - side]
        query, q_scale = unscaled(qk.input[0])
        key_t, k_scale = unscaled(qk.input[1])
        transpose = op(key_t, "Transpose")
        if transpose is None or list(attr(transpose, "perm") or []) != [0, 1, 3, 2]:
            continue
        probs = softmax.output[0]
        guard = next((u for u in consumers.get(probs, []) if u.op_type == "Where"), None)
        if guard is not None and op(guard.input[0], "IsNaN") is not None:
            probs = guard.output[0]
        av = only_user(probs, "MatMul")
        if av is None or av.input[0] != probs:
            continue
        value = uncast(av.input[1])[0] if cast_to is not None else av.input[1]
        back = only_user(av.output[0], "Transpose")
        merge = only_user(back.output[0], "Reshape") if back is not None else None
        if merge is None or list(attr(back, "perm") or []) != [0, 2, 1, 3]:
            continue
        name = softmax.name.rsplit("/", 1)[0] + "/router_mha"
        out = merge.output[0] if cast_to is None else name + "_out"
        nodes = [
            helper.make_node("Cast", [bias], [name + "_bias_cast"], name=name + "_bias_cast", to=kv_type),
            helper.make_node("Max", [name + "_bias_cast", floor], [name + "_bias"], name=name + "_bias"),
            helper.make_node("Transpose", [query], [name + "_q_bsnh"], name=name + "_q_bsnh", perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", [name + "_q_bsnh", shape], [name + "_q"], name=name + "_q"),
            helper.make_node(
                "MultiHeadAttention",
                [name + "_q", transpose.input[0], value, "", "", name + "_bias"],
                [out],
                name=name,
                domain="com.microsoft",
                num_heads=heads,
                scale=q_scale * k_scale,
            ),
        ]
        if cast_to is not None:  # the traced graph went on in the mask's dtype; so does the fused one
            nodes.append(helper.make_node("Cast", [out], [merge.output[0]], name=name + "_out_cast", to=cast_to))
        at = list(graph.node).index(merge)
        graph.node.remove(merge)  # its output is now the fused node's; the rest falls to _drop_dead_nodes
        _insert(graph, at, nodes)
        fused += 1
    if fused:
        graph.initializer.append(helper.make_tensor(shape, TensorProto.INT64, [3], [0, 0, -1]))
        graph.initializer.append(numpy_helper.from_array(np.array(floor_value), floor))
    return fused


def _insert(graph: Any, at: int, nodes: list[Any]) -> None:
    for offset, node in enumerate(nodes):  # protobuf repeated fields take no slice assignment
        graph.node.insert(at + offset, node)


def _layer(node_name: str) -> str:
    """The decoder layer a traced node belongs to: "3" for "/model/layers.3/self_attn/MatMul"."""
    return node_name.split("/layers.", 1)[1].split("/", 1)[0]


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
        layer = _layer(node.name)
        for name in node.input:
            if name in derived and name not in in_layer:
                candidates.setdefault(name, set()).add(layer)
    layers = {_layer(n.name) for n in graph.node if "/layers." in n.name}
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
