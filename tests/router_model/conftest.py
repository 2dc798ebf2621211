"""Fixtures: a tiny random Qwen2 router model, trained tokenizer and ONNX export, built once per session."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from router_model.routes import RouteSet

DATA = Path(__file__).resolve().parents[2] / "bench" / "data" / "routing"


@pytest.fixture(scope="session")
def routes() -> RouteSet:
    import yaml

    return RouteSet.of(yaml.safe_load((DATA / "routes.yaml").read_text())["routes"])


@pytest.fixture(scope="session")
def dev_examples() -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / "dev.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def router(tiny_onnx_dir: Path, routes: RouteSet):  # type: ignore[no-untyped-def]
    from router_model.onnx_router import OnnxRouter

    return OnnxRouter(tiny_onnx_dir, routes, providers=["CPUExecutionProvider"])
