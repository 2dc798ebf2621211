"""Routing decision latency: free generation (Plano's way) vs prefix cache vs prefix cache + trie."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402
import yaml  # noqa: E402

from router_model.evaluate import percentiles  # noqa: E402
from router_model.onnx_router import OnnxRouter  # noqa: E402
from router_model.routes import RouteSet  # noqa: E402

DATA = ROOT / "bench" / "data" / "routing"
OUT = ROOT / "bench" / "out"


def machine(provider: str) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"CPU {cpu}", f"{os.cpu_count()} cores", f"onnxruntime {ort.__version__}", f"provider {provider}"]
    if provider == "CUDAExecutionProvider" and shutil.which("nvidia-smi"):
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, check=False
        ).stdout.strip()
        parts.append(f"GPU {gpu}")
    return ", ".join(parts)


def build_model(device: str) -> Path:
    from router_model import tiny
    from router_model.export import export

    size, dtype = ("arch-router", "fp16") if device == "cuda" else ("mid", "fp32")
    onnx_dir = OUT / "models" / f"{size}-{dtype}-onnx"
    if (onnx_dir / "model.onnx").is_file():
        return onnx_dir
    hf_dir = tiny.build(OUT / "models" / f"{size}-hf", size, seed=0, dtype="fp32")
    print(f"exporting {size} ({dtype}, {device}) to {onnx_dir} ...", file=sys.stderr)
    return export(hf_dir, onnx_dir, dtype=dtype, device=device)


def conversations(multi_turn_only: bool) -> list[list[dict[str, Any]]]:
    rows = [json.loads(line) for line in (DATA / "dev.jsonl").read_text().splitlines() if line.strip()]
    convs = [r["messages"] for r in rows]
    return [c for c in convs if len(c) == 3] if multi_turn_only else convs


def run_mode(router: OnnxRouter, mode: str, convs: list[list[dict[str, Any]]], n: int) -> dict[str, float]:
    for messages in convs[:3]:  # warm-up: prefix cache, ORT allocations
        router.decide_sync(messages, mode=mode)  # type: ignore[arg-type]
    latencies, steps, tokens = [], [], []
    for i in range(n):
        start = time.perf_counter()
        decision = router.decide_sync(convs[i % len(convs)], mode=mode)  # type: ignore[arg-type]
        latencies.append((time.perf_counter() - start) * 1000)
        steps.append(decision.steps)
        tokens.append(decision.prompt_tokens - decision.cached_tokens)
    stats = percentiles(latencies)
    stats["steps"] = sum(steps) / len(steps)
    stats["prefilled"] = sum(tokens) / len(tokens)
    return stats


async def concurrent(router: OnnxRouter, convs: list[list[dict[str, Any]]], total: int, concurrency: int) -> float:
    queue = list(range(total))

    async def worker() -> None:
        while queue:
            i = queue.pop()
            await router.decide(convs[i % len(convs)])

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--model", type=Path, help="an exported router model dir instead of a random one")
    parser.add_argument("--iterations", type=int)
    args = parser.parse_args()

    model_dir = args.model or build_model(args.device)
    routes = RouteSet.of(yaml.safe_load((DATA / "routes.yaml").read_text())["routes"])
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if args.device == "cuda" else ["CPUExecutionProvider"]
    router = OnnxRouter(model_dir, routes, providers=providers)
    # A trained router answers `{"route": "<name>"}` and stops; random weights never emit EOS, so free
    # generation is capped at the longest real answer to cost exactly what a trained model's answer costs.
    forced = router.tokenizer.encode(router.prompts.profile.answer_prefix)
    router.max_new_tokens = len(forced) + max(len(c) for c in router.prompts.candidates(routes).values())
    convs = conversations(multi_turn_only=args.device == "cuda")
    n = args.iterations or (20 if args.quick else 100)

    rows = []
    for mode, label in (
        ("free", "(a) free generation, no cache (Plano)"),
        ("prefix", "(b) prefix KV cache + free generation"),
        ("trie", "(c) prefix KV cache + trie"),
    ):
        rows.append((label, run_mode(router, mode, convs, n)))

    print(f"\nrouting decision latency, {machine(router.provider)}")
    print(
        f"model {model_dir.name}: {router.engine.num_layers} layers, vocab {router.engine.vocab_size}, "
        f"{len(routes)} routes, {len(convs)} conversations, {n} decisions per mode, "
        f"static prefix {len(router.prompts.prefix(routes).ids)} tokens, answer cap {router.max_new_tokens} tokens"
    )
    print(f"{'mode':<40} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'prefilled':>9} {'steps':>6} {'vs (a)':>7}")
    base = rows[0][1]["p50"]
    for label, s in rows:
        print(
            f"{label:<40} {s['p50']:>8.2f} {s['p90']:>8.2f} {s['p99']:>8.2f} {s['prefilled']:>9.0f} "
            f"{s['steps']:>6.1f} {base / s['p50']:>6.1f}x"
        )
    if args.device == "cuda":
        router.max_batch = 32
        rate = asyncio.run(concurrent(router, convs, 10 * 32 if args.quick else 50 * 32, 32))
        print(f"decisions/s at concurrency 32 (trie, batched): {rate:.0f}")


if __name__ == "__main__":
    main()
