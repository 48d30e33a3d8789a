"""User tokens verified against a JWKS URL (served over HTTP here), with key rotation by `kid`, beside the shared secret."""

from __future__ import annotations

import datetime as dt
import json
import secrets

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from pydantic import ValidationError

from shared import HeraldSettings, decode_user_token
from shared._auth import _jwks_clients

from ..support import production, serve


def jwk_of(private_key, kid: str, alg: str) -> dict:
    data = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(private_key.public_key()))
    return {**data, "kid": kid, "alg": alg, "use": "sig"}


def token(key, *, kid: str | None, alg: str, sub: str = "u1", aud: str = "herald") -> str:
    claims = {"sub": sub, "aud": aud, "exp": dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


@pytest.fixture
def identity_provider():
    """A JWKS endpoint whose key set the test changes, counting the fetches."""
    published: dict = {"keys": []}
    fetches: list[int] = []
    app = FastAPI()

    @app.get("/.well-known/jwks.json")
    def jwks() -> dict:
        fetches.append(1)
        return published

    with serve(app) as url:
        yield f"{url}/.well-known/jwks.json", published, fetches
    _jwks_clients.clear()


def test_tokens_are_checked_against_the_jwks_and_a_rotated_key_is_fetched_by_its_kid(identity_provider):
    url, published, fetches = identity_provider
    old, new = rsa.generate_private_key(public_exponent=65537, key_size=2048), ec.generate_private_key(ec.SECP256R1())
    published["keys"] = [jwk_of(old, "2026-11", "RS256")]
    settings = HeraldSettings(environment="test", jwt_jwks_url=url, jwt_jwks_cache_seconds=300)

    assert decode_user_token(settings, token(old, kid="2026-11", alg="RS256", sub="ada")) == "ada"
    with pytest.raises(jwt.InvalidTokenError, match="Unable to find a signing key"):  # not published yet
        decode_user_token(settings, token(new, kid="2026-12", alg="ES256"))
    published["keys"].append(jwk_of(new, "2026-12", "ES256"))  # the provider rotates: the new kid is fetched at once
    assert decode_user_token(settings, token(new, kid="2026-12", alg="ES256", sub="grace")) == "grace"
    assert decode_user_token(settings, token(old, kid="2026-11", alg="RS256", sub="ada")) == "ada"  # the old one until removed
    fetched = len(fetches)
    for _ in range(5):
        decode_user_token(settings, token(new, kid="2026-12", alg="ES256"))
    assert len(fetches) == fetched  # known keys come from the cache

    forged = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(jwt.InvalidSignatureError):
        decode_user_token(settings, token(forged, kid="2026-11", alg="RS256"))  # a known kid, another key
    with pytest.raises(jwt.InvalidAlgorithmError):  # HS256 with the public key as secret: refused by construction
        decode_user_token(settings, jwt.encode({"sub": "x", "aud": "herald", "exp": 4102444800}, "k" * 40, algorithm="HS256", headers={"kid": "2026-11"}))
    with pytest.raises(jwt.InvalidAudienceError):
        decode_user_token(settings, token(old, kid="2026-11", alg="RS256", aud="another-app"))


def test_the_shared_secret_still_checks_tokens_without_a_kid_and_can_be_turned_off(identity_provider):
    url, published, _ = identity_provider
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    published["keys"] = [jwk_of(key, "k1", "RS256")]
    secret = secrets.token_urlsafe(32)
    both = HeraldSettings(environment="test", jwt_jwks_url=url, jwt_secret=secret)
    assert decode_user_token(both, token(secret, kid=None, alg="HS256", sub="legacy")) == "legacy"
    assert decode_user_token(both, token(key, kid="k1", alg="RS256", sub="sso")) == "sso"
    jwks_only = HeraldSettings(environment="test", jwt_jwks_url=url, jwt_secret="")
    with pytest.raises(jwt.InvalidTokenError, match="no JWT key is configured for this token"):
        decode_user_token(jwks_only, token(secret, kid=None, alg="HS256"))


def test_an_unreachable_jwks_refuses_the_token_saying_why():
    settings = HeraldSettings(environment="test", jwt_jwks_url="http://127.0.0.1:9/jwks.json")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(jwt.InvalidTokenError, match="cannot be fetched"):
        decode_user_token(settings, token(key, kid="k1", alg="RS256"))
    _jwks_clients.clear()


def test_production_with_a_jwks_needs_no_secret_but_refuses_the_development_one():
    values = {k: v for k, v in production().items() if k != "jwt_secret"}
    with pytest.raises(ValidationError, match="HERALD_JWT_SECRET .*placeholder"):
        HeraldSettings(**values, jwt_jwks_url="https://idp.example.com/jwks.json")  # the development default is still there
    assert HeraldSettings(**values, jwt_jwks_url="https://idp.example.com/jwks.json", jwt_secret="").jwt_jwks_url
    with pytest.raises(ValidationError, match="asymmetric algorithms only"):
        HeraldSettings(environment="test", jwt_jwks_algorithms="RS256,HS256")
