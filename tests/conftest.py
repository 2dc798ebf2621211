"""Shared fixtures: the local upstream under a real hypercorn, a Redis server, proxy configs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.harness import RedisServer, serve_app
from tests.upstream import Upstream

# Property tests: the same examples on every run (CI), no per-example deadline (a loaded machine is slow).
settings.register_profile("outerloop", derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("outerloop")


@pytest.fixture
def upstream() -> Iterator[tuple[Upstream, str]]:
    """A fresh OpenAI/Anthropic-shaped upstream; yields (controller, base_url ending in /v1)."""
    server = Upstream()
    with serve_app(server.app()) as port:
        yield server, f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    server = RedisServer()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from router_model import tiny

    return tiny.build(tmp_path_factory.mktemp("tiny") / "hf", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_onnx_dir(tiny_hf_dir: Path) -> Path:
    from router_model.export import export

    # export() runs the PyTorch parity check itself and raises if it fails.
    return export(tiny_hf_dir, tiny_hf_dir.parent / "onnx", check=True)


def export_tiny_encoder(directory: Path, corpus: list[str], vocab_size: int, layers: int) -> Path:
    """A tiny random BERT sentence encoder, its WordPiece tokenizer trained on ``corpus``, exported by optimum
    (feature-extraction) into ``directory``/onnx; that folder."""
    import shutil
    import warnings

    import torch
    from optimum.exporters.onnx import main_export
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel

    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator(corpus * 3, vocab_size=vocab_size,
                            special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    hf = directory / "hf"
    hf.mkdir()
    tok.save(str(hf / "tokenizer.json"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=64)
    BertModel(config).eval().save_pretrained(hf)
    out = directory / "onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(str(hf), output=out, task="feature-extraction", do_validation=False, local_files_only=True)
    shutil.copy2(hf / "tokenizer.json", out / "tokenizer.json")
    return out



def proxy_config(base_url: str, filters: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A one-listener config whose default model is `test/test-model` on the local upstream."""
    return {
        "listeners": [{"name": "test", "port": 0, "filters": filters or []}],
        "model_providers": [
            {"model": "test/test-model", "base_url": base_url, "default": True, "access_key": "sk-upstream-secret"},
            {"model": "test/slow", "base_url": base_url},
            {"model": "test/hang", "base_url": base_url, "timeouts": {"first_byte": 0.5}},
            {"model": "test/fail-500", "base_url": base_url},
            {"model": "test/fail-429", "base_url": base_url},
            {"model": "test/fail-400", "base_url": base_url},
        ],
        **extra,
    }
