"""Proxy overhead: the upstream direct, outerloop (no filters, full chain) and LiteLLM's proxy, side by side."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import yaml
from upstream_app import CHUNKS

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
# The interpreter `make bench` runs is the project's venv; its bin/ holds hypercorn and outerloop.
BIN = Path(sys.executable).parent
LITELLM_VERSION = "1.108.7"
LITELLM_VENV = BENCH / ".litellm-venv"
CHAIN = ("auth", "rate_cap", "guardrails", "session")
OUTERLOOP_DEPS = ("hypercorn", "starlette", "uvloop", "httpx", "aiohttp", "pydantic", "pluggy",
                  "opentelemetry-sdk")
CONCURRENCY = (1, 32)
MAX_REQUESTS_PER_CELL = 500_000
REQUEST_TIMEOUT = 10.0

# About 1 KB of plain prose: no digits, secrets or instructions, so guardrails pass it without a match.
PROMPT = (
    "Please summarise these planning notes in three short bullet points. The team reviewed the roadmap for "
    "the next quarter and agreed to focus on reliability before new features. The warehouse migration is on "
    "track, although the staging environment still needs more capacity before the final cutover. Customer "
    "feedback from the spring survey asks for clearer release notes and faster answers on the support "
    "channel. The design group will share updated mockups for the onboarding flow, and the documentation team "
    "will rewrite the getting started guide so that new users reach a working setup in one sitting. Everyone "
    "agreed that on-call handovers happen on Monday mornings, that incident reviews stay blameless, and that "
    "the weekly demo moves to Thursday afternoon. Finance asked each group to review cloud spending and to "
    "remove idle machines. The hiring plan stays as it is, with two open roles in platform engineering and "
    "one in developer relations. The next review of these notes is planned for the end of the month, after "
    "the migration, and the team will report back."
)


# --- processes -----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Services:
    """Every process the bench starts, each in its own process group, all killed on the way out."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[Service] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Service:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                list(argv), cwd=ROOT, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        service = Service(name, proc, log)
        self.running.append(service)
        return service

    def stop(self, service: Service) -> None:
        if service in self.running:
            self.running.remove(service)
        _kill_group(service.proc)

    def close(self) -> None:
        while self.running:
            self.stop(self.running[-1])


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # start_new_session made the child a group leader: its workers share its pgid and go with it.
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            # The leader is gone; make sure nothing it started is left in its group.
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
        break
    if proc.poll() is None:
        proc.wait(5)


def tree_rss_mib(pid: int) -> float:
    """VmRSS of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    total_kib, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        total_kib += int(match.group(1)) if match else 0
    return total_kib / 1024


def wait_ready(service: Service, url: str, timeout: float, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise BenchError(f"{service.name} exited with {service.proc.returncode}:\n{service.tail()}")
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    raise BenchError(f"{service.name} not ready at {url} after {timeout:.0f}s:\n{service.tail()}")


class BenchError(Exception):
    """A target could not be started or answered wrongly; its row is skipped with this message."""


# --- load -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    model: str
    token: str | None = None
    service: Service | None = None
    path: str = "/v1/chat/completions"
    #: The last line of a whole stream.
    stream_end: bytes = b"data: [DONE]"

    def body(self, stream: bool) -> bytes:
        payload: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": PROMPT}],
                                   "max_tokens": 64}
        if stream:
            payload["stream"] = True
        return json.dumps(payload).encode()

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers


@dataclass
class Cell:
    requests: int = 0
    seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    p95_ms: float = 0.0
    errors: int = 0
    note: str = ""
    #: CPU the load generator itself used, as a share of one core: near 100% means it may be the bottleneck.
    client_cpu: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


_WRK_LUA = """\
local f = assert(io.open({body}, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
{headers}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH_RESULT %d %d %d\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout + e.status))
  io.write(string.format("BENCH_LATENCY %.1f %.1f %.1f\\n", latency:percentile(50), latency:percentile(99),
    latency:percentile(95)))
