"""Who is calling: end users by JWT (``Authorization: Bearer``), services by API key (``Authorization: ApiKey``)."""

from __future__ import annotations

import hmac
from typing import Annotated

import jwt
from fastapi import Depends, HTTPException, Request, status

from ._settings import HeraldSettings


def _unauthorized(message: str, scheme: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=message, headers={"WWW-Authenticate": scheme})


def _credentials(request: Request, scheme: str) -> str:
    header = request.headers.get("authorization", "")
    given_scheme, _, credentials = header.partition(" ")
    if given_scheme.lower() != scheme.lower() or not credentials.strip():
        raise _unauthorized(f"send 'Authorization: {scheme} <credentials>'", scheme)
    return credentials.strip()


def decode_user_token(settings: HeraldSettings, token: str) -> str:
    """The user id (``sub``) of a valid token; raises ``jwt.InvalidTokenError`` otherwise.

    Exactly one algorithm is accepted, the one the settings imply (RS256 with a
    public key, HS256 with a shared secret), so ``alg: none`` and HS/RS
    confusion are refused by construction.
    """
    if settings.jwt_public_key:
        key, algorithm = settings.jwt_public_key, "RS256"
    elif settings.jwt_secret is not None:
        key, algorithm = settings.jwt_secret.get_secret_value(), "HS256"
    else:
        raise jwt.InvalidTokenError("no JWT key is configured")
    claims = jwt.decode(
        token,
        key,
        algorithms=[algorithm],
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


def check_api_key(settings: HeraldSettings, key: str) -> str | None:
    """The name of the service ``key`` belongs to, compared in constant time; None if unknown."""
    found = None
    for name, expected in settings.api_key_table().items():
        if hmac.compare_digest(key.encode(), expected.encode()):
            found = name
    return found


def current_service(request: Request) -> str:
    """FastAPI dependency: the calling service's name."""
    name = check_api_key(settings_of(request), _credentials(request, "ApiKey"))
    if name is None:
        raise _unauthorized("unknown API key", "ApiKey")
    return name


UserId = Annotated[str, Depends(current_user)]
ServiceName = Annotated[str, Depends(current_service)]
