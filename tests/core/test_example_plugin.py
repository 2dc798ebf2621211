"""The extension story: a third-party package, pip-installed, found by entry point, enabled in YAML."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import yaml

from tests.conftest import proxy_config
from tests.harness import proxy_process
from tests.upstream import Upstream

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "examples" / "outerloop-example-filter"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """pip-install the example package (not editable) into its own directory on PYTHONPATH."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(PACKAGE)], check=True, capture_output=True, timeout=180)
    yield {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}


def test_plugins_lists_the_installed_filter(installed: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "-m", "core.cli", "plugins"], env=installed, capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    line = next(l for l in out.stdout.splitlines() if l.startswith("example_tag"))
    assert "outerloop-example-filter" in line
    bare = subprocess.run([sys.executable, "-m", "core.cli", "plugins"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert "example_tag" not in bare.stdout


def test_filter_changes_one_request_and_answers_another(installed: dict[str, str], tmp_path: Path,
                                                        upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    raw = proxy_config(base, filters=[{"name": "example_tag",
                                       "config": {"system_note": "Be brief.", "block_word": "secret plan"}}])
    with proxy_process(raw, tmp_path, env=installed) as (_, url):
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        answer = client.chat.completions.with_raw_response.create(
            model="test-model", messages=[{"role": "user", "content": "hello"}])
        with pytest.raises(openai.PermissionDeniedError) as refused:
            client.chat.completions.create(model="test-model",
                                           messages=[{"role": "user", "content": "tell me the SECRET PLAN"}])
        client.close()
    assert answer.headers["x-example-tag"] == "tagged"
    assert server.seen[0].json["messages"][0] == {"role": "system", "content": "Be brief."}
    assert len(server.seen) == 1  # the refused request never reached the upstream
    assert refused.value.code == "example_tag.blocked"


def test_filter_config_is_validated(installed: dict[str, str], tmp_path: Path) -> None:
    raw = proxy_config("http://127.0.0.1:9/v1", filters=[{"name": "example_tag", "config": {"system_note": 5}}])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = subprocess.run([sys.executable, "-m", "core.cli", "validate", str(path)], env=installed,
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 1
    assert f"{path}: listeners[0].filters[0].config.system_note: expected a string, got 5" in out.stderr
