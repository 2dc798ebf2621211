"""The `outerloop` command: serve, validate, schema, plugins, certs, plus commands that plugins add."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from core.config import Config, FilterSpec
from core.config_loader import load_config
from core.errors import ConfigError
from core.plugins import Registry, build_registry
from core.server import configure_logging, serve

DEFAULT_CONFIG = "configs/default.yaml"


def _serve(args: argparse.Namespace) -> int:
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


def _certs(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    existing = [str(p) for p in (cert_path, key_path) if p.exists()]
    if existing:
        print(f"{', '.join(existing)}: already there; remove to make a new pair", file=sys.stderr)
        return 1
    hosts = args.host or ["localhost", "127.0.0.1", "::1"]
    cert, key = self_signed_pair(hosts, args.days)
    directory.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert)
    # The key is readable by its owner only, as TLS servers expect of a private key.
    with os.fdopen(os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        out.write(key)
    print(f"wrote {cert_path} and {key_path}: self-signed for {', '.join(hosts)}, valid {args.days} days")
    print(f"clients trust it with e.g. `curl --cacert {cert_path} https://localhost:PORT/healthz`")
    return 0


def self_signed_pair(hosts: Sequence[str], days: int) -> tuple[bytes, bytes]:
    """A PEM certificate and unencrypted PEM key (ECDSA P-256) for trying TLS listeners, not for production."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


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
    serve.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                       help="the config file (default: %(default)s, relative to the current directory)")
    serve.add_argument("-w", "--workers", type=int, default=None, help="worker processes (default: from config)")
    serve.set_defaults(func=_serve)
    validate = sub.add_parser("validate", help="check a config; exit 1 with every problem found")
    validate.add_argument("file", help="the config file to check")
    validate.set_defaults(func=_validate)
    sub.add_parser("schema", help="print the JSON Schema of the config file").set_defaults(func=_schema)
    sub.add_parser("plugins", help="list registered filters and where they come from").set_defaults(func=_plugins)
    certs = sub.add_parser("certs", help="write a self-signed server.pem and server.key for a TLS listener")
    certs.add_argument("dir", help="directory to write them to, e.g. configs/certs (created if absent)")
    certs.add_argument("--host", action="append", default=None,
                       help="a name or IP the certificate is for; repeat for more (default: localhost, 127.0.0.1, ::1)")
    certs.add_argument("--days", type=int, default=365, help="days the certificate is valid (default: %(default)s)")
    certs.set_defaults(func=_certs)
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
        code = int(args.func(args))
        sys.stdout.flush()
        return code
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader left early (`outerloop schema | head`); point stdout at devnull so the flush at exit
        # does not fail again (what Python's signal docs recommend).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
