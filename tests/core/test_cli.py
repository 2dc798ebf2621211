"""The `outerloop` command as a new user meets it: help texts, every problem at once, pipes, certificates."""

from __future__ import annotations

import argparse
import os
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from core.cli import build_parser, main
from core.plugins import build_registry
from tests.harness import run_proxy

ROOT = Path(__file__).resolve().parents[2]


def _parsers(parser: argparse.ArgumentParser, name: str = "outerloop") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_command_and_option_has_a_help_text() -> None:
    """Plugin commands included (`keys`, `route`, `router export`...): `--help` explains every knob."""
    parser = build_parser(build_registry(entry_points=False))
    missing = []
    for name, sub in _parsers(parser):
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{name} {choice.dest}" for choice in action._choices_actions if not choice.help]
            elif not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert {name for name, _ in _parsers(parser)} >= {"outerloop serve", "outerloop certs", "outerloop keys hash",
                                                      "outerloop router export"}
    assert missing == []


def test_serve_help_says_where_the_default_config_is_looked_for(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: configs/default.yaml, relative to the current directory" in text


def test_validate_reports_every_problem_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("OUTERLOOP_TEST_KEY_A", raising=False)
    monkeypatch.delenv("OUTERLOOP_TEST_URL_B", raising=False)
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({
        "listeners": [{"name": "a", "port": 12000, "portz": 1}],
        "model_providers": [
            {"model": "openai/gpt-4o-mini", "access_key": "$OUTERLOOP_TEST_KEY_A", "default": True},
            {"model": "vllm/x", "base_url": "${OUTERLOOP_TEST_URL_B}"},
        ],
    }))
    assert main(["validate", str(path)]) == 1
    lines = capsys.readouterr().err.replace(str(path), "x.yaml").splitlines()
    # The empty string a missing variable leaves behind is not reported again as a bad URL.
    assert lines == [
        "x.yaml: model_providers[0].access_key: environment variable OUTERLOOP_TEST_KEY_A is not set",
        "x.yaml: model_providers[1].base_url: environment variable OUTERLOOP_TEST_URL_B is not set",
        "x.yaml: listeners[0].portz: unknown key",
    ]


def test_schema_into_a_pipe_closed_early_is_quiet() -> None:
    """`outerloop schema | head -1`: the reader leaving is not an error worth a traceback."""
    process = subprocess.Popen([sys.executable, "-m", "core.cli", "schema"], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    process.stdout.close()
    _, err = process.communicate(timeout=60)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
    assert process.returncode == 1


def test_certs_makes_a_pair_a_tls_listener_serves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "certs"
    assert main(["certs", str(directory)]) == 0
    cert, key = directory / "server.pem", directory / "server.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "self-signed for localhost, 127.0.0.1, ::1" in capsys.readouterr().out
    # Never overwrites a key someone may rely on.
    assert main(["certs", str(directory)]) == 1
    assert "already there" in capsys.readouterr().err

    raw = {"listeners": [{"name": "tls", "port": 0, "tls": {"cert": str(cert), "key": str(key)}}],
           "model_providers": [{"model": "demo/demo-echo", "default": True}]}
    with run_proxy(raw) as proxy:
        url = f"https://127.0.0.1:{proxy.ports[0]}"
        response = httpx.post(url + "/v1/chat/completions", verify=ssl.create_default_context(cafile=cert),
                              json={"messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200
