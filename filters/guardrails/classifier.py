"""An optional ONNX text classifier for prompt injection, run in a thread pool off the event loop."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("outerloop.guardrails")


class TextClassifier:
    """A sequence classifier exported to ONNX with a Hugging Face ``tokenizer.json``.

    Inputs named ``input_ids``, ``attention_mask`` and ``token_type_ids`` are fed when the model has them;
    the first output holds logits ``[batch, labels]`` (softmax; one column means sigmoid).
    """

    def __init__(self, model_path: str, tokenizer_path: str, label_index: int, max_length: int,
                 threads: int) -> None:
        self.model_path = model_path
        self.tokenizer_path = tokenizer_path
        self.label_index = label_index
        self.max_length = max_length
        self.threads = threads
        self._session: Any = None
        self._tokenizer: Any = None
        self._inputs: frozenset[str] = frozenset()
        self._executor: ThreadPoolExecutor | None = None

    def load(self) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(self.model_path, options, providers=["CPUExecutionProvider"])
        self._inputs = frozenset(i.name for i in self._session.get_inputs())
        tokenizer = Tokenizer.from_file(self.tokenizer_path)
        tokenizer.enable_truncation(self.max_length)
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        log.info("guardrails classifier loaded from %s (CPU execution provider)", Path(self.model_path).name)

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=max(1, self.threads), thread_name_prefix="guardrails")
        await asyncio.get_running_loop().run_in_executor(self._executor, self.load)

    async def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def score(self, text: str) -> float:
        """Probability of the configured label, computed in the classifier's thread pool."""
        if self._executor is None:
            raise RuntimeError("classifier used before start()")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.score_sync, text)

    def score_sync(self, text: str) -> float:
        encoding = self._tokenizer.encode(text)
        ids = np.asarray([encoding.ids or [0]], dtype=np.int64)
        feeds = {"input_ids": ids}
        if "attention_mask" in self._inputs:
            feeds["attention_mask"] = np.ones_like(ids)
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        logits = np.asarray(self._session.run(None, feeds)[0], dtype=np.float64).reshape(-1)
        if logits.size == 1:
            return float(1.0 / (1.0 + np.exp(-logits[0])))
        exp = np.exp(logits - logits.max())
        return float(exp[self.label_index] / exp.sum())
