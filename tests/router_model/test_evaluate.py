from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from router_model.backend import Decision, Message, RouterError
from router_model.evaluate import ExamplesError, evaluate, load_examples, percentiles, render_report
from router_model.routes import RouteSet

ROUTES = RouteSet.of([{"name": "code", "description": "c"}, {"name": "math", "description": "m"}])


class ScriptedBackend:
    """Answers from a table keyed by the last message; 'boom' raises."""

    name = "scripted"

    def __init__(self, answers: dict[str, tuple[str | None, float]]) -> None:
        self.answers = answers

    async def decide(self, messages: Sequence[Message], routes: RouteSet | None = None) -> Decision:
        text = str(messages[-1]["content"])
        if text == "boom":
            raise RouterError("boom")
        route, latency = self.answers[text]
        return Decision(route=route, latency_ms=latency, backend=self.name)

    async def aclose(self) -> None:
        return None


def test_accuracy_confusion_and_latency(tmp_path: Path) -> None:
    rows = [
        ("a", "code", ("code", 1.0)),
        ("b", "code", ("math", 2.0)),
        ("c", "math", ("math", 3.0)),
        ("d", "other", (None, 4.0)),
        ("e", "math", (None, 5.0)),
        ("boom", "code", (None, 0.0)),
    ]
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": t}], "route": r}) for t, r, _ in rows))
    backend = ScriptedBackend({t: a for t, _, a in rows})
    report = asyncio.run(evaluate(backend, load_examples(path), ROUTES))
    assert report.total == 6 and report.correct == 3 and report.errors == 1
    assert report.accuracy == pytest.approx(0.5)
    assert report.labels == ("code", "math", "other")
    assert report.confusion == ((1, 1, 1), (0, 1, 1), (0, 0, 1))
    assert report.latency_ms["p50"] == pytest.approx(3.0)
    assert report.latency_ms["mean"] == pytest.approx(3.0)
    text = render_report(report)
    assert "accuracy 50.0% (3/6), errors 1" in text
    assert text.splitlines()[-3].split() == ["code", "1", "1", "1", "33%"]  # one of its three answered right
    assert text.splitlines()[-1].split() == ["other", "0", "0", "1", "100%"]


def test_percentiles() -> None:
    stats = percentiles([float(i) for i in range(1, 101)])
    assert stats["p50"] == pytest.approx(50.5) and stats["p90"] == pytest.approx(90.1) and stats["p99"] == pytest.approx(99.01)
    assert percentiles([])["p50"] == 0.0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"messages": []}\n', r"bad.jsonl:1: each line needs"),
        ('\n{"messages": 5, "route": "x"}\n', r"bad.jsonl:2: each line needs 'messages' \(a list\)"),
        ('{"messages": [], "route": "x"}\nnot json\n', r"bad.jsonl:2: not JSON"),
        ("[1, 2]\n", r"bad.jsonl:1: each line needs"),
    ],
)
def test_load_examples_rejects_bad_lines(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ExamplesError, match=message):
        load_examples(path)
    with pytest.raises(ExamplesError, match="missing.jsonl: cannot read"):
        load_examples(tmp_path / "missing.jsonl")
