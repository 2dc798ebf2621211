"""ONNX Runtime session over an optimum causal-LM export: one forward step with an explicit KV cache."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from router_model.backend import RouterModelMissing

TREE_MASK = "tree_mask"  # the inputs and output export.router_graph adds to a graph (see there)
LOGIT_POSITIONS = "logit_positions"
LOGIT_TOKENS = "logit_tokens"
LOGSUMEXP = "logsumexp"
VOCAB_SIZE_KEY = "outerloop.vocab_size"

logger = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEFAULT_PROVIDERS = (CUDA, CPU)

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
_ONNX_ELEM_TYPES = {np.dtype(np.float32): 1, np.dtype(np.float16): 10}  # onnx.TensorProto.FLOAT, FLOAT16


def tile_graph(count: int, dtype: np.dtype[Any]) -> bytes:
    """An ONNX graph that repeats `count` KV tensors [1, heads, length, dim] along the batch axis.

    Run on the model's provider with IO binding, it copies a cached prefix into a batch without leaving the
    device: a batched prefill would recompute the prefix, a host copy would cross PCIe twice.
    """
    from onnx import TensorProto, helper

    elem = _ONNX_ELEM_TYPES[np.dtype(dtype)]
    inputs = [helper.make_tensor_value_info(f"kv_{i}", elem, [1, "heads", "length", "dim"]) for i in range(count)]
    inputs.append(helper.make_tensor_value_info("repeats", TensorProto.INT64, [4]))
    outputs = [
        helper.make_tensor_value_info(f"tiled_{i}", elem, ["batch", "heads", "length", "dim"]) for i in range(count)
    ]
    nodes = [helper.make_node("Tile", [f"kv_{i}", "repeats"], [f"tiled_{i}"]) for i in range(count)]
    graph = helper.make_graph(nodes, "router_kv_tile", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    data: bytes = model.SerializeToString()
    return data


def cuda_loadable() -> bool:
    """Whether the CUDA execution provider can load, found without ORT's loud error output."""
    if CUDA not in ort.get_available_providers():
        return False
    if hasattr(ort, "preload_dlls") and importlib.util.find_spec("nvidia") is not None:
        # CUDA and cuDNN from pip-installed nvidia-* wheels; preload_dlls reports failures on stdout.
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                ort.preload_dlls(directory="")
            except Exception:  # noqa: BLE001 - probing only: any failure means "no CUDA"
                return False
    lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if os.name == "posix" and lib.is_file():
        try:
            ctypes.CDLL(str(lib))
        except OSError:
            return False
    return True


def resolve_providers(preference: Sequence[str] | None) -> list[str]:
    """The preferred providers that can actually run here, CPU always last as the fallback."""
    wanted = list(preference or DEFAULT_PROVIDERS)
    out = [p for p in wanted if p != CUDA or cuda_loadable()]
    out = [p for p in out if p in ort.get_available_providers()]
    if CPU not in out:
        out.append(CPU)
    return out


def causal_mask(attention_mask: np.ndarray, past_length: int, seq: int) -> np.ndarray:
    """The 4D mask [batch, 1, seq, past + seq] a decoder builds from a 2D padding mask: real and not ahead."""
    total = past_length + seq
    ahead = np.arange(total)[None, :] <= (past_length + np.arange(seq))[:, None]  # [seq, total]
    mask: np.ndarray = attention_mask.astype(np.bool_)[:, None, None, :] & ahead[None, None]
    return mask


@dataclass(frozen=True)
class PastKV:
    """Per-layer key/value tensors (numpy arrays on CPU, OrtValues on the device) and their length.

    Read-only: a forward returns a new PastKV (the graph concatenates), so one prefix can feed many requests.
    """

    values: tuple[Any, ...]
    length: int
    batch: int


