"""The `outerloop` command: serve, validate, schema, plugins, plus commands that plugins add."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from core.config import Config, FilterSpec
from core.config_loader import load_config
from core.errors import ConfigError
from core.plugins import Registry, build_registry

DEFAULT_CONFIG = "configs/default.yaml"


def configure_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request at INFO: one line per proxied call is the access log's job, not httpx's.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _serve(args: argparse.Namespace) -> int:
    from core.server import serve

    return serve(args.config, workers=args.workers, registry=args.registry)


def _validate(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.registry)
    filters = sum(len(listener.filters) for listener in config.listeners)
    print(f"{args.file}: ok ({len(config.listeners)} listener(s), {filters} filter(s), "
          f"{len(config.model_providers)} model(s))")
    return 0


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(config_schema(args.registry), indent=2))
    return 0


def _plugins(args: argparse.Namespace) -> int:
    registry: Registry = args.registry
    rows = [(e.name, e.package, e.plugin, "terminal" if e.terminal else "") for e in registry.filters.values()]
    widths = [max(len(r[i]) for r in [("filter", "package", "plugin", ""), *rows]) for i in range(3)]
    print(f"{'filter':<{widths[0]}}  {'package':<{widths[1]}}  {'plugin':<{widths[2]}}")
    for name, package, plugin, note in sorted(rows):
        print(f"{name:<{widths[0]}}  {package:<{widths[1]}}  {plugin:<{widths[2]}}  {note}".rstrip())
    return 0


def config_schema(registry: Registry) -> dict[str, Any]:
    """JSON Schema of the whole file, with each registered filter's own config and every plugin section."""
    schema = Config.model_json_schema(mode="validation")
    props = schema["properties"]
    props.pop("sections", None)
    props.pop("source", None)
    schema["additionalProperties"] = False
    defs = schema.setdefault("$defs", {})
    variants: list[dict[str, Any]] = []
    for entry in sorted(registry.filters.values(), key=lambda e: e.name):
        sub = entry.config_model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        variants.append({
            "type": "object", "additionalProperties": False, "required": ["name"],
            "properties": {"name": {"const": entry.name}, "config": sub},
        })
        variants.append({"const": entry.name})
    if variants:
        defs[FilterSpec.__name__] = {"oneOf": variants}
    for name, model in sorted(registry.config_sections.items()):
        sub = model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        props[name] = sub
    schema["title"] = "outerloop config"
    return schema


def build_parser(registry: Registry | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="outerloop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a config in the foreground")
    serve.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    serve.add_argument("-w", "--workers", type=int, default=None, help="worker processes (default: from config)")
    serve.set_defaults(func=_serve)
    validate = sub.add_parser("validate", help="check a config; exit 1 with every problem found")
    validate.add_argument("file")
    validate.set_defaults(func=_validate)
    sub.add_parser("schema", help="print the JSON Schema of the config file").set_defaults(func=_schema)
    sub.add_parser("plugins", help="list registered filters and where they come from").set_defaults(func=_plugins)
    if registry is not None:
        registry.manager.hook.outerloop_register_commands(subparsers=sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    try:
        registry = build_registry()
        args = build_parser(registry).parse_args(argv)
        # Commands use the plugins loaded here rather than loading them again.
        args.registry = registry
        return int(args.func(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
