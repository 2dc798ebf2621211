"""File paths in a config: relative to the config file, and a missing TLS file is one line at load time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.cli import self_signed_pair
from core.config_loader import load_config
from core.errors import ConfigError
from core.plugins import Registry, build_registry


@pytest.fixture(scope="module")
def registry() -> Registry:
    return build_registry(entry_points=False)


def _config(directory: Path, tls: dict[str, str], **server: Any) -> Path:
    path = directory / "proxy.yaml"
    path.write_text(yaml.safe_dump({
        "listeners": [{"name": "tls", "port": 12443, "tls": tls}],
        "model_providers": [{"model": "demo/demo-echo", "default": True}],
        "server": server,
    }))
    return path


def _pair(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = self_signed_pair(["localhost"], 1)
    (directory / "server.pem").write_bytes(cert)
    (directory / "server.key").write_bytes(key)


def _problems(path: Path, registry: Registry) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, registry)
    return caught.value.problems


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path, registry: Registry,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _pair(tmp_path / "certs")
    path = _config(tmp_path, {"cert": "certs/server.pem", "key": "certs/server.key"},
                   access_log={"path": "logs/access.jsonl"})
    (tmp_path / "logs").mkdir()
    monkeypatch.chdir("/")
    config = load_config(path, registry)
    tls = config.listeners[0].tls
    assert tls is not None
    assert (tls.cert, tls.key) == (str(tmp_path / "certs/server.pem"), str(tmp_path / "certs/server.key"))
    assert config.server.access_log is not None
    assert config.server.access_log.path == str(tmp_path / "logs/access.jsonl")


def test_missing_cert_and_key_are_one_line_each(tmp_path: Path, registry: Registry) -> None:
    """What `serve` once met as a FileNotFoundError traceback after 'Running on ...'."""
    path = _config(tmp_path, {"cert": "certs/server.pem", "key": "certs/server.key"})
    assert _problems(path, registry) == [
        f"{path}: listeners[0].tls.cert: file {tmp_path}/certs/server.pem not found",
        f"{path}: listeners[0].tls.key: file {tmp_path}/certs/server.key not found",
    ]


def test_unreadable_and_unusable_tls_files(tmp_path: Path, registry: Registry) -> None:
    _pair(tmp_path)
    (tmp_path / "keys").mkdir()
    path = _config(tmp_path, {"cert": "server.pem", "key": "keys"})
    assert _problems(path, registry) == [f"{path}: listeners[0].tls.key: {tmp_path}/keys is a directory, expected a file"]
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    path = _config(tmp_path, {"cert": "garbage.pem", "key": "server.key"})
    [problem] = _problems(path, registry)
    assert problem.startswith(f"{path}: listeners[0].tls: cannot use {tmp_path}/garbage.pem with {tmp_path}/server.key: ")
    if os.geteuid() != 0:  # root reads any file
        (tmp_path / "server.key").chmod(0)
        path = _config(tmp_path, {"cert": "server.pem", "key": "server.key"})
        assert _problems(path, registry) == [
            f"{path}: listeners[0].tls.key: cannot read file {tmp_path}/server.key: Permission denied"]


def test_access_log_file_must_be_writable_where_it_says(tmp_path: Path, registry: Registry) -> None:
    _pair(tmp_path)
    tls = {"cert": "server.pem", "key": "server.key"}
    path = _config(tmp_path, tls, access_log={"path": "nowhere/access.jsonl"})
    assert _problems(path, registry) == [
        f"{path}: server.access_log.path: directory {tmp_path}/nowhere not found, got \"nowhere/access.jsonl\""]
    path = _config(tmp_path, tls, access_log="/var/log/x.jsonl")
    assert _problems(path, registry) == [
        f"{path}: server.access_log: expected true, false, stdout or {{path: FILE}}, got \"/var/log/x.jsonl\""]
