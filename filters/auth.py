"""Authentication: API keys (SHA-256 digests) and JWT bearer tokens, mapped to a principal other filters read."""

from __future__ import annotations

import argparse
import fnmatch
import getpass
import hashlib
import hmac
import json
import logging
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jwt
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from core.config import ConfigPath
from core.filter import Filter, FilterContext, LocalReply
from core.flow import Flow
from core.hookspecs import RegisterFilter, hookimpl

log = logging.getLogger("outerloop.auth")

_CREDENTIAL_HEADERS = ("authorization", "x-api-key")
_HEX = frozenset("0123456789abcdef")
# HS256 secrets shorter than the hash are guessable offline (RFC 7518 3.2), and PyJWT warns on them.
_MIN_HMAC_SECRET = 32


class ApiKey(BaseModel):
    """One accepted API key: its digest (or the key itself from an env reference) and who it belongs to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="principal name, e.g. a service or a user")
    sha256: str | None = Field(default=None, description="hex SHA-256 digest of the key (`outerloop keys hash`)")
    key: SecretStr | None = Field(default=None, description="the key itself, as an env reference such as $TEAM_KEY")
    models: list[str] | None = Field(default=None, description="models this key may use (glob patterns); all if omitted")
    metadata: dict[str, str] = {}

    @field_validator("sha256")
    @classmethod
    def _digest(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower().removeprefix("sha256:")
        if len(value) != 64 or not set(value) <= _HEX:
            raise ValueError("expected 64 hex digits (the output of `outerloop keys hash`)")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ApiKey:
        if (self.sha256 is None) == (self.key is None):
            raise ValueError("give exactly one of sha256 (a digest) or key (an $ENV reference)")
        if self.key is not None and not self.key.get_secret_value().strip():
            raise ValueError("key is empty (is its environment variable set to an empty string?)")
        return self

    @property
    def digest(self) -> str:
        if self.sha256 is not None:
            return self.sha256
        assert self.key is not None
        return hash_key(self.key.get_secret_value())


class JwtSettings(BaseModel):
    """Bearer JWTs: HS256 with a shared secret and/or RS256/ES256 with keys from a JWKS file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret: SecretStr | None = Field(default=None, description="HS256 shared secret (at least 32 bytes)")
    jwks_file: ConfigPath | None = Field(default=None, description="path of a JWKS JSON file with RS256/ES256 public keys")
    issuer: str | None = None
    audience: str | list[str] | None = None
    leeway_seconds: float = Field(default=30.0, ge=0, le=600, description="clock skew allowed on exp/nbf/iat")
    require_exp: bool = True
    principal_claim: str = "sub"
    models_claim: str | None = Field(default=None, description="claim listing the models a token may use")
    metadata_claims: list[str] = Field(default=[], description="claims copied into the principal's metadata")

    @model_validator(mode="after")
    def _keys(self) -> JwtSettings:
        if self.secret is None and self.jwks_file is None:
            raise ValueError("jwt needs a secret (HS256) or a jwks_file (RS256/ES256)")
        if self.secret is not None and len(self.secret.get_secret_value().encode()) < _MIN_HMAC_SECRET:
            raise ValueError(f"jwt.secret must be at least {_MIN_HMAC_SECRET} bytes long")
        if self.jwks_file is not None:
            load_jwks(self.jwks_file)
        return self


class AuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: list[ApiKey] = []
    jwt: JwtSettings | None = None
    realm: str = "outerloop"

    @model_validator(mode="after")
    def _something_accepted(self) -> AuthConfig:
        if not self.keys and self.jwt is None:
            raise ValueError("auth needs keys, jwt, or both; with neither every request would be refused")
        digests = [k.digest for k in self.keys]
        for i, digest in enumerate(digests):
            if digests.index(digest) != i:
                raise ValueError(f"keys[{i}] ({self.keys[i].name}) repeats the key of keys[{digests.index(digest)}]")
        return self


@dataclass(frozen=True)
class Principal:
    """Who is calling: a ``core.flow.Principal`` (``name``, ``may_use``) that the core and other filters read."""

    name: str
    #: Allowed model patterns (fnmatch globs); None means every model.
    models: tuple[str, ...] | None = None
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    #: "api_key" or "jwt".
    method: str = "api_key"

    def may_use(self, name: str) -> bool:
        return self.models is None or any(fnmatch.fnmatchcase(name, pattern) for pattern in self.models)


def hash_key(key: str) -> str:
    """The configured form of a key: hex SHA-256 of the key with surrounding whitespace removed."""
    return hashlib.sha256(key.strip().encode()).hexdigest()


