"""Every config shipped in configs/ validates offline and without API keys, unless its header says what it needs."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import yaml

from core.cli import self_signed_pair
from core.config_loader import load_config
from core.errors import ConfigError
from core.plugins import build_registry
from tests.harness import run_proxy

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
# Configs whose point is a real provider, with the environment variables they need; the others run on `demo`.
NEEDS_ENV = {"providers.yaml": {"OPENAI_API_KEY", "ANTHROPIC_API_KEY"}}
_ENV_REF = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


def _header(text: str) -> str:
    lines = text.splitlines()
    return "\n".join(lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))])


def _copy_with_certs(path: Path, directory: Path) -> Path:
    """The config next to the TLS files it names, made as its header says (`outerloop certs`)."""
    copy = directory / path.name
    copy.write_text(path.read_text())
    for listener in yaml.safe_load(path.read_text())["listeners"]:
        if listener.get("tls"):
            cert, key = self_signed_pair(["localhost"], 1)
            for name, data in ((listener["tls"]["cert"], cert), (listener["tls"]["key"], key)):
                (directory / name).parent.mkdir(parents=True, exist_ok=True)
                (directory / name).write_bytes(data)
    return copy


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_validates(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = path.read_text()
    referenced = set(_ENV_REF.findall(yaml.safe_dump(yaml.safe_load(text))))
    needed = NEEDS_ENV.get(path.name, set())
    assert referenced == needed, f"{path.name} needs {sorted(referenced)}: run it on demo or list it in NEEDS_ENV"
    assert all(name in _header(text) for name in needed), f"{path.name}: its header must name {sorted(needed)}"
    for name in referenced:
        monkeypatch.setenv(name, "sk-placeholder")
    config = load_config(_copy_with_certs(path, tmp_path), build_registry(entry_points=False))
    assert config.listeners and config.model_providers
    assert sum(p.default for p in config.model_providers) == 1


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name not in NEEDS_ENV],
                         ids=[p.name for p in CONFIGS if p.name not in NEEDS_ENV])
def test_offline_config_serves_a_completion(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    for listener in raw["listeners"]:
        listener["port"] = 0
    raw.pop("tracing", None)  # no collector runs here; exporting is the tracing tests' business
    with run_proxy(raw) as proxy:
        response = httpx.post(proxy.url + "/v1/chat/completions", headers={"authorization": "Bearer demo-key"},
                              json={"messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text
    assert response.json()["model"].startswith("demo/")


def test_providers_config_says_how_to_make_its_certs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = next(p for p in CONFIGS if p.name == "providers.yaml")
    assert "outerloop certs configs/certs" in _header(path.read_text())
    for name in NEEDS_ENV["providers.yaml"]:
        monkeypatch.setenv(name, "sk-placeholder")
    copy = tmp_path / path.name
    copy.write_text(path.read_text())
    with pytest.raises(ConfigError) as caught:
        load_config(copy, build_registry(entry_points=False))
    assert caught.value.problems == [
        f"{copy}: listeners[1].tls.cert: file {tmp_path}/certs/server.pem not found",
        f"{copy}: listeners[1].tls.key: file {tmp_path}/certs/server.key not found",
    ]


def test_there_are_examples() -> None:
    assert {"default.yaml", "filters.yaml", "routing.yaml", "tracing.yaml", "providers.yaml"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_matches_the_published_schema(path: Path) -> None:
    """What `outerloop schema` gives editors accepts every real config, filter settings included."""
    import jsonschema
    import yaml

    from core.cli import config_schema

    schema = config_schema(build_registry(entry_points=False))
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)


def test_schema_rejects_what_the_loader_rejects() -> None:
    import jsonschema

    from core.cli import config_schema

    schema = config_schema(build_registry(entry_points=False))
    bad = {"listeners": [{"name": "a", "port": 1, "filters": [{"name": "rate_cap", "config": {"capz": []}}]}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"listeners": [{"name": "a", "port": "http"}]}, schema)
