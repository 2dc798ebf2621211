from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jwt
import openai
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from core.cli import main as cli_main
from core.config import Config, Listener, ModelProvider
from core.config_loader import parse_config
from core.errors import ConfigError
from core.filter import FilterContext, LocalReply
from core.flow import Flow, RouteDecision
from core.plugins import build_registry
from core.resolve import resolve_targets
from core.upstream import Upstreams
from filters.auth import AuthConfig, AuthFilter, Principal, hash_key
from tests.conftest import proxy_config
from tests.harness import run_proxy
from tests.upstream import Upstream

ALICE = "sk-alice-0123456789"
BOB = "sk-bob-abcdefghij"
SECRET = "a-shared-secret-that-is-long-enough-for-hs256"


def make_flow(headers: dict[str, str] | None = None, model: str | None = "openai/gpt-4o") -> Flow:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    if model is not None:
        body["model"] = model
    return Flow(request_id="r1", listener="test", api="openai", method="POST", path="/v1/chat/completions",
                headers=dict(headers or {}), body=json.dumps(body).encode(), json_body=body)


def build(keep_credentials: bool = False, **config: Any) -> AuthFilter:
    config.setdefault("keys", [{"name": "alice", "sha256": hash_key(ALICE), "metadata": {"team": "search"}},
                               {"name": "bob", "sha256": hash_key(BOB), "models": ["openai/gpt-4o-mini", "gpt-3*"]}])
    return AuthFilter(AuthConfig.model_validate(config), keep_credentials)


def run(flt: AuthFilter, flow: Flow) -> LocalReply | None:
    return asyncio.run(flt.on_request(flow))


UPSTREAMS = Upstreams(Config(listeners=[Listener(name="test", port=0)], model_providers=[
    ModelProvider(model=name, base_url="http://127.0.0.1:1/v1", default=name == "openai/gpt-4o")
    for name in ("openai/gpt-4o", "openai/gpt-4o-mini", "openai/gpt-3.5-turbo")]))


def served(flt: AuthFilter, flow: Flow) -> LocalReply | None:
    """The filter, then the core's resolution of targets, which enforces the principal's models."""
    return run(flt, flow) or resolve_targets(flow, UPSTREAMS, authenticates=True)


def rejected(flt: AuthFilter, flow: Flow) -> LocalReply:
    reply = run(flt, flow)
    assert isinstance(reply, LocalReply)
    return reply


# --- API keys -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    {"authorization": f"Bearer {ALICE}"},
    {"authorization": f"bearer {ALICE}"},
    {"authorization": f"BEARER   {ALICE}  "},
    {"authorization": f"Bearer\t{ALICE}\n"},
    {"x-api-key": ALICE},
    {"x-api-key": f"  {ALICE}\t"},
])
def test_key_accepted_in_either_header_with_surrounding_whitespace(headers: dict[str, str]) -> None:
    flow = make_flow(headers)
    assert run(build(), flow) is None
    assert flow.principal == Principal("alice", None, {"team": "search"}, "api_key")
    assert flow.principal.metadata["team"] == "search"
    assert flow.annotations["auth.principal"] == "alice"


@pytest.mark.parametrize("key", [ALICE[:-1], ALICE + "x", ALICE.upper(), "sk-alice 0123456789",
                                 "sk-alice-\u200b0123456789", hash_key(ALICE)])
def test_wrong_key_is_401_invalid_key_without_echoing_it(key: str) -> None:
    reply = rejected(build(), make_flow({"authorization": f"Bearer {key}"}))
    assert (reply.status, reply.details) == (401, "auth.invalid_key")
    assert reply.headers["www-authenticate"] == 'Bearer realm="outerloop", error="invalid_token"'
    assert key not in str(reply.body)


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer"}, {"authorization": "Bearer   "},
                                     {"x-api-key": "   "}])
def test_missing_credentials_is_401_with_plain_challenge(headers: dict[str, str]) -> None:
    reply = rejected(build(realm="corp"), make_flow(headers))
    assert (reply.status, reply.details) == (401, "auth.missing_credentials")
    assert reply.headers["www-authenticate"] == 'Bearer realm="corp"'


def test_other_authorization_scheme_is_refused_by_name() -> None:
    reply = rejected(build(), make_flow({"authorization": "Basic YWxpY2U6c2VjcmV0"}))
    assert reply.details == "auth.missing_credentials"
    assert "'Basic'" in str(reply.body) and "YWxpY2U6" not in str(reply.body)
    # A bearer key in x-api-key still works beside an unrelated Authorization scheme.
    assert run(build(), make_flow({"authorization": "Basic Zm9v", "x-api-key": ALICE})) is None


