"""CLI: `outerloop route`, `outerloop router export`, `outerloop router eval`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from core.cli import DEFAULT_CONFIG


def add_commands(subparsers: Any) -> None:
    route = subparsers.add_parser("route", help="print the routing decision for a text or conversation")
    route.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    route.add_argument("text", help="a user message, or a JSON list of chat messages")
    route.set_defaults(func=_route)

    router = subparsers.add_parser("router", help="router model tools: export, eval")
    sub = router.add_subparsers(dest="router_command", required=True)
    export = sub.add_parser("export", help="export a Qwen2 router model (HF id or local dir) to ONNX")
    export.add_argument("--model", required=True, help="e.g. katanemo/Arch-Router-1.5B or a local directory")
    export.add_argument("--out", required=True)
    export.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32")
    export.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    export.add_argument("--no-check", action="store_true", help="skip the ONNX vs PyTorch logits check")
    export.set_defaults(func=_export)
    evaluate = sub.add_parser("eval", help="accuracy, confusion matrix and latency on a labelled JSONL set")
    evaluate.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    evaluate.add_argument("data")
    evaluate.set_defaults(func=_eval)


def _backend(config_path: str, registry: Any) -> Any:
    from core.config_loader import load_config
    from plugins.routing.backends import build_backend
    from plugins.routing.config import preferences
    from router_model.routes import RouteSet

    config = load_config(config_path, registry)
    prefs = preferences(config)
    if not prefs:
        raise SystemExit(f"{config_path}: routing_preferences: no routes configured")
    routes = RouteSet.of([{"name": p.name, "description": p.description} for p in prefs])
    return build_backend(config.section("routing"), routes), routes


def _route(args: argparse.Namespace) -> int:
    text = args.text.strip()
    messages = json.loads(text) if text.startswith("[") else [{"role": "user", "content": args.text}]
    backend, _ = _backend(args.config, args.registry)

    async def run() -> Any:
        try:
            return await backend.decide(messages)
        finally:
            await backend.aclose()

    decision = asyncio.run(run())
    print(json.dumps({"route": decision.route or "other", "latency_ms": round(decision.latency_ms, 3),
                      "backend": decision.backend}))
    return 0


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from router_model.export import ExportError, export

    model = args.model
    if (model.startswith((".", "/", "~")) or Path(model).exists()) and not Path(model).expanduser().is_dir():
        print(f"outerloop router export: {model}: no such model directory", file=sys.stderr)
        return 1
    try:
        out = export(model, args.out, dtype=args.dtype, device=args.device, check=not args.no_check)
    except ExportError as exc:
        # Parity past tolerance, or the export extra missing: say so in one line, no traceback.
        print(f"outerloop router export: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"outerloop router export: cannot load {model}: {exc}", file=sys.stderr)
        return 1
    print(f"exported {model} to {out}", file=sys.stderr)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from router_model.evaluate import evaluate, load_examples, render_report

    backend, routes = _backend(args.config, args.registry)

    async def run() -> Any:
        try:
            return await evaluate(backend, load_examples(args.data), routes)
        finally:
            await backend.aclose()

    print(render_report(asyncio.run(run())))
    return 0