class OnnxCausalLM:
    """A causal LM exported by optimum with `text-generation-with-past`."""

    def __init__(
        self,
        model_dir: str | Path,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        device_id: int = 0,
        io_binding: bool | None = None,
    ) -> None:
        path = Path(model_dir) / "model.onnx"
        if not path.is_file():
            raise RouterModelMissing(f"{path} not found: export the router model first (outerloop router export)")
        wanted = list(providers or DEFAULT_PROVIDERS)
        resolved = resolve_providers(wanted)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        provider_options: list[dict[str, str]] = [{"device_id": str(device_id)} if p == CUDA else {} for p in resolved]
        # Keep ORT's default logger quiet while CUDA is tried; a failed load is reported in one line below.
        ort.set_default_logger_severity(4)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=resolved, provider_options=provider_options)
        except Exception:  # noqa: BLE001 - any CUDA session failure falls back to the CPU provider
            if resolved == [CPU]:
                raise
            self.session = ort.InferenceSession(str(path), options, providers=[CPU])
        finally:
            ort.set_default_logger_severity(2)
        self.provider: str = self.session.get_providers()[0]
        if CUDA in wanted and self.provider != CUDA:
            logger.warning("router model: CUDA execution provider unavailable, running on %s", self.provider)
        else:
            logger.info("router model: running on %s", self.provider)
        self.on_device = self.provider == CUDA
        self.device_id = device_id
        #: KV as OrtValues bound in place (IO binding): always on CUDA; on the CPU only when asked, which
        #: lets machines without a GPU exercise the device code path.
        self.bound = self.on_device if io_binding is None else io_binding
        self._device = "cuda" if self.on_device else "cpu"
        self._options, self._provider_options = options, provider_options
        self._tiler: ort.InferenceSession | None = None

        inputs = {i.name: i for i in self.session.get_inputs()}
        self._past_names = sorted(
            (n for n in inputs if n.startswith("past_key_values.")),
            key=lambda n: (int(n.split(".")[1]), n.endswith(".value")),
        )
        self._present_names = [n.replace("past_key_values.", "present.") for n in self._past_names]
        self._has_position_ids = "position_ids" in inputs
        self._has_attention_mask = "attention_mask" in inputs
        #: Exported by `outerloop router export` (export.router_graph): a 4D mask input and logits at chosen
        #: positions, which lets one forward score a whole trie. Plain optimum exports run without it.
        self.tree = {TREE_MASK, LOGIT_POSITIONS, LOGIT_TOKENS} <= inputs.keys()
        first = inputs[self._past_names[0]]
        self.num_layers = len(self._past_names) // 2
        self.kv_heads = int(first.shape[1])
        self.head_dim = int(first.shape[3])
        self.kv_dtype = _ORT_DTYPES[first.type]
        vocab = next(o for o in self.session.get_outputs() if o.name == "logits").shape[2]
        if not isinstance(vocab, int):  # the router graph's logits are per asked token; it records the vocabulary
            vocab = self.session.get_modelmeta().custom_metadata_map[VOCAB_SIZE_KEY]
        self.vocab_size = int(vocab)
        self._all_tokens = np.arange(self.vocab_size, dtype=np.int64)

    def empty_past(self, batch: int) -> PastKV:
        shape = (batch, self.kv_heads, 0, self.head_dim)
        if self.bound:
            empty = tuple(
                ort.OrtValue.ortvalue_from_shape_and_type(shape, self.kv_dtype, self._device, self.device_id)
                for _ in self._past_names
            )
        else:
            empty = tuple(np.zeros(shape, dtype=self.kv_dtype) for _ in self._past_names)
        return PastKV(empty, 0, batch)

    def forward(
        self,
        input_ids: np.ndarray,
        past: PastKV | None = None,
        attention_mask: np.ndarray | None = None,
        position_ids: np.ndarray | None = None,
        tree_mask: np.ndarray | None = None,
        logit_positions: Sequence[int] | None = None,
    ) -> tuple[np.ndarray, PastKV]:
        """Runs input_ids [batch, seq] after `past`; returns last-position logits [batch, vocab] (float32).

        `attention_mask` [batch, past + seq] marks real tokens, made causal as usual. A tree-capable graph
        (`self.tree`) also takes `tree_mask` [batch, 1, seq, past + seq] (which positions each new token sees,
        replacing the causal mask) and `logit_positions`, which then returns logits [batch, n, vocab].
        """
        feeds, past, total = self._feeds(input_ids, past, attention_mask, position_ids, tree_mask, logit_positions)
        if self.tree:
            feeds[LOGIT_TOKENS] = self._all_tokens
        (logits,), present = self._run(feeds, past, ["logits"])
        out = logits if logit_positions is not None else logits[:, -1, :]
        return np.asarray(out, dtype=np.float32), PastKV(present, total, input_ids.shape[0])

    def token_logprobs(
        self,
        input_ids: np.ndarray,
        past: PastKV | None,
        position_ids: np.ndarray,
        tree_mask: np.ndarray,
        logit_positions: Sequence[int],
        tokens: Sequence[int],
    ) -> np.ndarray:
        """Log-probabilities of `tokens` at `logit_positions`: [batch, n, len(tokens)] (float32). Tree graphs only
        (`_feeds` refuses others).

        The normalisers are computed in the graph, next to the logits, so only these columns leave the device.
        """
        feeds, past, _ = self._feeds(input_ids, past, None, position_ids, tree_mask, logit_positions)
        feeds[LOGIT_TOKENS] = np.asarray(tokens, dtype=np.int64)
        (logits, norm), _ = self._run(feeds, past, ["logits", LOGSUMEXP])
        out: np.ndarray = logits.astype(np.float32) - norm[..., None]
        return out

    def _feeds(
        self,
        input_ids: np.ndarray,
        past: PastKV | None,
        attention_mask: np.ndarray | None,
        position_ids: np.ndarray | None,
        tree_mask: np.ndarray | None,
        logit_positions: Sequence[int] | None,
    ) -> tuple[dict[str, Any], PastKV, int]:
        batch, seq = input_ids.shape
        past = past or self.empty_past(batch)
        if past.batch != batch:
            raise ValueError(f"past has batch {past.batch}, input has batch {batch}")
        if (tree_mask is not None or logit_positions is not None) and not self.tree:
            raise ValueError("this model has no tree mask input: export it with `outerloop router export`")
        total = past.length + seq
        if attention_mask is None:
            attention_mask = np.ones((batch, total), dtype=np.int64)
        if position_ids is None:
            position_ids = np.broadcast_to(np.arange(past.length, total, dtype=np.int64), (batch, seq))
        feeds: dict[str, Any] = {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64)}
        if self._has_attention_mask:
            feeds["attention_mask"] = np.ascontiguousarray(attention_mask, dtype=np.int64)
        if self._has_position_ids:
            feeds["position_ids"] = np.ascontiguousarray(position_ids, dtype=np.int64)
        if self.tree:
            if tree_mask is None:
                tree_mask = causal_mask(attention_mask, past.length, seq)
            feeds[TREE_MASK] = np.ascontiguousarray(tree_mask, dtype=np.bool_)
            positions = [seq - 1] if logit_positions is None else list(logit_positions)
            feeds[LOGIT_POSITIONS] = np.array(positions, dtype=np.int64)
        return feeds, past, total

    def _run(self, feeds: dict[str, Any], past: PastKV, names: list[str]) -> tuple[list[np.ndarray], tuple[Any, ...]]:
        """The named outputs (on the host) and the present KV (host arrays, or device OrtValues when bound)."""
        if not self.bound:
            feeds.update(zip(self._past_names, past.values, strict=True))
            outputs = self.session.run([*names, *self._present_names], feeds)
            return outputs[: len(names)], tuple(outputs[len(names) :])
        # IO binding keeps the KV cache on the GPU between steps: past tensors are the previous step's device
        # outputs, presents are allocated on the device, and only the named outputs come back to the host.
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, self._device, self.device_id))
        for name, value in zip(self._past_names, past.values, strict=True):
            binding.bind_ortvalue_input(name, value)
        for name in names:
            binding.bind_output(name, "cpu")
        for name in self._present_names:
            binding.bind_output(name, self._device, self.device_id)
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()
        return [v.numpy() for v in values[: len(names)]], tuple(values[len(names) :])

    def repeat_past(self, past: PastKV, batch: int) -> PastKV:
        """`past` (batch 1) repeated `batch` times, where it lives: numpy on the host, a Tile run on the device."""
        if past.batch != 1:
            raise ValueError(f"repeat_past needs a batch-1 KV cache, got batch {past.batch}")
        if not self.bound:
            return PastKV(tuple(np.repeat(v, batch, axis=0) for v in past.values), past.length, batch)
        tiler = self._tile_session()
        binding = tiler.io_binding()
        for i, value in enumerate(past.values):
            binding.bind_ortvalue_input(f"kv_{i}", value)
        binding.bind_cpu_input("repeats", np.array([batch, 1, 1, 1], dtype=np.int64))
        for i in range(len(past.values)):
            binding.bind_output(f"tiled_{i}", self._device, self.device_id)
        tiler.run_with_iobinding(binding)
        return PastKV(tuple(binding.get_outputs()), past.length, batch)

    def _tile_session(self) -> ort.InferenceSession:
        if self._tiler is None:
            graph = tile_graph(len(self._past_names), np.dtype(self.kv_dtype))
            providers = self.session.get_providers()
            options = [self._provider_options[0] if p == CUDA else {} for p in providers]
            self._tiler = ort.InferenceSession(graph, self._options, providers=providers, provider_options=options)
        return self._tiler