def test_credentials_are_stripped_unless_a_provider_passes_them_through() -> None:
    flow = make_flow({"authorization": f"Bearer {ALICE}", "x-api-key": "other", "x-keep": "1"})
    assert run(build(), flow) is None
    assert flow.headers == {"x-keep": "1"}
    kept = make_flow({"authorization": f"Bearer {ALICE}"})
    assert run(build(keep_credentials=True), kept) is None
    assert kept.headers["authorization"] == f"Bearer {ALICE}"
    config = Config(listeners=[Listener(name="t", port=0)], model_providers=[
        ModelProvider(model="byok/m", base_url="http://127.0.0.1:1/v1", passthrough_auth=True)])
    context = FilterContext(config, config.listeners[0], Upstreams(config).resolve)
    settings = AuthConfig.model_validate({"keys": [{"name": "a", "sha256": hash_key(ALICE)}]})
    assert AuthFilter.from_config(settings, context).keep_credentials


def test_model_allow_list_checks_requested_name_and_targets() -> None:
    flt = build()
    bob = {"authorization": f"Bearer {BOB}"}
    reply = served(flt, make_flow(bob, model="openai/gpt-4o"))
    assert isinstance(reply, LocalReply) and (reply.status, reply.details) == (403, "model.forbidden")
    assert "openai/gpt-4o" in str(reply.body) and "bob" in str(reply.body)
    assert served(flt, make_flow(bob, model="openai/gpt-4o-mini")) is None
    assert served(flt, make_flow(bob, model="gpt-4o-mini")) is None  # bare id
    assert served(flt, make_flow(bob, model="openai/gpt-3.5-turbo")) is None  # glob on the model id
    default = served(flt, make_flow(bob, model=None))  # the default model is checked like a named one
    assert isinstance(default, LocalReply) and default.details == "model.forbidden"
    # "auto" resolved to a forbidden default, and a route's model beyond the granted one.
    assert served(flt, make_flow(bob, model="auto")).status == 403  # type: ignore[union-attr]
    routed = make_flow(bob, model="openai/gpt-4o-mini")
    assert run(flt, routed) is None
    routed.route = RouteDecision("r", ("openai/gpt-4o-mini", "openai/gpt-4o"))
    assert resolve_targets(routed, UPSTREAMS, authenticates=True).status == 403  # type: ignore[union-attr]
    # An unknown name is a 404 listing only what the caller may use.
    unknown = served(flt, make_flow(bob, model="mystery"))
    assert isinstance(unknown, LocalReply) and (unknown.status, unknown.details) == (404, "model.not_found")
    assert "openai/gpt-4o-mini" in str(unknown.body) and "openai/gpt-4o," not in str(unknown.body)
    # A granted alias covers the target it resolves to.
    alias = build(keys=[{"name": "c", "sha256": hash_key("k"), "models": ["fast"]}])
    aliased = Upstreams(Config(listeners=[Listener(name="t", port=0)], model_aliases={"fast": "openai/gpt-4o"},
                               model_providers=[ModelProvider(model="openai/gpt-4o", base_url="http://127.0.0.1:1")]))
    flow = make_flow({"x-api-key": "k"}, model="fast")
    assert run(alias, flow) is None and resolve_targets(flow, aliased, authenticates=True) is None
    assert [t.model for t in flow.targets] == ["openai/gpt-4o"]
    # A principal without a list may use anything.
    assert run(flt, make_flow({"x-api-key": ALICE}, model="openai/o3")) is None


def test_key_from_environment_is_hashed_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEAM_KEY", "sk-from-env-123")
    raw = {"listeners": [{"name": "l", "port": 1, "filters": [
        {"name": "auth", "config": {"keys": [{"name": "team", "key": "$TEAM_KEY"}]}}]}]}
    config = parse_config(raw, build_registry(entry_points=False))
    settings = config.listeners[0].filters[0].config
    assert "sk-from-env-123" not in repr(settings) and "sk-from-env-123" not in str(settings.model_dump())
    flt = AuthFilter(settings)
    assert "sk-from-env-123" not in repr(vars(flt))
    assert run(flt, make_flow({"x-api-key": "sk-from-env-123"})) is None
    assert run(flt, make_flow({"x-api-key": "sk-from-env-12"})) is not None


