"""Loads one YAML config: env expansion, validation by core and plugin models, errors naming file, path, reason."""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ValidationError

from core.config import AGENT_PROVIDER, CONFIG_DIR, Config, FilterSpec
from core.errors import ConfigError

if TYPE_CHECKING:
    from core.plugins import Registry

_ENV_REF = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*)|\$)")
# Inputs at these keys are never echoed back in an error message.
_SECRET_KEY = re.compile(r"(key|secret|token|password|credential)", re.IGNORECASE)

_EXPECTED = {
    "missing": "a value (this field is required)",
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def format_path(loc: tuple[int | str, ...] | list[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "file_error":
        return str(error["msg"])
    if kind in _EXPECTED:
        expected = _EXPECTED[kind]
    elif kind == "greater_than":
        expected = "a positive number" if ctx.get("gt") == 0 else f"a value greater than {ctx.get('gt')}"
    elif kind == "greater_than_equal":
        expected = f"a value of at least {ctx.get('ge')}"
    elif kind in ("less_than", "less_than_equal"):
        expected = f"a value of at most {ctx.get('lt', ctx.get('le'))}"
    elif kind == "literal_error":
        expected = f"one of {ctx.get('expected')}"
    elif kind == "too_short":
        expected = f"at least {ctx.get('min_length')} item(s)"
    elif kind == "string_too_short":
        expected = "a non-empty string"
    elif kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", error.get("msg", "")))
    else:
        expected = str(error.get("msg", kind)).lower()
    return f"expected {expected}"


def _got(error: Mapping[str, Any], loc: tuple[Any, ...]) -> str:
    if error["type"] in ("missing", "extra_forbidden", "file_error") or "input" not in error:
        return ""
    if any(isinstance(part, str) and _SECRET_KEY.search(part) for part in loc):
        return ""
    value = error["input"]
    if isinstance(value, (dict, list)):
        return f", got a {type(value).__name__}"
    text = json.dumps(value, default=str)
    return f", got {text[:80]}"


def validation_problems(source: str, prefix: tuple[int | str, ...], exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        # Drop pydantic's internal steps (function-after[...], union tags) from the path.
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function"))))
        path = format_path(prefix + loc)
        problems.append(f"{source}: {path}: {_describe(error)}{_got(error, loc)}")
    return problems


def expand_env(value: Any, path: tuple[int | str, ...], missing: list[tuple[str, str]]) -> Any:
    """Expand $VAR and ${VAR} in every string; `$$` is a literal `$`. Missing variables are collected."""
    if isinstance(value, str):
        if "$" not in value:
            return value

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2)
            if name is None:
                return "$"
            if name not in os.environ:
                missing.append((format_path(path), name))
                return ""
            return os.environ[name]

        return _ENV_REF.sub(substitute, value)
    if isinstance(value, dict):
        return {k: expand_env(v, path + (str(k),), missing) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, path + (i,), missing) for i, v in enumerate(value)]
    return value


def read_yaml(path: str | Path) -> Any:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read config file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: byte {exc.start}: expected UTF-8 text"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{source}: {where}invalid YAML: {reason}"]) from None


def load_config(path: str | Path, registry: Registry) -> Config:
    return parse_config(read_yaml(path), registry, source=str(path), config_dir=Path(path).parent)


def parse_config(raw: Any, registry: Registry, source: str = "<config>", config_dir: Path | None = None) -> Config:
    """Validate `raw`; relative paths in it are taken relative to `config_dir` (else to the cwd)."""
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: expected a mapping at the top level, got {type(raw).__name__}"])
    missing: list[tuple[str, str]] = []
    raw = expand_env(raw, (), missing)
    context = {CONFIG_DIR: config_dir} if config_dir is not None else {}
    config, problems = _validate(raw, registry, source, context)
    # A missing variable was expanded to "": what the models then say about that value is noise.
    unset = [f"{source}: {path}" for path, _ in missing]
    problems = [p for p in problems if not any(_under(p, u) for u in unset)]
    problems[:0] = [f"{source}: {path}: environment variable {name} is not set" for path, name in missing]
    if problems or config is None:
        raise ConfigError(problems)
    return config


def _under(problem: str, prefix: str) -> bool:
    return problem.startswith(prefix) and problem[len(prefix):len(prefix) + 1] in (":", ".", "[")