end
"""


def wrk_script(target: Target, workdir: Path) -> Path:
    body = workdir / f"{target.port}-body.json"
    body.write_bytes(target.body(stream=False))
    headers = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in target.headers().items())
    script = workdir / f"{target.port}.lua"
    script.write_text(_WRK_LUA.format(body=json.dumps(str(body)), headers=headers))
    return script


def run_wrk(target: Target, script: Path, connections: int, seconds: int) -> Cell:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={REQUEST_TIMEOUT:.0f}s", "-s", str(script),
            f"http://127.0.0.1:{target.port}{target.path}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    result = re.search(r"BENCH_RESULT (\d+) (\d+) (\d+)", out)
    latency = re.search(r"BENCH_LATENCY ([\d.]+) ([\d.]+) ([\d.]+)", out)
    if not result or not latency:
        raise BenchError(f"wrk gave no result:\n{out}")
    requests, micros, errors = (int(g) for g in result.groups())
    return Cell(requests=requests, seconds=micros / 1e6, p50_ms=float(latency.group(1)) / 1000,
                p99_ms=float(latency.group(2)) / 1000, p95_ms=float(latency.group(3)) / 1000, errors=errors,
                client_cpu=cpu / max(micros / 1e6, 1e-9))


class BadResponse(Exception):
    pass


def raw_request(target: Target, stream: bool) -> bytes:
    body = target.body(stream)
    head = [f"POST {target.path} HTTP/1.1", f"Host: 127.0.0.1:{target.port}",
            *(f"{k}: {v}" for k, v in target.headers().items()), "Accept: text/event-stream" if stream else "",
            f"Content-Length: {len(body)}"]
    return ("\r\n".join(line for line in head if line) + "\r\n\r\n").encode() + body


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   request: bytes) -> tuple[float, float, bytes, bool]:
    """One request on a kept-alive connection: (time to first body byte, total time, body, keep-alive)."""
    start = time.perf_counter()
    writer.write(request)
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    status = int(head[9:12])
    first = 0.0
    parts: list[bytes] = []
    keep = b"connection: close" not in head
    if b"transfer-encoding: chunked" in head:
        while True:
            size = int((await reader.readline()).split(b";", 1)[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append((await reader.readexactly(size + 2))[:-2])
            first = first or time.perf_counter()
    elif length := re.search(rb"content-length:\s*(\d+)", head):
        parts.append(await reader.readexactly(int(length.group(1))))
        first = time.perf_counter()
    else:
        parts.append(await reader.read())
        first, keep = time.perf_counter(), False
    end = time.perf_counter()
    body = b"".join(parts)
    if status != 200:
        raise BadResponse(f"HTTP {status}: {body[:300]!r}")
    return first - start, end - start, body, keep


@dataclass
class StreamRun:
    ttfb: list[float] = field(default_factory=list)
    errors: int = 0
    last_error: str = ""
    budget: int = MAX_REQUESTS_PER_CELL


async def _stream_worker(target: Target, request: bytes, deadline: float, run: StreamRun) -> None:
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    try:
        while time.perf_counter() < deadline and run.budget > 0:
            run.budget -= 1
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    if writer is None or reader is None:
                        reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
                    ttfb, _, body, keep = await exchange(reader, writer, request)
                # The end marker is in the last event (a Responses stream's `event:` line precedes its data).
                if target.stream_end not in body[-8192:]:
                    raise BadResponse(f"stream did not end with {target.stream_end!r}: {body[-200:]!r}")
                run.ttfb.append(ttfb)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError,
                    BadResponse) as exc:
                run.errors += 1
                run.last_error = f"{type(exc).__name__}: {exc}"
                keep = False
            if not keep and writer is not None:
                writer.close()
                writer, reader = None, None
    finally:
        if writer is not None:
            writer.close()


async def _stream_cell(target: Target, connections: int, seconds: float) -> Cell:
    request = raw_request(target, stream=True)
    run = StreamRun()
    cpu = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(_stream_worker(target, request, start + seconds, run) for _ in range(connections)))
    elapsed = time.perf_counter() - start
    ttfb = sorted(run.ttfb)
    return Cell(requests=len(ttfb), seconds=elapsed, p50_ms=percentile(ttfb, 50) * 1000,
                p99_ms=percentile(ttfb, 99) * 1000, p95_ms=percentile(ttfb, 95) * 1000, errors=run.errors,
                note=run.last_error, client_cpu=(time.process_time() - cpu) / elapsed)


def percentile(ordered: list[float], pct: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))]


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_async(coro: Any) -> Any:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(coro)


async def _check(target: Target) -> None:
    for stream in (False, True):
        reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
        try:
            async with asyncio.timeout(30):
                _, _, body, _ = await exchange(reader, writer, raw_request(target, stream))
        finally:
            writer.close()
        if b"benchmark" not in body or (stream and target.stream_end not in body):
            raise BadResponse(f"unexpected {'stream' if stream else 'response'}: {body[:300]!r}")


def check(target: Target) -> None:
    """One plain and one streamed request must succeed before a target is measured."""
    try:
        run_async(_check(target))
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, BadResponse) as exc:
        tail = f"\n{target.service.tail()}" if target.service else ""
        raise BenchError(f"{target.name}: check request failed: {type(exc).__name__}: {exc}{tail}") from exc


# --- measurement ----------------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    cells: dict[str, Cell] = field(default_factory=dict)
    rss_before: float | None = None
    rss_after: float | None = None
    skipped: str = ""


CELLS = [(f"{kind} c={c}", kind, c) for kind in ("plain", "stream") for c in CONCURRENCY]


def measure(target: Target, workdir: Path, seconds: int, warmup: int) -> Row:
    check(target)
    row = Row(target.name)
    pid = target.service.proc.pid if target.service else None
    if pid:
        row.rss_before = tree_rss_mib(pid)
    script = wrk_script(target, workdir)
    for key, kind, connections in CELLS:
        print(f"  {target.name}: {key} ...", end="", flush=True)
        if kind == "plain":
            run_wrk(target, script, connections, warmup)
            cell = run_wrk(target, script, connections, seconds)
        else:
            run_async(_stream_cell(target, connections, warmup))
            cell = run_async(_stream_cell(target, connections, seconds))
        row.cells[key] = cell
        errors = f", {cell.errors} errors {cell.note}" if cell.errors else ""
        print(f" {cell.rps:,.0f} req/s, p50 {cell.p50_ms:.2f} ms, p99 {cell.p99_ms:.2f} ms, "
              f"load generator {cell.client_cpu:.0%} of a core{errors}", flush=True)
    if pid:
        row.rss_after = tree_rss_mib(pid)
    return row


# --- targets --------------------------------------------------------------------------------------------------


def start_upstream(services: Services) -> Target:
    port = free_port()
    service = services.start("upstream", [
        str(BIN / "hypercorn"), "upstream_app:app", "--bind", f"127.0.0.1:{port}", "--worker-class", "uvloop",
    ], env={"PYTHONPATH": str(BENCH)})
    wait_ready(service, f"http://127.0.0.1:{port}/v1/models", 30)
    return Target("upstream direct", port, "m", service=service)


def outerloop_config(port: int, upstream: int, filters: list[Any]) -> dict[str, Any]:
    return {
        "version": "v0.1",
        "listeners": [{"name": "bench", "address": "127.0.0.1", "port": port, "filters": filters}],
        "model_providers": [{"model": "up/m", "base_url": f"http://127.0.0.1:{upstream}/v1", "default": True}],
        "server": {"drain_seconds": 1, "access_log": False, "log_level": "warning"},
    }


def chain_filters(api_key: str) -> list[dict[str, Any]]:
    """auth + rate_cap + guardrails + session as an operator would enable them; caps too high to trip."""
    digest = hashlib.sha256(api_key.encode()).hexdigest()
    return [
        {"name": "auth", "config": {"keys": [{"name": "bench", "sha256": digest}]}},
        {"name": "rate_cap", "config": {"caps": [
            {"key": "principal", "requests": 1_000_000_000, "window": "1m"},
            {"key": "principal", "tokens": 1_000_000_000_000, "window": "1m"},
            {"key": "principal", "concurrent": 100_000},
        ]}},
        {"name": "guardrails", "config": {
            "prompt_injection": {"action": "block"},
            "pii": {"action": "redact"},
            "deny": {"action": "block", "terms": ["project bluebird", "internal only"]},
            "output": {"pii": "redact"},
        }},
        {"name": "session", "config": {}},
    ]


def registered_filters() -> set[str]:
    out = subprocess.run([str(BIN / "outerloop"), "plugins"], capture_output=True, text=True, cwd=ROOT,
                         timeout=120, check=False)
    return {line.split()[0] for line in out.stdout.splitlines()[1:] if line.strip()}


def serve_outerloop(services: Services, workdir: Path, raw: dict[str, Any]) -> Service:
    """`outerloop serve` on `raw` after `outerloop validate` accepts it; ready when every listener answers."""
    ports = [listener["port"] for listener in raw["listeners"]]
    path = workdir / f"outerloop-{ports[0]}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    validate = subprocess.run([str(BIN / "outerloop"), "validate", str(path)], capture_output=True, text=True,
                              cwd=ROOT, timeout=120, check=False)
    if validate.returncode != 0:
        raise BenchError(f"config rejected by `outerloop validate`: {(validate.stderr or validate.stdout).strip()}")
    service = services.start(f"outerloop-{ports[0]}", [str(BIN / "outerloop"), "serve", "-c", str(path)])
    for port in ports:
        wait_ready(service, f"http://127.0.0.1:{port}/healthz", 60)
    return service


def start_outerloop(services: Services, workdir: Path, name: str, upstream: Target,
                    filters: list[Any], token: str | None = None) -> Target:
    port = free_port()
    service = serve_outerloop(services, workdir, outerloop_config(port, upstream.port, filters))
    return Target(name, port, "up/m", token=token, service=service)


def ensure_litellm(workdir: Path) -> Path:
    """LiteLLM's proxy in its own virtual environment, created on first use and reused after."""
    python = LITELLM_VENV / "bin" / "python"
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"]
    if python.exists() and subprocess.run(probe, capture_output=True, text=True,
                                          check=False).stdout.strip() == LITELLM_VERSION:
        return LITELLM_VENV / "bin" / "litellm"
    print(f"installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV.relative_to(ROOT)} ...", flush=True)
    log = workdir / "litellm-install.log"
    with log.open("wb") as out:
        for argv in ([sys.executable, "-m", "venv", str(LITELLM_VENV)],
                     [str(python), "-m", "pip", "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"]):
            if subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=1800, check=False).returncode:
                raise BenchError(f"installing LiteLLM failed:\n{log.read_text(errors='replace')[-3000:]}")
    return LITELLM_VENV / "bin" / "litellm"


