"""Config loading: one test per kind of mistake, each error naming file, YAML path and what was expected."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from core.cli import config_schema
from core.config_loader import load_config
from core.errors import ConfigError
from core.filter import Filter
from core.hookspecs import hookimpl
from core.plugins import Registry, build_registry

ROOT = Path(__file__).resolve().parents[2]


class LimitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    limit: int = Field(gt=0)
    mode: str = "strict"


class LimitPlugin:
    @hookimpl
    def outerloop_register_filters(self, register: Any) -> None:
        register("limit", lambda config, context: Filter(), LimitConfig)
        register("last_one", lambda config, context: Filter(), None, True)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return build_registry(extra_plugins=(LimitPlugin(),), entry_points=False)


BASE: dict[str, Any] = {
    "listeners": [{"name": "ingress", "port": 12000, "filters": []}],
    "model_providers": [{"model": "openai/gpt-4o-mini", "access_key": "sk-x", "default": True}],
}


def _load(tmp_path: Path, registry: Registry, raw: Any, text: str | None = None) -> list[str]:
    path = tmp_path / "x.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as caught:
        load_config(path, registry)
    return [p.replace(str(path), "x.yaml") for p in caught.value.problems]


def _with(**changes: Any) -> dict[str, Any]:
    return {**json.loads(json.dumps(BASE)), **changes}


def test_valid_config_loads(tmp_path: Path, registry: Registry) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(_with(listeners=[
        {"name": "a", "port": 1, "filters": [{"name": "limit", "config": {"limit": 3}}, "last_one"]}])))
    config = load_config(path, registry)
    spec = config.listeners[0].filters[0]
    assert isinstance(spec.config, LimitConfig) and spec.config.limit == 3
    assert config.model_providers[0].api == "openai"
    assert config.model_providers[0].url == "https://api.openai.com/v1"


def test_wrong_type_in_filter_config(tmp_path: Path, registry: Registry) -> None:
    raw = _with(listeners=[{"name": "a", "port": 1, "filters": [
        {"name": "limit", "config": {"limit": 1}}, {"name": "limit2"}]}])
    raw["listeners"][0]["filters"] = [{"name": "last_one"}, {"name": "limit", "config": {"limit": "ten"}}]
    problems = _load(tmp_path, registry, raw)
    assert 'x.yaml: listeners[0].filters[1].config.limit: expected an integer, got "ten"' in problems
    # the terminal filter listed before another is its own problem
    assert any("listeners[0].filters[0].name: 'last_one' is a terminal filter" in p for p in problems)


def test_out_of_range_value(tmp_path: Path, registry: Registry) -> None:
    raw = _with(listeners=[{"name": "a", "port": 1, "filters": [{"name": "limit", "config": {"limit": 0}}]}])
    assert _load(tmp_path, registry, raw) == [
        "x.yaml: listeners[0].filters[0].config.limit: expected a positive number, got 0"]


def test_unknown_filter_names_the_registered_ones(tmp_path: Path, registry: Registry) -> None:
    raw = _with(listeners=[{"name": "a", "port": 1, "filters": ["limitt"]}])
    (problem,) = _load(tmp_path, registry, raw)
    assert problem.startswith("x.yaml: listeners[0].filters[0].name: unknown filter 'limitt' (registered: ")
    assert "limit" in problem


def test_duplicate_filter(tmp_path: Path, registry: Registry) -> None:
    raw = _with(listeners=[{"name": "a", "port": 1, "filters": [
        {"name": "limit", "config": {"limit": 1}}, {"name": "limit", "config": {"limit": 2}}]}])
    assert _load(tmp_path, registry, raw) == [
        "x.yaml: listeners[0].filters[1].name: filter 'limit' is listed twice on this listener"]


def test_unknown_key_anywhere(tmp_path: Path, registry: Registry) -> None:
    raw = _with(listners=[])
    problems = _load(tmp_path, registry, raw)
    assert problems == ["x.yaml: listners: unknown top-level key (did you mean 'listeners'?)"]
    raw = _with()
    raw["model_providers"][0]["acess_key"] = "x"
    assert _load(tmp_path, registry, raw) == ["x.yaml: model_providers[0].acess_key: unknown key"]


def test_missing_required_field(tmp_path: Path, registry: Registry) -> None:
    raw = _with(listeners=[{"name": "a"}])
    assert _load(tmp_path, registry, raw) == [
        "x.yaml: listeners[0].port: expected a value (this field is required)"]


def test_bad_model_name_and_missing_base_url(tmp_path: Path, registry: Registry) -> None:
    raw = _with(model_providers=[{"model": "gpt-4o"}, {"model": "vllm/llama"}])
    problems = _load(tmp_path, registry, raw)
    assert problems == [
        "x.yaml: model_providers[0].model: expected provider/id such as openai/gpt-4o-mini, got \"gpt-4o\""]
    raw = _with(model_providers=[{"model": "vllm/llama"}])
    assert _load(tmp_path, registry, raw) == [
        "x.yaml: model_providers[0].base_url: required for provider 'vllm' (an OpenAI-compatible server's "
        "address, e.g. http://127.0.0.1:8000/v1)"]


def test_missing_environment_variable(tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OUTERLOOP_TEST_MISSING", raising=False)
    monkeypatch.setenv("OUTERLOOP_TEST_SET", "sk-from-env")
    raw = _with()
    raw["model_providers"][0]["access_key"] = "${OUTERLOOP_TEST_MISSING}"
    assert _load(tmp_path, registry, raw) == [
        "x.yaml: model_providers[0].access_key: environment variable OUTERLOOP_TEST_MISSING is not set"]
    raw["model_providers"][0]["access_key"] = "$OUTERLOOP_TEST_SET"
    raw["model_providers"][0]["headers"] = {"x-price": "$$5"}
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(raw))
    provider = load_config(path, registry).model_providers[0]
    assert provider.access_key is not None and provider.access_key.get_secret_value() == "sk-from-env"
    assert provider.headers == {"x-price": "$5"}
    assert "sk-from-env" not in repr(provider)


def test_secrets_are_not_echoed_in_errors(tmp_path: Path, registry: Registry) -> None:
    raw = _with()
    raw["model_providers"][0]["access_key"] = ["sk-should-not-appear"]
    (problem,) = _load(tmp_path, registry, raw)
    assert problem.startswith("x.yaml: model_providers[0].access_key: expected")
    assert "sk-should-not-appear" not in problem


def test_invalid_yaml_names_line(tmp_path: Path, registry: Registry) -> None:
    (problem,) = _load(tmp_path, registry, None, text="listeners:\n  - name: a\n   port: 1\n")
    assert problem.startswith("x.yaml: line 3, column 4: invalid YAML:")


def test_missing_file(tmp_path: Path, registry: Registry) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.yaml", registry)
    assert "absent.yaml: cannot read config file" in str(caught.value)


def test_cross_checks(tmp_path: Path, registry: Registry) -> None:
    raw = _with(
        listeners=[{"name": "a", "port": 5}, {"name": "a", "port": 5}],
        model_providers=[{"model": "openai/a", "default": True}, {"model": "openai/b", "default": True}],
        model_aliases={"fast": "openai/nope"},
    )
    problems = _load(tmp_path, registry, raw)
    assert "x.yaml: listeners[1].name: duplicate listener name 'a'" in problems
    assert "x.yaml: listeners[1].port: 127.0.0.1:5 is already bound" in problems
    assert "x.yaml: model_providers[1].default: only one model can be the default" in problems
    assert "x.yaml: model_aliases.fast: target 'openai/nope' is not a configured model" in problems


def test_schema_includes_filter_configs(registry: Registry) -> None:
    schema = config_schema(registry)
    variants = schema["$defs"]["FilterSpec"]["oneOf"]
    limit = next(v for v in variants if v.get("properties", {}).get("name", {}).get("const") == "limit")
    assert limit["properties"]["config"]["properties"]["limit"]["exclusiveMinimum"] == 0
    assert "listeners" in schema["properties"] and "sections" not in schema["properties"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "core.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)


def test_cli_validate_schema_plugins(tmp_path: Path) -> None:
    ok = _cli("validate", "configs/default.yaml")
    assert ok.returncode == 0 and "configs/default.yaml: ok" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_with(listeners=[{"name": "a", "port": "http"}])))
    failed = _cli("validate", str(bad))
    assert failed.returncode == 1
    assert f'{bad}: listeners[0].port: expected an integer, got "http"' in failed.stderr
    assert "Traceback" not in failed.stderr
    schema = json.loads(_cli("schema").stdout)
    assert schema["title"] == "outerloop config"
    plugins = _cli("plugins")
    assert plugins.returncode == 0 and plugins.stdout.startswith("filter")