def _raw_bytes(header_value: str) -> bytes:
    """The bytes a client sent: the core decodes header values as latin-1, configured keys hash as UTF-8."""
    try:
        return header_value.encode("latin-1")
    except UnicodeEncodeError:
        return header_value.encode("utf-8", "replace")


def load_jwks(path: str) -> jwt.PyJWKSet:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read jwks_file {path!r}: {exc.strerror or exc}") from None
    try:
        return jwt.PyJWKSet.from_json(text)
    except (jwt.PyJWTError, ValueError, KeyError) as exc:
        raise ValueError(f"jwks_file {path!r} is not a usable JWKS: {exc}") from None


class _Rejected(Exception):
    def __init__(self, details: str, message: str) -> None:
        super().__init__(message)
        self.details = details
        self.message = message


# Fixed messages per PyJWT error: its own texts may quote parts of the token.
_JWT_ERRORS: tuple[tuple[type[Exception], str, str], ...] = (
    (jwt.ExpiredSignatureError, "auth.token_expired", "token has expired"),
    (jwt.ImmatureSignatureError, "auth.invalid_token", "token is not valid yet (nbf or iat in the future)"),
    (jwt.InvalidAudienceError, "auth.invalid_token", "token audience is not accepted"),
    (jwt.InvalidIssuerError, "auth.invalid_token", "token issuer is not accepted"),
    (jwt.MissingRequiredClaimError, "auth.invalid_token", "token lacks a required claim"),
    (jwt.InvalidSignatureError, "auth.invalid_token", "token signature is invalid"),
    (jwt.InvalidAlgorithmError, "auth.invalid_token", "token algorithm is not accepted"),
)


class AuthFilter(Filter):
    """Admits requests that carry a known API key or a valid JWT; sets ``flow.principal``.

    Which models the principal may use is enforced by the core when it resolves the request's targets.
    """

    authenticates = True

    def __init__(self, settings: AuthConfig, keep_credentials: bool = False) -> None:
        self.settings = settings
        #: A provider with `passthrough_auth` forwards the client's own credential; otherwise it is removed.
        self.keep_credentials = keep_credentials
        self.realm = settings.realm.replace('"', "")
        self._keys: dict[str, tuple[str, Principal]] = {
            k.digest: (k.digest, Principal(k.name, tuple(k.models) if k.models is not None else None,
                                           MappingProxyType(dict(k.metadata)), "api_key"))
            for k in settings.keys
        }
        self._jwt = settings.jwt
        self._jwks = load_jwks(settings.jwt.jwks_file) if settings.jwt and settings.jwt.jwks_file else None

    @classmethod
    def from_config(cls, settings: AuthConfig, context: FilterContext) -> AuthFilter:
        return cls(settings, any(p.passthrough_auth for p in context.config.model_providers))

    async def on_request(self, flow: Flow) -> LocalReply | None:
        try:
            token = self._credential(flow.headers)
            if token is None:
                raise _Rejected("auth.missing_credentials",
                                "missing credentials: send `Authorization: Bearer <key>` or `x-api-key: <key>`")
            principal = self._authenticate(token)
        except _Rejected as exc:
            return self._unauthorized(exc)
        flow.principal = principal
        flow.annotations["auth.principal"] = principal.name
        flow.annotations["auth.method"] = principal.method
        if not self.keep_credentials:
            # The client's credential is for this proxy; it must not travel further (upstream, filter services).
            for name in _CREDENTIAL_HEADERS:
                flow.headers.pop(name, None)
        return None

    def _credential(self, headers: Mapping[str, str]) -> str | None:
        # Surrounding whitespace (copy-paste, trailing newlines) is never part of a key; inner whitespace is.
        parts = headers.get("authorization", "").split(None, 1)
        if parts and parts[0].lower() == "bearer":
            return parts[1].strip() if len(parts) == 2 else None
        api_key = headers.get("x-api-key", "").strip()
        if api_key:
            return api_key
        if parts:
            raise _Rejected("auth.missing_credentials",
                            f"unsupported authorization scheme {parts[0][:20]!r}; use Bearer")
        return None

    def _authenticate(self, token: str) -> Principal:
        if self._keys:
            # Timing reveals at most something about the digest, never the key; compare_digest confirms.
            digest = hashlib.sha256(_raw_bytes(token)).hexdigest()
            entry = self._keys.get(digest)
            if entry is not None and hmac.compare_digest(entry[0], digest):
                return entry[1]
        if self._jwt is not None and token.count(".") == 2:
            return self._verify_jwt(token, self._jwt)
        if not self._keys:
            raise _Rejected("auth.invalid_token", "bearer token is not a JWT")
        raise _Rejected("auth.invalid_key", "invalid API key")

    def _verify_jwt(self, token: str, settings: JwtSettings) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            key = self._jwt_key(header, settings)
            claims = jwt.decode(
                token, key, algorithms=[str(header.get("alg"))], issuer=settings.issuer,
                audience=settings.audience, leeway=settings.leeway_seconds,
                options={"require": ["exp"] if settings.require_exp else []},
            )
        except _Rejected:
            raise
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            for kind, details, message in _JWT_ERRORS:
                if isinstance(exc, kind):
                    raise _Rejected(details, message) from None
            raise _Rejected("auth.invalid_token", "token is malformed") from None
        subject = claims.get(settings.principal_claim)
        if not isinstance(subject, (str, int)) or isinstance(subject, bool) or subject == "":
            raise _Rejected("auth.invalid_token", f"token has no usable {settings.principal_claim!r} claim")
        models: tuple[str, ...] | None = None
        if settings.models_claim is not None and settings.models_claim in claims:
            raw = claims[settings.models_claim]
            listed = raw.split() if isinstance(raw, str) else raw
            if not isinstance(listed, list) or not all(isinstance(m, str) for m in listed):
                raise _Rejected("auth.invalid_token", f"token claim {settings.models_claim!r} is not a list of models")
            models = tuple(listed)
        metadata = {name: claims[name] for name in settings.metadata_claims
                    if isinstance(claims.get(name), (str, int, float, bool))}
        return Principal(str(subject), models, MappingProxyType(metadata), "jwt")

    def _jwt_key(self, header: Mapping[str, Any], settings: JwtSettings) -> Any:
        alg = header.get("alg")
        if alg == "HS256" and settings.secret is not None:
            return settings.secret.get_secret_value().encode()
        if alg in ("RS256", "ES256") and self._jwks is not None:
            kid = header.get("kid")
            candidates = [k for k in self._jwks.keys if kid is None or k.key_id == kid]
            if kid is None and len(candidates) != 1:
                raise _Rejected("auth.invalid_token", "token has no kid and the JWKS holds several keys")
            if not candidates:
                raise _Rejected("auth.invalid_token", "token is signed by an unknown key (kid)")
            jwk = candidates[0]
            if jwk.algorithm_name != alg:
                raise _Rejected("auth.invalid_token", "token algorithm does not match its key")
            return jwk.key
        raise _Rejected("auth.invalid_token", "token algorithm is not accepted")

    def _unauthorized(self, exc: _Rejected) -> LocalReply:
        challenge = f'Bearer realm="{self.realm}"'
        if exc.details != "auth.missing_credentials":
            challenge += ', error="invalid_token"'
        return LocalReply(401, exc.message, exc.details, {"www-authenticate": challenge})