@pytest.mark.parametrize(("config", "problem"), [
    ({"keys": [{"name": "a", "sha256": "abc"}]}, "64 hex digits"),
    ({"keys": [{"name": "a", "sha256": "z" * 64}]}, "64 hex digits"),
    ({"keys": [{"name": "a", "sha256": hash_key("k"), "key": "k2"}]}, "exactly one of"),
    ({"keys": [{"name": "a"}]}, "exactly one of"),
    ({}, "needs keys, jwt, or both"),
    ({"keys": [{"name": "a", "sha256": hash_key("k")}, {"name": "b", "key": "k"}]}, "repeats the key"),
    ({"jwt": {"secret": "short-secret-value"}}, "at least 32 bytes"),
    ({"jwt": {}}, "needs a secret"),
    ({"jwt": {"jwks_file": "/nonexistent/jwks.json"}}, "cannot read jwks_file"),
    ({"keys": [{"name": "a", "sha256": hash_key("k"), "colour": "red"}]}, "unknown key"),
])
def test_bad_config_names_the_path_and_never_echoes_secrets(config: dict[str, Any], problem: str) -> None:
    raw = {"listeners": [{"name": "l", "port": 1, "filters": [{"name": "auth", "config": config}]}]}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, build_registry(entry_points=False), source="x.yaml")
    text = str(caught.value)
    assert "x.yaml: listeners[0].filters[0].config" in text and problem in text
    assert "short-secret-value" not in text and "k2" not in text


# --- JWT --------------------------------------------------------------------------------------------

def hs(claims: dict[str, Any], secret: str = SECRET, **headers: Any) -> str:
    return jwt.encode({"exp": int(time.time()) + 300, **claims}, secret, algorithm="HS256", headers=headers or None)


def jwt_filter(**settings: Any) -> AuthFilter:
    return build(keys=[{"name": "alice", "sha256": hash_key(ALICE)}], jwt={"secret": SECRET, **settings})


def test_hs256_token_maps_claims_to_principal() -> None:
    flt = jwt_filter(issuer="https://idp", audience="outerloop", principal_claim="email",
                     models_claim="models", metadata_claims=["team", "missing"])
    token = hs({"email": "c@x.io", "iss": "https://idp", "aud": "outerloop", "team": "ml", "models": "gpt-4o o3"})
    flow = make_flow({"authorization": f"Bearer {token}"}, model="openai/gpt-4o")
    assert run(flt, flow) is None
    assert flow.principal == Principal("c@x.io", ("gpt-4o", "o3"), {"team": "ml"}, "jwt")
    assert "authorization" not in flow.headers
    listed = hs({"email": "d@x.io", "iss": "https://idp", "aud": "outerloop", "models": ["o3"]})
    forbidden = served(flt, make_flow({"authorization": f"Bearer {listed}"}))
    assert isinstance(forbidden, LocalReply) and forbidden.details == "model.forbidden"
    # API keys keep working next to JWTs; a wrong key is still reported as a key, not as a token.
    assert run(flt, make_flow({"x-api-key": ALICE})) is None
    assert rejected(flt, make_flow({"x-api-key": "sk-unknown"})).details == "auth.invalid_key"


# Times are offsets from when the test runs ("now+120"), not from collection: the suite runs for minutes.
@pytest.mark.parametrize(("claims", "details"), [
    ({"exp": "now-120"}, "auth.token_expired"),
    ({"nbf": "now+120"}, "auth.invalid_token"),
    ({"iss": "https://evil"}, "auth.invalid_token"),
    ({"aud": "someone-else"}, "auth.invalid_token"),
    ({"sub": ""}, "auth.invalid_token"),
    ({"sub": ["a"]}, "auth.invalid_token"),
    ({"models": 3}, "auth.invalid_token"),
])
def test_jwt_claims_are_checked(claims: dict[str, Any], details: str) -> None:
    flt = jwt_filter(issuer="https://idp", audience="outerloop", models_claim="models", leeway_seconds=30)
    now = int(time.time())
    claims = {k: now + int(v[3:]) if isinstance(v, str) and v.startswith("now") else v for k, v in claims.items()}
    token = hs({"sub": "u1", "iss": "https://idp", "aud": "outerloop", **claims})
    reply = rejected(flt, make_flow({"authorization": f"Bearer {token}"}))
    assert (reply.status, reply.details) == (401, details)
    assert reply.headers["www-authenticate"] == 'Bearer realm="outerloop", error="invalid_token"'


