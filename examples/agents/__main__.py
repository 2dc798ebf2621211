"""`python -m examples.agents`: the proxy, both example agents and the keyword router, then two requests through it."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEMO = [
    ("Where should I stay in Porto for three nights?", False),
    ("Find me a flight to Lisbon and a hotel near the old town", True),
]


def _port(url: str) -> int:
    return urlsplit(url).port or 80


def plan(config: dict[str, Any]) -> tuple[list[tuple[str, list[str]]], int, int]:
    """What to start besides the proxy, as (name, argv); the agent listener's port; every port to wait for."""
    listeners = config["listeners"]
    model = next(listener for listener in listeners if listener.get("type", "model") != "agent")
    travel = next(listener for listener in listeners if listener.get("type") == "agent")
    model_url = f"http://127.0.0.1:{model['port']}/v1"
    argv: list[tuple[str, list[str]]] = []
    for agent in config.get("agents") or []:
        module = f"examples.agents.{agent['id']}"
        if find_spec(module) is None:
            print(f"no example agent {module}: start {agent['id']} at {agent['url']} yourself", file=sys.stderr)
            continue
        argv.append((agent["id"], [sys.executable, "-m", module, "--port", str(_port(agent["url"])),
                                   "--model-url", model_url]))
    router = travel.get("router") or {}
    if router.get("backend") == "http" and urlsplit(router["http"]["url"]).hostname in ("127.0.0.1", "localhost"):
        argv.append(("router", [sys.executable, "-m", "examples.agents.router", "--port",
                                str(_port(router["http"]["url"]))]))
    return argv, int(travel["port"]), int(model["port"])


def wait_for(port: int, process: subprocess.Popen[bytes], name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{name}: nothing listening on 127.0.0.1:{port} after {timeout:.0f}s")


def demo(port: int) -> None:
    """One request to one agent, then one the router sends to both in turn, streamed as the last one answers."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    with httpx.Client(timeout=30) as client:
        for text, stream in DEMO:
            body = {"model": "auto", "messages": [{"role": "user", "content": text}], "stream": stream}
            print(f"\n> {text}")
            with client.stream("POST", url, json=body) as response:
                agent = response.headers.get("x-outerloop-agent", "?")
                fallback = response.headers.get("x-outerloop-route-fallback")
                print(f"< HTTP {response.status_code}, agent(s): {agent}" + (f", fallback: {fallback}" if fallback else ""))
                if not stream:
                    answer = json.loads(response.read())
                    print(answer["choices"][0]["message"]["content"] if response.status_code == 200 else answer)
                    continue
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        event = json.loads(line[6:])
                        for choice in event.get("choices") or []:
                            print((choice.get("delta") or {}).get("content") or "", end="", flush=True)
                        if "error" in event:
                            print(event)
                print()


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in reversed(processes):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in reversed(processes):
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-c", "--config", default=str(ROOT / "configs" / "agents.yaml"),
                        help="a config with an agent listener (default: %(default)s)")
    parser.add_argument("--once", action="store_true", help="exit after the two example requests")
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    others, agent_port, model_port = plan(config)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    processes: list[subprocess.Popen[bytes]] = []
    # SIGTERM ends the run as Ctrl-C does, so the processes started here are stopped either way.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        started: list[tuple[str, int, subprocess.Popen[bytes]]] = []
        proxy = [sys.executable, "-m", "core.cli", "serve", "-c", args.config]
        for name, argv in [("outerloop", proxy), *others]:
            process = subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True)
            processes.append(process)
            port = agent_port if name == "outerloop" else int(argv[argv.index("--port") + 1])
            started.append((name, port, process))
        for name, port, process in started:
            wait_for(port, process, name)
        wait_for(model_port, processes[0], "outerloop")
        print(f"agents on {', '.join(f'{n} :{p}' for n, p, _ in started[1:])}; "
              f"agent listener on http://127.0.0.1:{agent_port}, model listener on http://127.0.0.1:{model_port}")
        demo(agent_port)
        if not args.once:
            print("\nserving; Ctrl-C stops everything")
            while all(process.poll() is None for process in processes):
                time.sleep(0.5)
            return 1
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        stop(processes)


if __name__ == "__main__":
    sys.exit(main())
