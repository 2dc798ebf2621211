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
    route.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                       help="the config file (default: %(default)s, relative to the current directory)")
    route.add_argument("text", help="a user message, or a JSON list of chat messages")
    route.set_defaults(func=_route)

    router = subparsers.add_parser("router", help="router model tools: export, eval")
    sub = router.add_subparsers(dest="router_command", required=True)
    export = sub.add_parser("export", help="export a Qwen2 router model (HF id or local dir) to ONNX")
    export.add_argument("--model", required=True, help="e.g. katanemo/Arch-Router-1.5B or a local directory")
    export.add_argument("--out", required=True, help="directory to write model.onnx and the tokenizer files to")
    export.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32",
                        help="weight precision of the exported model (default: %(default)s)")
    export.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the export runs (default: %(default)s)")
    export.add_argument("--no-check", action="store_true", help="skip the ONNX vs PyTorch logits check")
    export.set_defaults(func=_export)
    evaluate = sub.add_parser("eval", help="accuracy, confusion matrix and latency on a labelled JSONL set")
    evaluate.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                          help="the config file (default: %(default)s, relative to the current directory)")
    evaluate.add_argument("data", help="a JSONL file, one {\"messages\": [...], \"route\": NAME} per line")
    evaluate.set_defaults(func=_eval)


def _backend(config_path: str, registry: Any) -> Any:
    """The configured backend, or exit with one line saying why there is none (the proxy would fall back)."""
    from core.config_loader import load_config
    from plugins.routing.backends import build_backend, fallback_reason
    from plugins.routing.config import preferences
    from router_model.routes import RouteSet

    config = load_config(config_path, registry)
    prefs = preferences(config)
    if not prefs:
        raise SystemExit(f"{config_path}: routing_preferences: no routes configured")
    routes = RouteSet.of([{"name": p.name, "description": p.description} for p in prefs])
    try:
        backend = build_backend(config.section("routing"), routes)
        backend.warm_up()  # so latencies printed are the steady state a serving proxy has
        return backend, routes
    except Exception as exc:  # noqa: BLE001 - the proxy falls back on any of these; the CLI says which
        raise SystemExit(
            f"{config_path}: routing: {exc}\n(the proxy would serve every request its requested or default model: "
            f"fallback {fallback_reason(exc)})"
        ) from None


def _messages(text: str) -> list[dict[str, Any]]:
    """A plain user message, or a JSON list of chat messages when the text starts with '['."""
    text = text.strip()
    if not text.startswith("["):
        return [{"role": "user", "content": text}]
    try:
        messages = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"outerloop route: the text starts with '[' but is not JSON: {exc}") from None
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise SystemExit('outerloop route: expected a JSON list of messages like [{"role": "user", "content": "..."}]')
    return messages


def _route(args: argparse.Namespace) -> int:
    messages = _messages(args.text)
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
    from router_model.evaluate import ExamplesError, evaluate, load_examples, render_report

    try:
        examples = load_examples(args.data)
    except ExamplesError as exc:
        raise SystemExit(f"outerloop router eval: {exc}") from None
    backend, routes = _backend(args.config, args.registry)

    async def run() -> Any:
        try:
            return await evaluate(backend, examples, routes)
        finally:
            await backend.aclose()

    print(render_report(asyncio.run(run())))
    return 0