@hookimpl
def outerloop_register_filters(register: RegisterFilter) -> None:
    register("auth", AuthFilter.from_config, AuthConfig)


def _keys_hash(args: argparse.Namespace) -> int:
    if args.key is not None:
        key = args.key
    elif sys.stdin.isatty():
        key = getpass.getpass("key (not echoed): ")
    else:
        key = sys.stdin.read()
    if not key.strip():
        print("outerloop keys hash: no key given (pass it as an argument or on stdin)", file=sys.stderr)
        return 1
    _print_entry(hash_key(key), args.name)
    return 0


def _keys_new(args: argparse.Namespace) -> int:
    key = "ol-" + secrets.token_urlsafe(32)
    print(f"key: {key}    (shown once: give it to the client, keep only the digest)")
    _print_entry(hash_key(key), args.name)
    return 0


def _print_entry(digest: str, name: str) -> None:
    print(f"sha256: {digest}")
    print("\n# in a listener's filters:\n- name: auth\n  config:\n    keys:")
    print(f"      - name: {json.dumps(name)}\n        sha256: {digest}")


@hookimpl
def outerloop_register_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    keys = subparsers.add_parser("keys", help="manage API keys for the auth filter")
    sub = keys.add_subparsers(dest="keys_command", required=True)
    hashing = sub.add_parser("hash", help="print the SHA-256 digest of a key (read from stdin when not given)")
    hashing.add_argument("key", nargs="?", help="the key; prefer stdin, so it stays out of shell history")
    hashing.add_argument("--name", default="my-client", help="principal name for the config snippet")
    hashing.set_defaults(func=_keys_hash)
    new = sub.add_parser("new", help="generate a random key and print it with its digest")
    new.add_argument("--name", default="my-client", help="principal name for the config snippet")
    new.set_defaults(func=_keys_new)