def start_litellm(services: Services, workdir: Path, upstream: Target) -> Target:
    litellm = ensure_litellm(workdir)
    port = free_port()
    master_key = "sk-" + secrets.token_hex(24)
    config = workdir / "litellm.yaml"
    config.write_text(yaml.safe_dump({
        "model_list": [{"model_name": "m", "litellm_params": {
            "model": "openai/m", "api_base": f"http://127.0.0.1:{upstream.port}/v1", "api_key": "dummy"}}],
        "litellm_settings": {"drop_params": True, "callbacks": [], "success_callback": [], "failure_callback": [],
                             "turn_off_message_logging": True, "set_verbose": False, "cache": False},
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY", "disable_spend_logs": True,
                             "background_health_checks": False, "store_model_in_db": False},
    }, sort_keys=False))
    # Offline and quiet: no database, the bundled cost map, no telemetry or callbacks, errors-only logs.
    env = {
        "LITELLM_MASTER_KEY": master_key, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False", "LITELLM_MODE": "PRODUCTION", "DISABLE_SCHEMA_UPDATE": "true",
        "HF_HUB_OFFLINE": "1", "NO_PROXY": "127.0.0.1,localhost", "DATABASE_URL": "",
    }
    env = {k: v for k, v in env.items() if v}
    service = services.start("litellm", [
        str(litellm), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1",
    ], env=env)
    wait_ready(service, f"http://127.0.0.1:{port}/health/readiness", 180)
    return Target(f"LiteLLM {LITELLM_VERSION}", port, "m", token=master_key, service=service)


