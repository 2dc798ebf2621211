"""Scores any routing backend on a labelled JSONL set: accuracy, confusion matrix, latency percentiles."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router_model.backend import Message, RouterBackend
from router_model.routes import OTHER, RouteSet


@dataclass(frozen=True)
class Example:
    messages: tuple[Mapping[str, Any], ...]
    route: str


@dataclass(frozen=True)
class EvalReport:
    backend: str
    total: int
    correct: int
    labels: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]  # rows: expected label, columns: predicted label
    latency_ms: Mapping[str, float]  # p50, p90, p99, mean
    errors: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


class ExamplesError(ValueError):
    """A labelled set that cannot be read; the message names the file and line."""


def load_examples(path: str | Path) -> list[Example]:
    """JSONL rows `{"messages": [...], "route": "<name>"}`; raises ExamplesError naming the file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ExamplesError(f"{path}: cannot read: {exc.strerror or exc}") from None
    examples = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ExamplesError(f"{path}:{line_no}: not JSON: {exc.msg}") from None
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or not isinstance(row.get("route"), str):
            raise ExamplesError(f"{path}:{line_no}: each line needs 'messages' (a list) and 'route' (a string)")
        examples.append(Example(tuple(messages), row["route"]))
    return examples


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0}
    arr = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(arr.mean())}


async def evaluate(
    backend: RouterBackend, examples: Iterable[Example], routes: RouteSet | None = None
) -> EvalReport:
    """Runs every example through `backend.decide` one at a time; a backend error counts as `other`."""
    examples = list(examples)
    names = list(routes.names) if routes is not None else []
    for ex in examples:
        if ex.route not in names and ex.route != OTHER:
            names.append(ex.route)
    labels = (*names, OTHER)
    index = {name: i for i, name in enumerate(labels)}
    confusion = [[0] * len(labels) for _ in labels]
    latencies: list[float] = []
    correct = errors = 0
    for ex in examples:
        try:
            decision = await backend.decide(list(ex.messages), routes)
            predicted = decision.route or OTHER
            latencies.append(decision.latency_ms)
        except Exception:  # noqa: BLE001 - the proxy falls back on errors, so score them as `other`
            errors += 1
            predicted = OTHER
        if predicted not in index:
            predicted = OTHER
        confusion[index[ex.route]][index[predicted]] += 1
        correct += predicted == ex.route
    return EvalReport(
        backend=backend.name,
        total=len(examples),
        correct=correct,
        labels=labels,
        confusion=tuple(tuple(r) for r in confusion),
        latency_ms=percentiles(latencies),
        errors=errors,
    )


def render_report(report: EvalReport) -> str:
    """A plain-text table: accuracy line, confusion matrix (rows expected), latency percentiles."""
    lines = [
        f"backend {report.backend}: accuracy {report.accuracy:.1%} ({report.correct}/{report.total}), "
        f"errors {report.errors}",
        "latency ms: " + ", ".join(f"{k} {v:.2f}" for k, v in report.latency_ms.items()),
        "",
    ]
    short = [label[:10] for label in report.labels]
    width = max(len(label) for label in report.labels)
    lines.append("rows: expected, columns: predicted; recall = share of each expected label answered right")
    lines.append(" " * (width + 2) + " ".join(f"{s:>10}" for s in short) + f" {'recall':>7}")
    for i, (label, row) in enumerate(zip(report.labels, report.confusion, strict=True)):
        recall = f"{row[i] / sum(row):.0%}" if sum(row) else "-"
        lines.append(f"{label:<{width}}  " + " ".join(f"{n:>10}" for n in row) + f" {recall:>7}")
    return "\n".join(lines)