def test_clock_skew_leeway_applies_to_exp_and_nbf() -> None:
    flt = jwt_filter(leeway_seconds=30)
    now = int(time.time())
    for claims in ({"exp": now - 10}, {"nbf": now + 10}):
        assert run(flt, make_flow({"authorization": "Bearer " + hs({"sub": "u", **claims})})) is None
    strict = jwt_filter(leeway_seconds=0)
    assert rejected(strict, make_flow({"authorization": "Bearer " + hs({"sub": "u", "exp": now - 10})})).details \
        == "auth.token_expired"


def test_required_exp_and_missing_issuer_claim() -> None:
    no_exp = jwt.encode({"sub": "u"}, SECRET, algorithm="HS256")
    assert rejected(jwt_filter(), make_flow({"authorization": f"Bearer {no_exp}"})).details == "auth.invalid_token"
    assert run(jwt_filter(require_exp=False), make_flow({"authorization": f"Bearer {no_exp}"})) is None
    token = hs({"sub": "u"})
    assert rejected(jwt_filter(issuer="https://idp"), make_flow({"authorization": f"Bearer {token}"})).status == 401


@pytest.mark.parametrize("token", [
    "a.b.c", "..", "x" * 20 + "." + "y" * 20 + ".", "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln",
    "eyJhbGciOiJIUzI1NiJ9.W10.c2ln",  # payload is a JSON list
    "\u00e9\u00e9.\u00e9.\u00e9",
])
def test_malformed_tokens_are_invalid_token(token: str) -> None:
    reply = rejected(jwt_filter(), make_flow({"authorization": f"Bearer {token}"}))
    assert (reply.status, reply.details) == (401, "auth.invalid_token")
    assert token not in str(reply.body)


def test_forged_tokens_are_refused() -> None:
    flt = jwt_filter()
    wrong_secret = hs({"sub": "u"}, secret="another-secret-that-is-also-long-enough!!")
    unsigned = jwt.encode({"sub": "u", "exp": int(time.time()) + 60}, "", algorithm="none")
    tampered = hs({"sub": "u"}).split(".")
    tampered[1] = jwt.utils.base64url_encode(json.dumps({"sub": "admin", "exp": 2**31}).encode()).decode()
    for token in (wrong_secret, unsigned, ".".join(tampered)):
        assert rejected(flt, make_flow({"authorization": f"Bearer {token}"})).details == "auth.invalid_token"


def test_jwt_only_mode_refuses_non_jwt_bearer() -> None:
    flt = AuthFilter(AuthConfig.model_validate({"jwt": {"secret": SECRET}}))
    assert rejected(flt, make_flow({"authorization": f"Bearer {ALICE}"})).details == "auth.invalid_token"


@pytest.fixture
def jwks(tmp_path: Path) -> tuple[Path, Any, Any]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    keys = [
        {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key())), "kid": "rsa1", "use": "sig"},
        {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key())), "kid": "ec1", "use": "sig"},
    ]
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    return path, rsa_key, ec_key


def test_rs256_and_es256_with_jwks_file(jwks: tuple[Path, Any, Any]) -> None:
    path, rsa_key, ec_key = jwks
    flt = AuthFilter(AuthConfig.model_validate({"jwt": {"jwks_file": str(path), "audience": "outerloop"}}))
    claims = {"sub": "svc", "aud": "outerloop", "exp": int(time.time()) + 60}

    def check(token: str) -> LocalReply | None:
        return run(flt, make_flow({"authorization": f"Bearer {token}"}))

    assert check(jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "rsa1"})) is None
    assert check(jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": "ec1"})) is None
    bad = [
        jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "unknown"}),
        jwt.encode(claims, rsa_key, algorithm="RS256"),  # no kid, two keys in the set
        jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": "rsa1"}),  # key and algorithm disagree
        jwt.encode(claims, rsa_generate_other(), algorithm="RS256", headers={"kid": "rsa1"}),
        jwt.encode(claims, SECRET, algorithm="HS256"),  # HS256 is not configured here
    ]
    for token in bad:
        reply = check(token)
        assert isinstance(reply, LocalReply) and reply.details == "auth.invalid_token", token


def rsa_generate_other() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_public_key_as_hmac_secret_is_refused(jwks: tuple[Path, Any, Any]) -> None:
    path, rsa_key, _ = jwks
    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "kid": "rsa1"}).encode())
    payload = jwt.utils.base64url_encode(json.dumps({"sub": "x", "exp": int(time.time()) + 60}).encode())
    signature = jwt.utils.base64url_encode(hmac.new(pem, header + b"." + payload, "sha256").digest())
    token = (header + b"." + payload + b"." + signature).decode()
    flt = AuthFilter(AuthConfig.model_validate({"jwt": {"jwks_file": str(path)}}))
    assert rejected(flt, make_flow({"authorization": f"Bearer {token}"})).details == "auth.invalid_token"