# --- report ---------------------------------------------------------------------------------------------------


def machine() -> list[str]:
    cpu = "unknown CPU"
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = match.group(1).strip() if match else cpu
    except OSError:
        pass
    versions = []
    for dist in ("outerloop", *OUTERLOOP_DEPS):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist} (absent)")
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.split("Copyright")[0]
    return [
        f"- Machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; load average "
        f"{os.getloadavg()[0]:.2f} at the end (the box is shared: other work skews the numbers)",
        f"- Python {platform.python_version()}; {', '.join(versions)}",
        f"- Load: {wrk.strip()} (1 thread) for plain requests; an asyncio raw-socket HTTP/1.1 client (uvloop, "
        f"keep-alive) for streams; everything on 127.0.0.1, one target at a time",
    ]


def _ms(value: float) -> str:
    return f"{value:.2f}"


def table(rows: list[Row]) -> list[str]:
    header = ["target"]
    for key, kind, c in CELLS:
        what = "TTFB" if kind == "stream" else ""
        header += [f"{kind} c={c} req/s", f"{kind} c={c} {what} p50 ms".replace("  ", " "),
                   f"{kind} c={c} {what} p99 ms".replace("  ", " ")]
    header += ["RSS before MiB", "RSS after MiB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if row.skipped:
            lines.append("| " + " | ".join([row.name, *["—"] * (len(header) - 1)]) + " |")
            continue
        cells = [row.name]
        for key, _, _ in CELLS:
            cell = row.cells[key]
            flag = f" ({cell.errors} err)" if cell.errors else ""
            cells += [f"{cell.rps:,.0f}{flag}", _ms(cell.p50_ms), _ms(cell.p99_ms)]
        cells += [f"{row.rss_before:.0f}" if row.rss_before is not None else "—",
                  f"{row.rss_after:.0f}" if row.rss_after is not None else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def ratios(rows: list[Row]) -> list[str]:
    by_name = {row.name: row for row in rows if not row.skipped}
    direct, plain = by_name.get("upstream direct"), by_name.get("outerloop, no filters")
    chain = by_name.get("outerloop, full chain")
    peer = next((row for name, row in by_name.items() if name.startswith("LiteLLM")), None)
    lines = []
    if direct and plain:
        lines.append(f"- outerloop p50 overhead over direct at c=1: "
                     f"{plain.cells['plain c=1'].p50_ms - direct.cells['plain c=1'].p50_ms:+.2f} ms "
                     f"(streaming TTFB: {plain.cells['stream c=1'].p50_ms - direct.cells['stream c=1'].p50_ms:+.2f} ms)")
    if plain and peer:
        lines.append(f"- outerloop req/s / LiteLLM req/s at c=32: "
                     f"{plain.cells['plain c=32'].rps / max(peer.cells['plain c=32'].rps, 1e-9):.1f}x "
                     f"(streaming: {plain.cells['stream c=32'].rps / max(peer.cells['stream c=32'].rps, 1e-9):.1f}x)")
    if plain and chain:
        lines.append(f"- full chain p50 overhead over no filters (1 KB prompt): "
                     f"{chain.cells['plain c=1'].p50_ms - plain.cells['plain c=1'].p50_ms:+.2f} ms "
                     f"(streaming TTFB: {chain.cells['stream c=1'].p50_ms - plain.cells['stream c=1'].p50_ms:+.2f} ms)")
    for row in rows:
        if row.skipped:
            lines.append(f"- {row.name}: skipped: {row.skipped}")
    return lines


def report(rows: list[Row], seconds: int, started: float) -> str:
    lines = [
        f"## Proxy overhead, {time.strftime('%Y-%m-%d')}",
        "",
        *machine(),
        f"- Workload: POST /v1/chat/completions with a {len(PROMPT)}-byte prompt; the upstream answers a small "
        f"completion, or {len(CHUNKS) + 1} SSE events when streaming. "
        f"{seconds} s per cell after a warm-up; stream latency is time to first body byte (TTFB).",
        "- RSS: VmRSS of the serving process and its children after one check request (before) and after every "
        "cell (after); the direct row shows the upstream itself. Each proxy runs one worker process.",
        "",
        *table(rows),
        "",
        *ratios(rows),
        "",
        f"Run took {time.monotonic() - started:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


# --- main -----------------------------------------------------------------------------------------------------


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    if os.geteuid() != 0:
        raise SystemExit("wrk is not installed: `sudo apt-get install -y wrk`")
    print("installing wrk from Debian's packages ...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, timeout=600,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_reported(make_report: Callable[[], str], out: Path | None) -> int:
    """Run a benchmark that owns processes: stop them on Ctrl-C or SIGTERM (explicit handlers, so a run started in
    the background, SIGINT ignored, still cleans up), then print its markdown report and write it to `out`."""
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    try:
        text = make_report()
    except KeyboardInterrupt:
        print("\ninterrupted; every started process was stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"\nfailed: {exc}", file=sys.stderr)
        return 1
    print()
    print(text, end="")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return 0


R = TypeVar("R")


def main_in_rounds(argv: Sequence[str] | None, description: str, rounds: int, quick_seconds: int,
                   run: Callable[[argparse.Namespace], R], report: Callable[[R, float], str]) -> int:
    """The command line of a benchmark whose targets take turns, round after round: `--quick` is one round of
    `quick_seconds` per cell; `run` reads `args.duration` and `args.rounds`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--duration", type=int, default=2, help="seconds per cell and round (default 2)")
    parser.add_argument("--rounds", type=int, default=rounds,
                        help=f"rounds, the targets taking turns (default {rounds})")
    parser.add_argument("--quick", action="store_true",
                        help=f"one round, {quick_seconds} s per cell, for a smoke run")
    parser.add_argument("--out", type=Path, help="also write the markdown report to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = quick_seconds, 1
    ensure_wrk()
    started = time.monotonic()
    return run_reported(lambda: report(run(args), started), args.out)


def run(args: argparse.Namespace) -> str:
    started = time.monotonic()
    seconds, warmup = (2, 1) if args.quick else (args.duration, 1)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="outerloop-bench-") as tmp:
        workdir = Path(tmp)
        services = Services(workdir)
        try:
            upstream = start_upstream(services)
            print(f"upstream on 127.0.0.1:{upstream.port}", flush=True)
            rows.append(measure(upstream, workdir, seconds, warmup))

            def proxy_row(name: str, start: Callable[[], Target]) -> None:
                try:
                    target = start()
                    print(f"{name} on 127.0.0.1:{target.port}", flush=True)
                except BenchError as exc:
                    print(f"{name}: skipped: {exc}", flush=True)
                    rows.append(Row(name, skipped=str(exc).splitlines()[0]))
                    return
                try:
                    rows.append(measure(target, workdir, seconds, warmup))
                except BenchError as exc:
                    print(f"\n{name}: failed: {exc}", flush=True)
                    rows.append(Row(name, skipped=str(exc).splitlines()[0]))
                finally:
                    if target.service:
                        services.stop(target.service)

            proxy_row("outerloop, no filters",
                      lambda: start_outerloop(services, workdir, "outerloop, no filters", upstream, []))
            api_key = "olk-bench-" + secrets.token_hex(16)
            missing = [name for name in CHAIN if name not in registered_filters()]
            if missing:
                note = (f"filters not registered yet ({', '.join(missing)}; see `outerloop plugins`)")
                print(f"outerloop, full chain: skipped: {note}", flush=True)
                rows.append(Row("outerloop, full chain", skipped=note))
            else:
                proxy_row("outerloop, full chain", lambda: start_outerloop(
                    services, workdir, "outerloop, full chain", upstream, chain_filters(api_key), token=api_key))
            if args.skip_peer:
                rows.append(Row(f"LiteLLM {LITELLM_VERSION}", skipped="--skip-peer"))
            else:
                proxy_row(f"LiteLLM {LITELLM_VERSION}", lambda: start_litellm(services, workdir, upstream))
        finally:
            services.close()
    return report(rows, seconds, started)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=5, help="seconds per cell (default 5)")
    parser.add_argument("--quick", action="store_true", help="2 s per cell, for a smoke run")
    parser.add_argument("--skip-peer", action="store_true", help="do not install or run LiteLLM")
    parser.add_argument("--out", type=Path, help="also write the markdown report to this file")
    args = parser.parse_args(argv)
    ensure_wrk()
    return run_reported(lambda: run(args), args.out)

if __name__ == "__main__":
    sys.exit(main())
