"""Agent-listener overhead: the agent called directly, through a model listener, and through an agent listener."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overhead import (
    BIN,
    PROMPT,
    ROOT,
    BenchError,
    Cell,
    Services,
    Target,
    _ms,
    _stream_cell,
    check,
    free_port,
    machine,
    main_in_rounds,
    percentile,
    run_async,
    run_wrk,
    serve_outerloop,
    start_upstream,
    wrk_script,
)

from router_model.http_backend import HttpRouter
from router_model.routes import RouteSet

# The agent the keyword router picks for the bench prompt (it summarises planning notes), and one it must not.
ROUTES = [
    {"name": "notes", "description": "summarise planning notes, meeting notes and a roadmap into bullet points"},
    {"name": "poems", "description": "writes poems and song lyrics in latin"},
]
CELLS = ("c=1", "c=16", "stream c=1")


@dataclass
class Row:
    name: str
    cells: dict[str, list[Cell]] = field(default_factory=dict)
    skipped: str = ""

    def cell(self, key: str) -> Cell:
        """The rounds' cells as one: requests and seconds summed, percentiles the median of the rounds'."""
        cells = self.cells[key]
        return Cell(requests=sum(c.requests for c in cells), seconds=sum(c.seconds for c in cells),
                    p50_ms=statistics.median(c.p50_ms for c in cells),
                    p95_ms=statistics.median(c.p95_ms for c in cells),
                    p99_ms=statistics.median(c.p99_ms for c in cells), errors=sum(c.errors for c in cells))


def start_router(services: Services) -> str:
    """examples/agents/router.py, the keyword stand-in for a router model: it answers at once."""
    port = free_port()
    service = services.start("router", [str(BIN / "hypercorn"), "examples.agents.router:app", "--bind",
                                        f"127.0.0.1:{port}", "--worker-class", "uvloop"],
                             env={"PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise BenchError(f"router exited:\n{service.tail()}")
        try:
            run_async(decide_once(url))
            return url
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"router not ready:\n{service.tail()}")


async def decide_once(url: str) -> tuple[str, ...]:
    router = HttpRouter(url, "keyword-router", RouteSet.of(ROUTES))
    try:
        return (await router.decide([{"role": "user", "content": PROMPT}])).routes
    except Exception as exc:  # noqa: BLE001 - a router not yet listening: the caller retries
        raise OSError(str(exc)) from exc
    finally:
        await router.aclose()


def model_config(port: int, upstream: int) -> dict[str, Any]:
    """A model listener over the bench upstream as a model."""
    return {
        "version": "v0.1",
        "listeners": [{"name": "models", "address": "127.0.0.1", "port": port, "filters": []}],
        "model_providers": [{"model": "up/m", "base_url": f"http://127.0.0.1:{upstream}/v1", "default": True}],
        "server": {"drain_seconds": 1, "access_log": False, "log_level": "warning"},
    }


def agent_config(routed: int, single: int, upstream: int, router_url: str) -> dict[str, Any]:
    """Two agent listeners over the bench upstream as agents: one asks the router to pick 1 of 2 agents, the other
    has one agent (its default: no routing decision), so the listener's own cost shows apart from the router's."""
    base = f"http://127.0.0.1:{upstream}"
    return {
        "version": "v0.1",
        "agents": [{"id": route["name"], "url": base} for route in ROUTES],
        "listeners": [
            {"name": "routed", "type": "agent", "address": "127.0.0.1", "port": routed,
             "router": {"backend": "http", "profile": "arch-router", "budget_ms": 150,
                        "http": {"url": router_url, "model": "keyword-router", "timeout": 1.0}},
             "agents": [{"id": route["name"], "description": route["description"], "default": n == 1}
                        for n, route in enumerate(ROUTES)]},
            {"name": "single", "type": "agent", "address": "127.0.0.1", "port": single,
             "agents": [{"id": ROUTES[0]["name"], "description": ROUTES[0]["description"]}]},
        ],
        "server": {"drain_seconds": 1, "access_log": False, "log_level": "warning"},
    }


def expect_routed(target: Target) -> None:
    """The agent listener must have asked the router and followed it: otherwise the row measures a fallback."""
    request = urllib.request.Request(f"http://127.0.0.1:{target.port}{target.path}", data=target.body(False),
                                     headers=target.headers(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            headers = {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        raise BenchError(f"{target.name}: HTTP {exc.code}: {exc.read()[:300]!r}") from exc
    if headers.get("x-outerloop-agent") != "notes" or "x-outerloop-route-fallback" in headers:
        raise BenchError(f"{target.name}: expected agent `notes` without a fallback, got "
                         f"{headers.get('x-outerloop-agent')} (fallback {headers.get('x-outerloop-route-fallback')})")


def measure(target: Target, row: Row, workdir: Path, seconds: int) -> None:
    script = wrk_script(target, workdir)
    for key, connections in (("c=1", 1), ("c=16", 16)):
        run_wrk(target, script, connections, 1)
        row.cells.setdefault(key, []).append(run_wrk(target, script, connections, seconds))
    run_async(_stream_cell(target, 1, 1))
    row.cells.setdefault("stream c=1", []).append(run_async(_stream_cell(target, 1, seconds)))
    cell = row.cells["c=1"][-1]
    print(f"  {target.name}: c=1 p50 {cell.p50_ms:.2f} ms, c=16 {row.cells['c=16'][-1].rps:,.0f} req/s", flush=True)


async def _decisions(url: str, concurrency: int, seconds: float) -> Cell:
    """The routing decision alone, as the agent listener makes it: the http backend asking the router."""
    router = HttpRouter(url, "keyword-router", RouteSet.of(ROUTES))
    messages = [{"role": "user", "content": PROMPT}]
    times: list[float] = []
    errors = 0

    async def loop(deadline: float) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            decision = await router.decide(messages)
            if decision.routes != ("notes",):
                errors += 1
            times.append(time.perf_counter() - started)

    try:
        await asyncio.gather(*(loop(time.perf_counter() + 1) for _ in range(concurrency)))  # warm-up
        times.clear()
        start = time.perf_counter()
        await asyncio.gather(*(loop(start + seconds) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    finally:
        await router.aclose()
    ordered = sorted(times)
    return Cell(requests=len(ordered), seconds=elapsed, p50_ms=percentile(ordered, 50) * 1000,
                p95_ms=percentile(ordered, 95) * 1000, p99_ms=percentile(ordered, 99) * 1000, errors=errors)


@dataclass
class Results:
    rows: list[Row]
    seconds: int
    rounds: int


DIRECT, MODEL, SINGLE, AGENT, DECISION = (
    "agent direct", "model listener (the agent as a model)", "agent listener, its one agent (no routing decision)",
    "agent listener, router picks 1 of 2 agents", "routing decision alone (http backend)")


def run(args: argparse.Namespace) -> Results:
    seconds, rounds = args.duration, args.rounds
    rows = {name: Row(name) for name in (DIRECT, MODEL, SINGLE, AGENT, DECISION)}
    with tempfile.TemporaryDirectory(prefix="outerloop-bench-") as tmp:
        workdir = Path(tmp)
        services = Services(workdir)
        try:
            upstream = start_upstream(services)
            model_port = free_port()
            models = serve_outerloop(services, workdir, model_config(model_port, upstream.port))
            targets = [Target(DIRECT, upstream.port, "m", service=upstream.service),
                       Target(MODEL, model_port, "up/m", service=models)]
            router_url = start_router(services)
            try:
                routed, single = free_port(), free_port()
                proxy = serve_outerloop(services, workdir, agent_config(routed, single, upstream.port, router_url))
                agents = [Target(SINGLE, single, "auto", service=proxy), Target(AGENT, routed, "auto", service=proxy)]
                for target in agents:
                    expect_routed(target)
                targets += agents
            except BenchError as exc:
                print(f"agent listeners: skipped: {exc}", flush=True)
                rows[SINGLE].skipped = rows[AGENT].skipped = str(exc).splitlines()[0]
            for target in targets:
                check(target)
            print(f"upstream on 127.0.0.1:{upstream.port}, router on {router_url}", flush=True)
            # The targets take turns, round after round, so that the shared box's drift falls on all alike.
            for n in range(rounds):
                print(f"round {n + 1} of {rounds}:", flush=True)
                for target in targets:
                    measure(target, rows[target.name], workdir, seconds)
                for key, concurrency in (("c=1", 1), ("c=16", 16)):
                    rows[DECISION].cells.setdefault(key, []).append(
                        run_async(_decisions(router_url, concurrency, seconds)))
        finally:
            services.close()
    return Results(list(rows.values()), seconds, rounds)


def report(results: Results, started: float) -> str:
    lines = [
        f"## Agent listener overhead, {time.strftime('%Y-%m-%d')}",
        "",
        *machine(),
        f"- {results.rounds} round(s), the targets taking turns; {results.seconds} s per cell and round after a 1 s "
        "warm-up; percentiles are the median of the rounds'. The agent is bench/upstream_app.py (answers at once); "
        "the router is examples/agents/router.py behind the `http` backend (a keyword match, answers at once), so "
        "the routing row is the decision's own round trip. Every row: plain POST /v1/chat/completions with a "
        f"{len(PROMPT)}-byte prompt; stream latency is time to first body byte.",
        "",
        "| target | c=1 p50 ms | c=1 p95 ms | c=16 req/s | stream c=1 TTFB p50 ms |",
        "|---|---|---|---|---|",
    ]
    by_name = {row.name: row for row in results.rows}
    for row in results.rows:
        if row.skipped or not row.cells:
            lines.append(f"| {row.name} | — | — | — | — |")
            continue
        c1, c16 = row.cell("c=1"), row.cell("c=16")
        stream = _ms(row.cell("stream c=1").p50_ms) if "stream c=1" in row.cells else "—"
        flag = f" ({c16.errors} err)" if c16.errors else ""
        lines.append(f"| {row.name} | {_ms(c1.p50_ms)} | {_ms(c1.p95_ms)} | {c16.rps:,.0f}{flag} | {stream} |")
    lines.append("")
    direct, model, single, agent, decision = (by_name[n] for n in (DIRECT, MODEL, SINGLE, AGENT, DECISION))
    model_added = model.cell("c=1").p50_ms - direct.cell("c=1").p50_ms
    routing = decision.cell("c=1").p50_ms
    lines.append(f"- model listener's added latency (c=1 p50 over direct): {model_added:+.2f} ms; routing decision "
                 f"c=1 p50 {routing:.2f} ms")
    if single.cells:
        single_added = single.cell("c=1").p50_ms - direct.cell("c=1").p50_ms
        lines.append(f"- agent listener's added latency without a routing decision (one agent): {single_added:+.2f} ms "
                     f"({single_added - model_added:+.2f} ms over the model listener's)")
    if agent.cells:
        agent_added = agent.cell("c=1").p50_ms - direct.cell("c=1").p50_ms
        budget = model_added + routing
        verdict = "met" if agent_added <= budget else f"missed by {agent_added - budget:.2f} ms"
        lines.append(f"- agent listener's added latency (c=1 p50 over direct): {agent_added:+.2f} ms; target: at most "
                     f"the model listener's added latency plus the routing decision, {budget:.2f} ms: {verdict}")
        lines.append(f"- c=16 req/s, agent listener / model listener: "
                     f"{agent.cell('c=16').rps / max(model.cell('c=16').rps, 1e-9):.0%}")
    else:
        lines.append(f"- {AGENT}: skipped: {agent.skipped}")
    lines += ["", f"Run took {time.monotonic() - started:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    return main_in_rounds(argv, __doc__ or "", rounds=2, quick_seconds=1, run=run, report=report)


if __name__ == "__main__":
    sys.exit(main())