def test_secrets_never_reach_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    flt = jwt_filter()
    for headers in ({"x-api-key": "sk-wrong-secret-1"}, {"authorization": "Bearer sk-wrong-secret-2"},
                    {"x-api-key": ALICE}, {"authorization": "Bearer " + hs({"sub": "u"})}):
        run(flt, make_flow(headers))
    assert "sk-wrong-secret" not in caplog.text and ALICE not in caplog.text and SECRET not in caplog.text


# --- CLI --------------------------------------------------------------------------------------------

def test_keys_hash_from_argument_and_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    digest = hashlib.sha256(b"sk-cli-key").hexdigest()
    assert cli_main(["keys", "hash", "sk-cli-key", "--name", "ci"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"sha256: {digest}" and f"sha256: {digest}" in out and '"ci"' in out
    monkeypatch.setattr("sys.stdin", io.StringIO("  sk-cli-key\n"))
    assert cli_main(["keys", "hash"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"sha256: {digest}"
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert cli_main(["keys", "hash"]) == 1


def test_keys_new_prints_a_key_matching_its_digest(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["keys", "new"]) == 0
    lines = capsys.readouterr().out.splitlines()
    key = lines[0].split()[1]
    assert lines[1] == f"sha256: {hash_key(key)}" and key.startswith("ol-")


# --- through a real hypercorn -----------------------------------------------------------------------

def auth_filter_config() -> dict[str, Any]:
    return {"name": "auth", "config": {"keys": [
        {"name": "alice", "sha256": hash_key(ALICE)},
        {"name": "bob", "sha256": hash_key(BOB), "models": ["test/test-model"]},
    ]}}


def test_openai_sdk_gets_its_own_exception_types(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    messages: Any = [{"role": "user", "content": "hi"}]
    with run_proxy(proxy_config(base, filters=[auth_filter_config()])) as proxy:
        with openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-nope", max_retries=0) as client:
            with pytest.raises(openai.AuthenticationError) as denied:
                client.chat.completions.create(model="test-model", messages=messages)
        assert denied.value.status_code == 401 and denied.value.code == "auth.invalid_key"
        assert denied.value.response.headers["www-authenticate"].startswith('Bearer realm="outerloop"')
        with openai.OpenAI(base_url=proxy.url + "/v1", api_key=BOB, max_retries=0) as client:
            with pytest.raises(openai.PermissionDeniedError) as forbidden:
                client.chat.completions.create(model="test/slow", messages=messages)
            assert forbidden.value.code == "model.forbidden"
            answer = client.chat.completions.create(model="test-model", messages=messages)
        assert answer.choices[0].message.content == "Hello from the test upstream."
        assert len(server.seen) == 1
        # The upstream sees the proxy's own key, never the client's.
        assert server.seen[-1].headers["authorization"] == "Bearer sk-upstream-secret"
        assert BOB.encode() not in server.seen[-1].body


def test_anthropic_sdk_and_raw_http(upstream: tuple[Upstream, str]) -> None:
    _, base = upstream
    with run_proxy(proxy_config(base, filters=[auth_filter_config()])) as proxy:
        with anthropic.Anthropic(base_url=proxy.url, api_key="sk-nope", max_retries=0) as client:
            with pytest.raises(anthropic.AuthenticationError):
                client.messages.create(model="test-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        response = httpx.post(proxy.url + "/v1/chat/completions", json={"model": "test-model", "messages": [{"role": "user", "content": "x"}]})
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer realm="outerloop"'
        assert response.json()["error"]["code"] == "auth.missing_credentials"


def test_passthrough_provider_receives_the_client_key(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    config = proxy_config(base, filters=[auth_filter_config()])
    config["model_providers"].append({"model": "byok/test-model", "base_url": base, "passthrough_auth": True})
    with run_proxy(config) as proxy:
        response = httpx.post(proxy.url + "/v1/chat/completions", headers={"authorization": f"Bearer {ALICE}"},
                              json={"model": "byok/test-model", "messages": [{"role": "user", "content": "x"}]})
        assert response.status_code == 200
        assert server.seen[-1].headers["authorization"] == f"Bearer {ALICE}"
