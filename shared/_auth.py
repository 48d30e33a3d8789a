"""Who is calling: end users by JWT (``Authorization: Bearer``), services by API key (``Authorization: ApiKey``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import jwt
from fastapi import Depends, HTTPException, Request, status

from ._keys import Scope, ServiceKey, find_service_key
from ._settings import HeraldSettings


def _unauthorized(message: str, scheme: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=message, headers={"WWW-Authenticate": scheme})


def _credentials(request: Request, scheme: str) -> str:
    header = request.headers.get("authorization", "")
    given_scheme, _, credentials = header.partition(" ")
    if given_scheme.lower() != scheme.lower() or not credentials.strip():
        raise _unauthorized(f"send 'Authorization: {scheme} <credentials>'", scheme)
    return credentials.strip()


_jwks_clients: dict[tuple[str, float], jwt.PyJWKClient] = {}


def jwks_client(settings: HeraldSettings) -> jwt.PyJWKClient:
    """One cached client per JWKS URL: the key set is fetched again when it ages out or a token names an unknown kid."""
    assert settings.jwt_jwks_url is not None
    key = (settings.jwt_jwks_url, settings.jwt_jwks_cache_seconds)
    if key not in _jwks_clients:
        _jwks_clients[key] = jwt.PyJWKClient(settings.jwt_jwks_url, lifespan=settings.jwt_jwks_cache_seconds, timeout=5, cooldown_duration=0)
    return _jwks_clients[key]


def decode_user_token(settings: HeraldSettings, token: str) -> str:
    """The user id (``sub``) of a valid token; raises ``jwt.InvalidTokenError`` otherwise.

    A token whose header names a ``kid`` is checked against the key of that id in
    ``HERALD_JWT_JWKS_URL`` (when set), with the asymmetric algorithms of
    ``HERALD_JWT_JWKS_ALGORITHMS`` and the key's own; any other token with the one
    algorithm the settings imply (RS256 with a public key, HS256 with a shared
    secret). ``alg: none`` and HS/RS confusion are refused by construction. May
    fetch the key set over the network (cached): call it off the event loop.
    """
    header = jwt.get_unverified_header(token)
    if settings.jwt_jwks_url and header.get("kid"):
        try:
            signing = jwks_client(settings).get_signing_key(header["kid"])
        except jwt.PyJWKClientConnectionError as exc:
            raise jwt.InvalidTokenError(f"the key set at HERALD_JWT_JWKS_URL cannot be fetched: {type(exc).__name__}") from None
        except jwt.PyJWKClientError as exc:
            raise jwt.InvalidTokenError(str(exc)) from None
        allowed = [a for a in settings.jwt_jwks_algorithms if signing.algorithm_name in (None, a)]
        key, algorithms = signing.key, allowed
    elif settings.jwt_public_key:
        key, algorithms = settings.jwt_public_key, ["RS256"]
    elif settings.jwt_secret is not None and settings.jwt_secret.get_secret_value():
        key, algorithms = settings.jwt_secret.get_secret_value(), ["HS256"]
    else:
        raise jwt.InvalidTokenError("no JWT key is configured for this token" + (" (it names no kid)" if settings.jwt_jwks_url else ""))
    claims = jwt.decode(
        token,
        key,
        algorithms=algorithms,
        audience=settings.jwt_audience,
        options={"require": ["exp", "sub", "aud"]},
    )
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub:
        raise jwt.InvalidTokenError("sub must be a non-empty string")
    return sub


def settings_of(request: Request) -> HeraldSettings:
    return request.app.state.settings


def current_user(request: Request) -> str:
    """FastAPI dependency: the authenticated end user's id."""
    token = _credentials(request, "Bearer")
    try:
        return decode_user_token(settings_of(request), token)
    except jwt.InvalidTokenError as exc:
        raise _unauthorized(f"invalid token: {exc}", "Bearer") from None


def check_api_key(settings: HeraldSettings, key: str) -> ServiceKey | None:
    """The ``HERALD_API_KEYS`` entry ``key`` belongs to, compared in constant time; None if unknown."""
    return find_service_key(settings.service_keys, key)


def service_with(scope: Scope) -> Callable[[Request], str]:
    """FastAPI dependency: the calling service's name, when its key holds ``scope`` (401 unknown key, 403 other scope)."""

    def dependency(request: Request) -> str:
        entry = check_api_key(settings_of(request), _credentials(request, "ApiKey"))
        if entry is None:
            raise _unauthorized("unknown API key", "ApiKey")
        if not entry.allows(scope):
            held = ", ".join(sorted(entry.scopes))
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"the key {entry.name!r} may not do this: it needs the scope {scope.value!r} (it has {held})")
        request.state.service_key = entry
        return entry.name

    dependency.__name__ = f"service_with_{scope.value}"
    dependency.herald_scope = scope  # type: ignore[attr-defined]  # documented as 401 and 403 (shared/_openapi.py)
    return dependency


UserId = Annotated[str, Depends(current_user)]
#: A service key with the scope to manage recipients and any user's preferences.
RecipientsService = Annotated[str, Depends(service_with(Scope.recipients))]
#: A service key with the scope to read traces and reports.
TracesService = Annotated[str, Depends(service_with(Scope.traces))]
#: A service key with the scope to publish events (the key's entry, with its sources, is on ``request.state.service_key``).
PublishService = Annotated[str, Depends(service_with(Scope.publish))]
#: A service key with the admin scope.
AdminService = Annotated[str, Depends(service_with(Scope.admin))]
