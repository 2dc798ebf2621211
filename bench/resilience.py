"""What failover and translation (Anthropic or Responses in, chat out) cost, each beside plain passthrough, in one outerloop."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overhead import (
    PROMPT,
    BenchError,
    Cell,
    Row,
    Services,
    Target,
    _ms,
    free_port,
    machine,
    main_in_rounds,
    measure,
    run_wrk,
    serve_outerloop,
    start_upstream,
    table,
    wrk_script,
)

# The bench upstream answers this model with an immediate OpenAI-shaped 503 (bench/upstream_app.py).
FAILING = "status-503"
ANTHROPIC_STREAM_END = b'data: {"type":"message_stop"}'


@dataclass(frozen=True)
class MessagesTarget(Target):
    """The same prompt as an Anthropic Messages request."""

    path: str = "/v1/messages"
    stream_end: bytes = ANTHROPIC_STREAM_END

    def body(self, stream: bool) -> bytes:
        payload: dict[str, Any] = {"model": self.model, "max_tokens": 64,
                                   "messages": [{"role": "user", "content": PROMPT}]}
        if stream:
            payload["stream"] = True
        return json.dumps(payload).encode()

    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "anthropic-version": "2023-06-01"}


@dataclass(frozen=True)
class ResponsesTarget(Target):
    """The same prompt as an OpenAI Responses API request."""

    path: str = "/v1/responses"
    stream_end: bytes = b"event: response.completed"

    def body(self, stream: bool) -> bytes:
        payload: dict[str, Any] = {"model": self.model, "max_output_tokens": 64, "input": PROMPT}
        if stream:
            payload["stream"] = True
        return json.dumps(payload).encode()


def config(port: int, upstream: int) -> dict[str, Any]:
    """One listener without filters; `up/m` healthy, `up/status-503` failing over to it, `alone/status-503`
    failing with no retry or fallback (the failed attempt's own time through the proxy)."""
    base_url = f"http://127.0.0.1:{upstream}/v1"
    return {
        "version": "v0.1",
        "listeners": [{"name": "bench", "address": "127.0.0.1", "port": port, "filters": []}],
        "model_providers": [
            {"model": "up/m", "base_url": base_url, "default": True},
            {"model": f"up/{FAILING}", "base_url": base_url, "retry_policy": {
                "max_attempts": 1, "on_status": [503], "backoff": {"base_ms": 0, "max_ms": 0},
                "fallback_models": ["up/m"]}},
            {"model": f"alone/{FAILING}", "base_url": base_url},
        ],
        "retry_policy": {"max_attempts": 1},
        # Each failing model has one deployment, and the last healthy deployment is never ejected; the
        # threshold is set out of reach all the same, so that every measured request makes its failed attempt.
        "outlier_detection": {"consecutive_failures": 1_000_000_000},
        "server": {"drain_seconds": 1, "access_log": False, "log_level": "warning"},
    }


def start_proxy(services: Services, workdir: Path, upstream: Target) -> int:
    port = free_port()
    serve_outerloop(services, workdir, config(port, upstream.port))
    return port


def probe(target: Target) -> tuple[int, dict[str, str]]:
    """One plain request: its status and headers."""
    request = urllib.request.Request(f"http://127.0.0.1:{target.port}{target.path}", data=target.body(False),
                                     headers=target.headers(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}


def expect(target: Target, status: int, attempts: str | None) -> None:
    got, headers = probe(target)
    if got != status or (attempts is not None and headers.get("x-outerloop-attempts") != attempts):
        raise BenchError(f"{target.name}: expected {status} after {attempts} attempts, got {got} after "
                         f"{headers.get('x-outerloop-attempts')}: {target.service.tail() if target.service else ''}")


def c1(target: Target, workdir: Path, seconds: int, warmup: int) -> Cell:
    """Plain requests at c=1 (wrk), after a warm-up; an error answer still has its latency recorded."""
    script = wrk_script(target, workdir)
    print(f"  {target.name}: plain c=1 ...", end="", flush=True)
    run_wrk(target, script, 1, warmup)
    cell = run_wrk(target, script, 1, seconds)
    print(f" {cell.rps:,.0f} req/s, p50 {cell.p50_ms:.2f} ms, p99 {cell.p99_ms:.2f} ms"
          f"{f', {cell.errors} error answers' if cell.errors else ''}", flush=True)
    return cell


def combine(cells: list[Cell]) -> Cell:
    """One cell from the rounds: requests and seconds summed, p50 and p99 the median of the rounds'."""
    return Cell(requests=sum(c.requests for c in cells), seconds=sum(c.seconds for c in cells),
                p50_ms=statistics.median(c.p50_ms for c in cells), p99_ms=statistics.median(c.p99_ms for c in cells),
                errors=sum(c.errors for c in cells), note=next((c.note for c in cells if c.note), ""),
                client_cpu=max(c.client_cpu for c in cells))


def combine_rows(rows: list[Row]) -> Row:
    return Row(rows[0].name, cells={key: combine([row.cells[key] for row in rows]) for key in rows[0].cells},
               rss_before=rows[0].rss_before, rss_after=rows[-1].rss_after)


@dataclass
class Results:
    failover: list[tuple[str, str, Cell]]
    translation: list[Row]
    seconds: int
    rounds: int


def run(args: argparse.Namespace) -> Results:
    seconds, warmup, rounds = args.duration, 1, args.rounds
    with tempfile.TemporaryDirectory(prefix="outerloop-bench-") as tmp:
        workdir = Path(tmp)
        services = Services(workdir)
        try:
            upstream = start_upstream(services)
            port = start_proxy(services, workdir, upstream)
            proxy = services.running[-1]
            print(f"upstream on 127.0.0.1:{upstream.port}, outerloop on 127.0.0.1:{port}", flush=True)

            direct_fail = Target("upstream direct, failing model", upstream.port, FAILING)
            passthrough = Target("outerloop, passthrough", port, "up/m", service=proxy)
            failover = Target("outerloop, failover", port, f"up/{FAILING}", service=proxy)
            alone = Target("outerloop, failed attempt alone", port, f"alone/{FAILING}", service=proxy)
            expect(passthrough, 200, "1")
            expect(failover, 200, "2")
            expect(alone, 503, "1")
            expect(direct_fail, 503, None)
            # The targets take turns, round after round, so that the shared box's drift falls on all alike.
            first: list[tuple[str, Target]] = [
                ("`m`, 200", upstream),
                (f"`{FAILING}`, 503", direct_fail),
                ("`up/m`, 200, 1 attempt", passthrough),
                (f"`alone/{FAILING}`, 503, 1 attempt", alone),
                (f"`up/{FAILING}` then `up/m`, 200, 2 attempts", failover),
            ]
            second = [upstream, Target("outerloop, chat passthrough", port, "up/m", service=proxy),
                      MessagesTarget("outerloop, messages to chat", port, "up/m", service=proxy),
                      ResponsesTarget("outerloop, responses to chat", port, "up/m", service=proxy)]
            c1_cells: dict[str, list[Cell]] = {target.name: [] for _, target in first}
            rows: dict[str, list[Row]] = {target.name: [] for target in second}
            for n in range(rounds):
                print(f"round {n + 1} of {rounds}, failover:", flush=True)
                for _, target in first:
                    c1_cells[target.name].append(c1(target, workdir, seconds, warmup))
                print(f"round {n + 1} of {rounds}, translation:", flush=True)
                for target in second:
                    rows[target.name].append(measure(target, workdir, seconds, warmup))
        finally:
            services.close()
    return Results([(target.name, what, combine(c1_cells[target.name])) for what, target in first],
                   [combine_rows(rows[target.name]) for target in second], seconds, rounds)


def report(results: Results, started: float) -> str:
    cells = {name: cell for name, _, cell in results.failover}
    lines = [
        f"## Failover and translation, {time.strftime('%Y-%m-%d')}",
        "",
        *machine(),
        f"- {results.rounds} round(s), the targets taking turns in each; {results.seconds} s per cell and round after "
        "a 1 s warm-up; p50 and p99 are the median of the rounds'. One outerloop process (no filters) serves "
        "every proxied row; latency is the whole response (plain) or time to first body byte (stream).",
        "",
        "Failover: plain POST /v1/chat/completions at c=1 (a 503 answer is measured like a 200)",
        "",
        "| target | model, answer | req/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for name, what, cell in results.failover:
        lines.append(f"| {name} | {what} | {cell.rps:,.0f} | {_ms(cell.p50_ms)} | {_ms(cell.p99_ms)} |")
    direct, passthrough = cells["upstream direct"].p50_ms, cells["outerloop, passthrough"].p50_ms
    failover, alone = cells["outerloop, failover"].p50_ms, cells["outerloop, failed attempt alone"].p50_ms
    direct_fail = cells["upstream direct, failing model"].p50_ms
    lines += [
        "",
        f"- added latency beyond the failed attempt's own time (failover − passthrough − failed attempt alone, "
        f"p50): {failover - passthrough - alone:+.2f} ms (target: under 1 ms)",
        f"- the same with the failed attempt timed at the upstream directly (failover − passthrough − failing "
        f"model direct): {failover - passthrough - direct_fail:+.2f} ms",
        f"- passthrough over direct: {passthrough - direct:+.2f} ms; failover over passthrough: "
        f"{failover - passthrough:+.2f} ms",
        "",
        "Translation: POST /v1/messages (Anthropic in, OpenAI out to the same upstream) and POST /v1/responses "
        "(Responses in, chat completions out) beside POST /v1/chat/completions passthrough, the same prompt",
        "",
        *table(results.translation),
        "",
    ]
    by_name = {row.name: row for row in results.translation}
    up, chat = by_name["upstream direct"], by_name["outerloop, chat passthrough"]
    for name, what in (("outerloop, messages to chat", "messages"), ("outerloop, responses to chat", "responses")):
        translated = by_name[name]
        for kind, label in (("plain", "p50"), ("stream", "TTFB p50")):
            key = f"{kind} c=1"
            added_chat = chat.cells[key].p50_ms - up.cells[key].p50_ms
            added = translated.cells[key].p50_ms - up.cells[key].p50_ms
            ratio = added / added_chat if added_chat > 0 else float("nan")
            rps = translated.cells[f"{kind} c=32"].rps / max(chat.cells[f"{kind} c=32"].rps, 1e-9)
            lines.append(f"- {what} {kind}: added {label} over direct at c=1: passthrough {added_chat:+.2f} ms, "
                         f"translation {added:+.2f} ms, ratio {ratio:.2f}x (target: at most 1.5x); c=32 req/s "
                         f"translation / passthrough {rps:.0%}")
    lines += ["", f"Run took {time.monotonic() - started:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    return main_in_rounds(argv, __doc__ or "", rounds=3, quick_seconds=2, run=run, report=report)

if __name__ == "__main__":
    sys.exit(main())
