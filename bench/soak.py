"""Soak: many requests through outerloop's full chain with faults mixed in; RSS and open fds sampled, growth checked."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from overhead import (BIN, CHAIN, PROMPT, ROOT, BadResponse, BenchError, Services, Target, chain_filters, check,
                      free_port, machine, outerloop_config, percentile, registered_filters, run_async,
                      run_reported, start_upstream, wait_ready)

CONCURRENCY = 32
REQUEST_TIMEOUT = 15.0
SAMPLE_SECONDS = 0.25
GROWTH_LIMIT = 5.0
#: Growth compares the samples right after the warm-up with the samples of the last stretch, by requests done.
WARMUP = (0.15, 0.25)
END = (0.90, 1.00)
#: Distinct conversations: each derives its own session id, so the session filter's pin store holds this many.
CONVERSATIONS = 64
SLOW_RCVBUF = 4096
SLOW_READ_BYTES = 1024
SLOW_READ_SLEEP = 0.005

# Fault models the bench upstream understands (bench/upstream_app.py `behaviour`), served as up/<name>.
LONG = "chunks-64"  # ~30 KB stream: more than a slow reader's socket buffers hold
TRICKLE = "chunks-64-delay-5"  # ~0.3 s stream: a client leaving after the first event leaves mid-stream


@dataclass(frozen=True)
class Kind:
    name: str
    model: str
    stream: bool
    weight: int
    expected: str
    status: int = 200
    #: How the client reads the answer: all of it, the first piece then close, or slowly on a small buffer.
    read: Literal["whole", "first", "slow"] = "whole"


KINDS = (
    Kind("plain", "up/m", False, 8, "200, whole completion"),
    Kind("stream", "up/m", True, 8, "200, stream ends with [DONE]"),
    Kind("upstream 500", "up/status-500", False, 1, "500 passed on", status=500),
    Kind("upstream 429 (stream)", "up/status-429", True, 1, "429 passed on", status=429),
    Kind("client disconnect", f"up/{TRICKLE}", True, 1, "closed after the first event", read="first"),
    Kind("slow reader", f"up/{LONG}", True, 1, "200, stream ends with [DONE]", read="slow"),
)
FAULT_MODELS = sorted({k.model for k in KINDS} - {"up/m"})


def _letters(n: int) -> str:
    # Digits in a prompt could look like PII to the guardrails; letters keep every prompt plain prose.
    return "".join("abcdefghijklmnop"[int(d, 16)] for d in f"{n:04x}")


def build_requests(port: int, token: str) -> dict[str, list[bytes]]:
    """Every request the soak sends, built once: per kind, one per conversation."""
    out: dict[str, list[bytes]] = {}
    for kind in KINDS:
        out[kind.name] = []
        for n in range(CONVERSATIONS):
            payload: dict[str, Any] = {"model": kind.model, "max_tokens": 64, "messages": [
                {"role": "user", "content": f"Conversation {_letters(n)}. {PROMPT}"}]}
            if kind.stream:
                payload["stream"] = True
            body = json.dumps(payload).encode()
            head = ["POST /v1/chat/completions HTTP/1.1", f"Host: 127.0.0.1:{port}",
                    "Content-Type: application/json", f"Authorization: Bearer {token}",
                    *(["Accept: text/event-stream"] if kind.stream else []), f"Content-Length: {len(body)}"]
            out[kind.name].append(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return out


# --- load -----------------------------------------------------------------------------------------------------


@dataclass
class Progress:
    total: int
    deadline: float
    issued: int = 0
    done: int = 0
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    last_error: dict[str, str] = field(default_factory=dict)

    def issuing(self) -> bool:
        return self.issued < self.total and time.monotonic() < self.deadline

    def take(self) -> int | None:
        if not self.issuing():
            return None
        self.issued += 1
        return self.issued - 1


async def _head(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    return int(head[9:12]), head


async def _body(reader: asyncio.StreamReader, head: bytes) -> AsyncGenerator[bytes, None]:
    """The response body as it arrives: one piece per HTTP chunk, or the whole of a sized body."""
    if b"transfer-encoding: chunked" in head:
        while size := int((await reader.readline()).split(b";", 1)[0], 16):
            yield (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
    elif length := re.search(rb"content-length:\s*(\d+)", head):
        yield await reader.readexactly(int(length.group(1)))
    else:
        yield await reader.read()


async def _read_slowly(reader: asyncio.StreamReader) -> bytes:
    """A chunked body read a few hundred bytes at a time with a pause between reads, framing left in."""
    data = bytearray()
    while not data.endswith(b"\r\n0\r\n\r\n"):
        if not (piece := await reader.read(SLOW_READ_BYTES)):
            raise asyncio.IncompleteReadError(bytes(data), None)
        data += piece
        await asyncio.sleep(SLOW_READ_SLEEP)
    return bytes(data)


async def _slow_connection(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    # A small receive buffer on the socket and in the reader, so the proxy's sends back up behind a slow client.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=SLOW_RCVBUF)


async def one(kind: Kind, request: bytes, port: int,
              conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None
              ) -> tuple[str, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None]:
    """One request of a kind: (outcome, the connection to keep for the next one, if any)."""
    if kind.read != "whole":  # on a connection of its own, closed after
        if conn is not None:
            conn[1].close()
        conn = await _slow_connection(port) if kind.read == "slow" else await asyncio.open_connection(
            "127.0.0.1", port)
    elif conn is None:
        conn = await asyncio.open_connection("127.0.0.1", port)
    reader, writer = conn
    writer.write(request)
    status, head = await _head(reader)
    keep = b"connection: close" not in head
    if kind.read == "first":
        async with aclosing(_body(reader, head)) as body_parts:
            await anext(body_parts)
        writer.close()
        return (kind.expected if status == 200 else f"HTTP {status}"), None
    if kind.read == "slow" and b"transfer-encoding: chunked" in head:
        body = await _read_slowly(reader)
    else:
        body = b"".join([part async for part in _body(reader, head)])
    if kind.read == "slow" or not keep:
        writer.close()
        conn = None
    if status != kind.status:
        return f"HTTP {status}", conn
    complete = b"data: [DONE]" in body[-64:] if kind.stream else b"benchmark" in body
    if status == 200 and not complete:
        raise BadResponse(f"unexpected body: {body[-200:]!r}")
    return kind.expected, conn


async def worker(port: int, pattern: list[Kind], requests: dict[str, list[bytes]], progress: Progress) -> None:
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    try:
        while (i := progress.take()) is not None:
            kind = pattern[i % len(pattern)]
            request = requests[kind.name][i % CONVERSATIONS]
            start = time.perf_counter()
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    outcome, conn = await one(kind, request, port, conn)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError,
                    BadResponse) as exc:
                outcome = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
                progress.last_error[kind.name] = f"{type(exc).__name__}: {exc}"[:300]
                if conn is not None:
                    conn[1].close()
                conn = None
            progress.seconds.setdefault(kind.name, []).append(time.perf_counter() - start)
            progress.outcomes[kind.name, outcome] += 1
            progress.done += 1
    finally:
        if conn is not None:
            conn[1].close()


# --- sampling -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    seconds: float
    done: int
    rss_mib: float
    fds: int
    #: Taken while requests were still being issued (every worker busy), not while the last ones drained.
    steady: bool


def sample(pid: int, started: float, done: int, steady: bool = False) -> Sample:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    rss = int(match.group(1)) / 1024 if match else 0.0
    return Sample(time.monotonic() - started, done, rss, len(os.listdir(f"/proc/{pid}/fd")), steady)


async def sampler(pid: int, started: float, progress: Progress, samples: list[Sample], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append(sample(pid, started, progress.done, progress.issuing()))
        try:
            await asyncio.wait_for(stop.wait(), SAMPLE_SECONDS)
        except TimeoutError:
            pass


@dataclass
class Soak:
    progress: Progress
    samples: list[Sample]
    idle: Sample
    seconds: float
    client_cpu: float


async def soak(target: Target, pid: int, total: int, time_limit: float, concurrency: int) -> Soak:
    rng = random.Random(10)
    pattern = [kind for kind in KINDS for _ in range(kind.weight)]
    rng.shuffle(pattern)
    assert target.token is not None
    requests = build_requests(target.port, target.token)
    started = time.monotonic()
    progress = Progress(total=total, deadline=started + time_limit)
    samples: list[Sample] = []
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler(pid, started, progress, samples, stop))
    cpu = time.process_time()
    await asyncio.gather(*(worker(target.port, pattern, requests, progress) for _ in range(concurrency)))
    seconds = time.monotonic() - started
    client_cpu = (time.process_time() - cpu) / seconds
    stop.set()
    await sampling
    # Every client has closed; the proxy should be back near its idle fds within a few seconds.
    await asyncio.sleep(3.0)
    return Soak(progress, samples, sample(pid, started, progress.done), seconds, client_cpu)


# --- report ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Growth:
    metric: str
    warm: float
    end: float
    idle: float

    @property
    def percent(self) -> float:
        return (self.end - self.warm) / self.warm * 100 if self.warm else 0.0

    @property
    def passed(self) -> bool:
        return self.percent < GROWTH_LIMIT


def window(samples: list[Sample], done: int, bounds: tuple[float, float]) -> list[Sample]:
    lo, hi = bounds[0] * done, bounds[1] * done
    steady = [s for s in samples if s.steady]
    return [s for s in steady if lo <= s.done <= hi] or steady[-1:] or samples[-1:]


def growth(result: Soak) -> list[Growth]:
    done = result.progress.done
    warm, end = window(result.samples, done, WARMUP), window(result.samples, done, END)
    return [Growth("RSS MiB", statistics.median(s.rss_mib for s in warm), statistics.median(s.rss_mib for s in end),
                   result.idle.rss_mib),
            Growth("open fds", statistics.median(s.fds for s in warm), statistics.median(s.fds for s in end),
                   result.idle.fds)]


def tables(result: Soak) -> list[str]:
    progress = result.progress
    lines = ["| kind | share | requests | expected outcome | as expected | other outcomes | p50 ms | p99 ms |",
             "|---|---|---|---|---|---|---|---|"]
    weights = sum(k.weight for k in KINDS)
    for kind in KINDS:
        seen = {o: n for (name, o), n in progress.outcomes.items() if name == kind.name}
        other = ", ".join(f"{o}: {n:,}" for o, n in sorted(seen.items()) if o != kind.expected) or "—"
        ordered = sorted(progress.seconds.get(kind.name, []))
        lines.append(f"| {kind.name} | {kind.weight / weights:.0%} | {sum(seen.values()):,} | {kind.expected} | "
                     f"{seen.get(kind.expected, 0):,} | {other} | {percentile(ordered, 50) * 1000:.1f} | "
                     f"{percentile(ordered, 99) * 1000:.1f} |")
    total = sum(progress.outcomes.values())
    good = sum(n for (name, o), n in progress.outcomes.items() if o == next(k for k in KINDS if k.name == name).expected)
    lines.append(f"| all | 100% | {total:,} | | {good:,} | {total - good:,} | | |")
    lines += ["", "| metric | after warm-up | end | growth | limit | result | idle 3 s after the load |",
              "|---|---|---|---|---|---|---|"]
    for g in growth(result):
        fmt = "{:.1f}" if g.metric.startswith("RSS") else "{:.0f}"
        lines.append(f"| {g.metric} | {fmt.format(g.warm)} | {fmt.format(g.end)} | {g.percent:+.1f}% | "
                     f"< {GROWTH_LIMIT:.0f}% | {'pass' if g.passed else 'FAIL'} | {fmt.format(g.idle)} |")
    return lines


def plot(result: Soak, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = result.progress.done
    xs = [s.done / 1000 for s in result.samples]
    fig, (rss_ax, fd_ax) = plt.subplots(2, 1, figsize=(8, 4.8), sharex=True)
    for ax, ys, label, g in ((rss_ax, [s.rss_mib for s in result.samples], "proxy RSS (MiB)", growth(result)[0]),
                             (fd_ax, [s.fds for s in result.samples], "proxy open fds", growth(result)[1])):
        ax.plot(xs, ys, linewidth=0.8, color="tab:blue")
        for bounds, color in ((WARMUP, "tab:green"), (END, "tab:orange")):
            ax.axvspan(bounds[0] * done / 1000, bounds[1] * done / 1000, color=color, alpha=0.15)
        ax.axhline(g.warm, color="tab:green", linewidth=0.8, linestyle="--", label=f"after warm-up {g.warm:.1f}")
        ax.axhline(g.end, color="tab:orange", linewidth=0.8, linestyle="--",
                   label=f"end {g.end:.1f} ({g.percent:+.1f}%)")
        ax.set_ylabel(label)
        ax.set_ylim(0, max(ys, default=1) * 1.2)  # headroom: a flat line must not hide under the frame
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
    fd_ax.set_xlabel("requests completed (thousands)")
    rss_ax.set_title(f"outerloop soak, full chain: {done:,} requests, c={CONCURRENCY}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def machine_lines() -> list[str]:
    # overhead.machine()'s CPU and versions lines; its third describes wrk, which the soak does not use.
    try:
        return machine()[:2]
    except FileNotFoundError:  # no wrk installed
        return [f"- Machine: {os.cpu_count()} cores; Python {sys.version.split()[0]}"]


def report(result: Soak, requested: int, time_limit: float, png: Path, started: float) -> str:
    progress = result.progress
    stopped = (f" (stopped by the {time_limit:.0f} s time limit after {progress.done:,} of {requested:,})"
               if progress.done < requested else "")
    weights = sum(k.weight for k in KINDS)
    mix = ", ".join(f"{k.name} {k.weight / weights:.0%}" for k in KINDS)
    lines = [
        f"## Soak, {time.strftime('%Y-%m-%d')}",
        "",
        *machine_lines(),
        f"- Load: an asyncio raw-socket HTTP/1.1 client (uvloop), {CONCURRENCY} workers with keep-alive, on "
        f"127.0.0.1; its own CPU {result.client_cpu:.0%} of a core",
        f"- Chain: {' + '.join(CHAIN)} as in `bench/overhead.py` (caps too high to trip); {CONVERSATIONS} "
        f"conversations (distinct derived session ids); one proxy worker process",
        f"- Mix: {mix}. Upstream errors are the bench upstream answering 500 or 429 by model name; a disconnecting "
        f"client closes after the first event of a 0.3 s stream; a slow reader has a {SLOW_RCVBUF}-byte receive "
        f"buffer and reads {SLOW_READ_BYTES} bytes every {SLOW_READ_SLEEP * 1000:.0f} ms of a ~30 KB stream, on "
        f"a new connection each",
        f"- Sampled every {SAMPLE_SECONDS} s: VmRSS and the entries of /proc/<pid>/fd of the proxy process. Growth "
        f"compares the median of the samples taken between {WARMUP[0]:.0%} and {WARMUP[1]:.0%} of the requests "
        f"with the median of those from {END[0]:.0%} to the last one taken before the final {CONCURRENCY} "
        f"requests drained; the limit is {GROWTH_LIMIT:.0f}%.",
        f"- {progress.done:,} requests in {result.seconds:.0f} s, {progress.done / result.seconds:,.0f} req/s"
        f"{stopped}; latency is the whole exchange as the client saw it",
        "",
        *tables(result),
        "",
        *(f"- last error of {name}: `{error}`" for name, error in progress.last_error.items()),
        f"![RSS and open fds of the proxy over the soak]({png.name})",
        "",
        f"Run took {time.monotonic() - started:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


# --- main -----------------------------------------------------------------------------------------------------


def start_proxy(services: Services, workdir: Path, upstream: Target, api_key: str) -> Target:
    """outerloop with the full chain, model up/m and the fault models, all at the bench upstream."""
    port = free_port()
    config = outerloop_config(port, upstream.port, chain_filters(api_key))
    config["model_providers"] += [{"model": model, "base_url": f"http://127.0.0.1:{upstream.port}/v1"}
                                  for model in FAULT_MODELS]
    path = workdir / "outerloop-soak.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    validate = subprocess.run([str(BIN / "outerloop"), "validate", str(path)], capture_output=True, text=True,
                              cwd=ROOT, timeout=120, check=False)
    if validate.returncode != 0:
        raise BenchError(f"config rejected by `outerloop validate`: {(validate.stderr or validate.stdout).strip()}")
    service = services.start("outerloop-soak", [str(BIN / "outerloop"), "serve", "-c", str(path)])
    wait_ready(service, f"http://127.0.0.1:{port}/healthz", 60)
    return Target("outerloop, full chain", port, "up/m", token=api_key, service=service)


def run(args: argparse.Namespace, png: Path) -> tuple[str, bool]:
    started = time.monotonic()
    missing = [name for name in CHAIN if name not in registered_filters()]
    if missing:
        raise BenchError(f"filters not registered ({', '.join(missing)}; see `outerloop plugins`)")
    with tempfile.TemporaryDirectory(prefix="outerloop-soak-") as tmp:
        workdir = Path(tmp)
        services = Services(workdir)
        try:
            upstream = start_upstream(services)
            target = start_proxy(services, workdir, upstream, "olk-bench-" + secrets.token_hex(16))
            assert target.service is not None
            check(target)
            print(f"upstream on 127.0.0.1:{upstream.port}, outerloop on 127.0.0.1:{target.port}; "
                  f"{args.requests:,} requests at c={CONCURRENCY} ...", flush=True)
            result = run_async(soak(target, target.service.proc.pid, args.requests, args.time_limit, CONCURRENCY))
            if target.service.proc.poll() is not None:
                raise BenchError(f"outerloop exited during the soak:\n{target.service.tail()}")
            log = target.service.tail(200)
        finally:
            services.close()
    plot(result, png)
    text = report(result, args.requests, args.time_limit, png, started)
    tracebacks = log.count("Traceback")
    if tracebacks:
        text += f"\nThe proxy's log has {tracebacks} tracebacks in its last 200 lines.\n"
    return text, all(g.passed for g in growth(result))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100_000, help="requests in all (default 100000)")
    parser.add_argument("--time-limit", type=float, default=1200.0,
                        help="stop issuing requests after this many seconds (default 1200)")
    parser.add_argument("--quick", action="store_true", help="3000 requests, for a smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "soak.md",
                        help="the markdown report; the PNG goes next to it (default bench/out/soak.md)")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests = min(args.requests, 3000)
    png = args.out.with_suffix(".png")
    passed: list[bool] = []

    def soak() -> str:
        text, ok = run(args, png)
        passed.append(ok)
        return text

    code = run_reported(soak, args.out)
    if code:
        return code
    print(f"\nwrote {args.out} and {png}")
    return 0 if passed[0] else 1

if __name__ == "__main__":
    sys.exit(main())