def _validate(
    raw: dict[Any, Any], registry: Registry, source: str, context: dict[str, Any],
) -> tuple[Config | None, list[str]]:
    """The config and every problem found: core keys, plugin sections, filters, cross-checks."""
    problems: list[str] = []
    section_models = registry.config_sections
    sections: dict[str, Any] = {}
    core_raw: dict[str, Any] = {}
    core_keys = set(Config.model_fields) - {"sections", "source"}
    for key, value in raw.items():
        if key in section_models:
            try:
                model = section_models[key]
                sections[key] = model() if value is None else model.model_validate(value, context=context)
            except ValidationError as exc:
                problems += validation_problems(source, (key,), exc)
        elif key in core_keys:
            core_raw[key] = value
        else:
            hint = difflib.get_close_matches(str(key), sorted(core_keys | set(section_models)), n=1)
            problems.append(
                f"{source}: {key}: unknown top-level key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            )
    for key, model in section_models.items():
        if key not in sections and key not in core_raw:
            # Absent sections get the model's defaults (a section model must be constructible without input).
            sections.setdefault(key, model())

    config: Config | None = None
    try:
        config = Config.model_validate({**core_raw, "sections": sections, "source": source}, context=context)
    except ValidationError as exc:
        problems += validation_problems(source, (), exc)
    if config is not None:
        config, filter_problems = _validate_filters(config, registry, source, context)
        problems += filter_problems
        problems += _cross_checks(config, source)
    return config, problems


def _validate_filters(
    config: Config, registry: Registry, source: str, context: dict[str, Any],
) -> tuple[Config, list[str]]:
    problems: list[str] = []
    listeners = []
    for li, listener in enumerate(config.listeners):
        specs = _filter_specs(listener.filters, ("listeners", li), registry, source, context, problems)
        update: dict[str, Any] = {"filters": specs}
        if listener.agents:
            update["agents"] = [agent.model_copy(update={"filters": _filter_specs(
                agent.filters, ("listeners", li, "agents", ai), registry, source, context, problems)})
                for ai, agent in enumerate(listener.agents)]
        if listener.router is not None:
            update["router"] = _router(listener.router, ("listeners", li, "router"), registry, source, context,
                                       problems)
        listeners.append(listener.model_copy(update=update))
    return config.model_copy(update={"listeners": listeners}), problems


def _router(raw: Any, loc: tuple[int | str, ...], registry: Registry, source: str, context: dict[str, Any],
            problems: list[str]) -> Any:
    """An agent listener's `router:`, validated by the model of the `routing:` section (the routing plugin's)."""
    model = registry.config_sections.get("routing")
    if model is None:
        problems.append(f"{source}: {format_path(loc)}: needs the routing plugin, which is not loaded")
        return None
    try:
        return model.model_validate(raw if raw is not None else {}, context=context)
    except ValidationError as exc:
        problems += validation_problems(source, loc, exc)
        return raw


def _filter_specs(filters: list[FilterSpec], loc: tuple[int | str, ...], registry: Registry, source: str,
                  context: dict[str, Any], problems: list[str]) -> list[FilterSpec]:
    """One `filters:` list (a listener's or an agent's), each filter's settings validated by its model."""
    specs: list[FilterSpec] = []
    seen: set[str] = set()
    what = "agent" if "agents" in loc else "listener"
    for fi, spec in enumerate(filters):
        where = f"{source}: {format_path(loc)}.filters[{fi}]"
        entry = registry.filters.get(spec.name)
        if entry is None:
            known = ", ".join(sorted(registry.filters)) or "none"
            problems.append(f"{where}.name: unknown filter {spec.name!r} (registered: {known})")
            continue
        if spec.name in seen:
            problems.append(f"{where}.name: filter {spec.name!r} is listed twice on this {what}")
            continue
        seen.add(spec.name)
        if entry.terminal and fi != len(filters) - 1:
            problems.append(f"{where}.name: {spec.name!r} is a terminal filter and must come last")
        settings: BaseModel | None = None
        try:
            settings = entry.config_model.model_validate(spec.config if spec.config is not None else {},
                                                         context=context)
        except ValidationError as exc:
            problems += validation_problems(source, (*loc, "filters", fi, "config"), exc)
        specs.append(FilterSpec(name=spec.name, config=settings))
    return specs


def _cross_checks(config: Config, source: str) -> list[str]:
    problems = []
    names = [listener.name for listener in config.listeners]
    for i, listener in enumerate(config.listeners):
        if names.index(listener.name) != i:
            problems.append(f"{source}: listeners[{i}].name: duplicate listener name {listener.name!r}")
        binds = [(other.address, other.port) for other in config.listeners[:i]]
        if listener.port and (listener.address, listener.port) in binds:
            problems.append(f"{source}: listeners[{i}].port: {listener.address}:{listener.port} is already bound")
    problems += _agent_checks(config, source)
    models = [p.model for p in config.model_providers]
    for i, provider in enumerate(config.model_providers):
        if provider.provider == AGENT_PROVIDER:
            problems.append(f"{source}: model_providers[{i}].model: the provider prefix {AGENT_PROVIDER!r} is "
                            "reserved for agents (top-level agents:)")
        first = config.model_providers[models.index(provider.model)]
        # Entries with the same model are deployments of it: what is said of the model must agree.
        for key in ("retry_policy", "load_balancing", "api"):
            if first is not provider and getattr(first, key) != getattr(provider, key):
                problems.append(f"{source}: model_providers[{i}].{'interface' if key == 'api' else key}: "
                                f"differs from model_providers[{models.index(provider.model)}], another "
                                f"deployment of {provider.model!r}; deployments of one model must agree")
        problems += [f"{source}: model_providers[{i}].{field}: {problem}"
                     for field, problem in provider.catalogue_problems()]
    # Several deployments of the default model may each say so.
    defaults = [i for i, p in enumerate(config.model_providers)
                if p.default and p.model not in {q.model for q in config.model_providers[:i] if q.default}]
    if len(defaults) > 1:
        problems.append(f"{source}: model_providers[{defaults[1]}].default: only one model can be the default")
    ids = set(models) | {p.model_id for p in config.model_providers}
    for alias, target in config.model_aliases.items():
        if target not in ids:
            problems.append(f"{source}: model_aliases.{alias}: target {target!r} is not a configured model")
    known = ids | set(config.model_aliases)
    policies = [("retry_policy", config.retry_policy)] + [
        (f"model_providers[{i}].retry_policy", p.retry_policy) for i, p in enumerate(config.model_providers)]
    for where, policy in policies:
        for j, name in enumerate(policy.fallback_models if policy is not None else []):
            if name not in known and f"{name.partition('/')[0]}/*" not in known:
                problems.append(f"{source}: {where}.fallback_models[{j}]: {name!r} is not a configured model "
                                f"(expected provider/id, an id or an alias)")
    return problems


def _agent_checks(config: Config, source: str) -> list[str]:
    """Agents and agent listeners agree: ids known and unique, one default, agents only where they are selected."""
    problems = []
    ids = [agent.id for agent in config.agents]
    for i, agent in enumerate(config.agents):
        if ids.index(agent.id) != i:
            problems.append(f"{source}: agents[{i}].id: duplicate agent id {agent.id!r}")
    for li, listener in enumerate(config.listeners):
        where = f"{source}: listeners[{li}]"
        if listener.type != "agent":
            problems += [f"{where}.{key}: only an agent listener (type: agent) has {key}"
                         for key in ("router", "agents") if getattr(listener, key)]
            continue
        if not listener.agents:
            problems.append(f"{where}.agents: an agent listener needs at least one agent (expected "
                            "a list of {id, description})")
            continue
        chosen = [choice.id for choice in listener.agents]
        for ai, name in enumerate(chosen):
            if name not in ids:
                hint = difflib.get_close_matches(name, ids, n=1)
                problems.append(f"{where}.agents[{ai}].id: unknown agent {name!r} (configured in agents: "
                                f"{', '.join(ids) or 'none'})" + (f"; did you mean {hint[0]!r}?" if hint else ""))
            elif chosen.index(name) != ai:
                problems.append(f"{where}.agents[{ai}].id: agent {name!r} is listed twice on this listener")
        defaults = [ai for ai, choice in enumerate(listener.agents) if choice.default]
        if len(defaults) > 1:
            problems.append(f"{where}.agents[{defaults[1]}].default: only one agent can be the default "
                            f"(agents[{defaults[0]}] is)")
        elif not defaults and len(listener.agents) > 1:
            problems.append(f"{where}.agents: no default agent: mark the one that takes requests the router "
                            "cannot place with default: true")
        if listener.router is None and len(listener.agents) > 1:
            problems.append(f"{where}.router: needed to select among {len(listener.agents)} agents (the "
                            "routing: section's keys, e.g. {backend: http, http: {url: ...}})")
    return problems
