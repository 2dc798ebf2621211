"""Every config shipped in configs/ validates, with placeholder keys for the providers that need them."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config_loader import load_config
from core.plugins import build_registry

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_validates(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-placeholder")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-placeholder")
    config = load_config(path, build_registry(entry_points=False))
    assert config.listeners and config.model_providers
    assert sum(p.default for p in config.model_providers) == 1


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
