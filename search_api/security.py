"""Access control: API keys and OIDC bearer tokens → a `Principal` with roles, checked per route.

Every route declares its policy with a dependency: ``require_role(Role.READER)`` (any of the given
roles), or ``public("why")``. `check_route_policies` refuses to build an app with a route that has
neither, so a new route cannot be forgotten.

Roles (least privilege; a key has one role, a token may carry several):

- ``reader``: search, points, facets, thumbnails (de-identified payload and pixels);
- ``ingest``: ingest jobs (the bucket webhook has its own token, see ``routes/events.py``);
- ``admin``: collections, aliases, deletions, backfills; also grants ``ingest``, not ``reader``
  (an administrator manages collections but does not look at images);
- ``clinician``: what ``reader`` may, and hits re-identified (Study/Series/SOP Instance UIDs and a
  viewer link) where the collection has a re-identification table; every re-identified hit is
  audited. Never granted by the open mode: re-identification needs a configured key or token.

Collection metadata (names, encoders, counts) is readable by every role.

With no keys and no OIDC issuer configured the API is *open*: every request gets a local principal
with all roles, but only from loopback (or non-IP, in-process) clients; ``radsearch serve`` refuses
to bind anything but loopback in that mode.

`AccessMiddleware` runs before any body is read: it authenticates and checks the route's roles
(401/403 before an upload is spooled or a body parsed), and writes one audit line (who, role,
action, collection, result) for every ingest/admin call and every refused call.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

import jwt
from fastapi import FastAPI, HTTPException, Request, Security
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from core.api_keys import hash_api_key, new_api_key
from core.config import ApiKeyEntry, OidcSettings, SecuritySettings
from core.errors import ConfigError
from search_api.errors import ApiError, send_error
from search_api.offload import in_thread
from search_api.routing import RouteInfo, RouteTable, StatusRecorder, iter_routes, walk_dependants

__all__ = [
    "AUDIT_LOGGER",
    "AccessMiddleware",
    "Authenticator",
    "PublicAccess",
    "Principal",
    "Role",
    "RoleRequirement",
    "check_bind",
    "check_route_policies",
    "hash_api_key",
    "new_api_key",
    "note_collections",
    "public",
    "require_role",
    "route_policy",
]

AUDIT_LOGGER = "radsearch.audit"
audit_log = logging.getLogger(AUDIT_LOGGER)
logger = logging.getLogger(__name__)


class Role(StrEnum):
    READER = "reader"
    INGEST = "ingest"
    ADMIN = "admin"
    # Reads /metrics only: the key a Prometheus server scrapes with.
    METRICS = "metrics"
    CLINICIAN = "clinician"


# What holding a role lets a principal do.
_GRANTS: dict[Role, frozenset[Role]] = {
    Role.READER: frozenset({Role.READER}),
    Role.INGEST: frozenset({Role.INGEST}),
    Role.ADMIN: frozenset({Role.ADMIN, Role.INGEST, Role.METRICS}),
    Role.METRICS: frozenset({Role.METRICS}),
    Role.CLINICIAN: frozenset({Role.CLINICIAN, Role.READER}),
}
_ROLE_NAMES = frozenset(role.value for role in Role)
_AUDITED = frozenset({Role.INGEST, Role.ADMIN})
_UNSAFE = re.compile(r"[^A-Za-z0-9_.@-]")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's name or a token's subject, and the roles they hold."""

    name: str
    roles: frozenset[Role]
    method: Literal["api_key", "jwt", "open"]

    def grants(self) -> frozenset[Role]:
        out: set[Role] = set()
        for role in self.roles:
            out |= _GRANTS[role]
        return frozenset(out)

    def may(self, allowed: Iterable[Role]) -> bool:
        return bool(self.grants() & set(allowed))

    @property
    def role_label(self) -> str:
        return "+".join(sorted(self.roles)) or "-"


class AuthError(Exception):
    """Credentials were presented but are not valid (never says which part failed)."""


class Authenticator:
    """Turns presented credentials into a `Principal`; built once per app from the settings."""

    def __init__(self, security: SecuritySettings) -> None:
        self._keys: list[tuple[bytes, ApiKeyEntry]] = [
            (bytes.fromhex(entry.sha256), entry) for entry in security.key_entries()
        ]
        self._oidc: OidcSettings | None = security.oidc
        self._jwks: jwt.PyJWKClient | None = None
        if self._oidc is not None and self._oidc.jwks_url:
            self._jwks = jwt.PyJWKClient(self._oidc.jwks_url, cache_keys=True, lifespan=3600)
        self.open = not self._keys and self._oidc is None

    def from_api_key(self, key: str) -> Principal:
        digest = hashlib.sha256(key.encode()).digest()
        found: ApiKeyEntry | None = None
        # Every entry is compared (constant time each) so timing does not reveal which one matched.
        for stored, entry in self._keys:
            if hmac.compare_digest(stored, digest):
                found = entry
        if found is None:
            raise AuthError
        return Principal(found.name, frozenset({Role(found.role)}), "api_key")

    def from_jwt(self, token: str) -> Principal:
        """Verify signature, expiry, issuer and audience; roles from the configured claim."""
        oidc = self._oidc
        if oidc is None:
            raise AuthError
        try:
            if self._jwks is not None:
                key: Any = self._jwks.get_signing_key_from_jwt(token).key
            elif oidc.shared_key is not None:
                key = oidc.shared_key.get_secret_value()
            else:
                raise AuthError
            claims = jwt.decode(
                token,
                key,
                algorithms=oidc.algorithms,
                audience=oidc.audience,
                issuer=oidc.issuer,
                leeway=oidc.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except (jwt.PyJWTError, ValueError) as exc:
            raise AuthError from exc
        roles = self._roles(claims, oidc)
        subject = str(claims.get("preferred_username") or claims.get("sub") or "jwt")
        return Principal(_UNSAFE.sub("_", subject)[:64], roles, "jwt")

    @staticmethod
    def _roles(claims: dict[str, Any], oidc: OidcSettings) -> frozenset[Role]:
        value: Any = claims
        for part in oidc.role_claim.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        roles: set[Role] = set()
        for item in values:
            name = oidc.role_map.get(str(item), str(item))
            if name in _ROLE_NAMES:
                roles.add(Role(name))
        return frozenset(roles)

    @property
    def needs_thread(self) -> bool:
        """JWKS look-ups may fetch over the network: run token checks off the event loop."""
        return self._jwks is not None

    def authenticate(self, api_key: str | None, bearer: str | None) -> Principal | None:
        """The principal for the presented credentials; None when none were presented."""
        if api_key:
            return self.from_api_key(api_key)
        if bearer:
            if bearer.count(".") == 2 and self._oidc is not None:
                return self.from_jwt(bearer)
            return self.from_api_key(bearer)
        return None


_api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key")
_bearer_scheme = HTTPBearer(auto_error=False, description="An OIDC access token (JWT) or an API key")

_LOCAL = Principal("local", frozenset(Role) - {Role.CLINICIAN}, "open")


def _is_local_client(host: str | None) -> bool:
    """Open mode serves loopback clients; a client without an IP (in-process tests) is local too."""
    if host is None:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="radsearch"'}


def _unauthorized() -> HTTPException:
    return ApiError(
        401,
        "unauthorized",
        "missing or invalid credentials",
        headers=_CHALLENGE,
    )


async def _resolve(
    authenticator: Authenticator, api_key: str | None, bearer: str | None, client_host: str | None
) -> Principal:
    """The caller's principal, or a 401 `HTTPException` (also when two credentials were sent)."""
    if api_key and bearer:
        # Which of two credentials decides is no guess to make for the caller: a key with less
        # access beside a token with more (or one of them stale) must not pass as either.
        raise ApiError(
            401,
            "ambiguous_credentials",
            "both an X-API-Key header and a bearer token were sent: send one credential",
            headers=_CHALLENGE,
        )
    if authenticator.open:
        if not _is_local_client(client_host):
            raise _unauthorized()
        return _LOCAL
    try:
        if bearer and authenticator.needs_thread:
            principal = await in_thread(authenticator.authenticate, api_key, bearer)
        else:
            principal = authenticator.authenticate(api_key, bearer)
    except AuthError:
        principal = None
    if principal is None:
        raise _unauthorized()
    return principal


def authorize(principal: Principal, roles: frozenset[Role]) -> None:
    """403 (`ApiError`) unless ``principal`` holds one of ``roles``."""
    if not principal.may(roles):
        needed = " or ".join(sorted(roles))
        raise ApiError(403, "forbidden", f"this action needs the {needed} role")


class RoleRequirement:
    """The dependency behind `require_role`: authenticate, then check the roles. 401 / 403.

    `AccessMiddleware` makes the same decision before the body is read and leaves the principal
    in the request state; this dependency repeats the role check (defence in depth, and apps or
    tests without the middleware) and documents the security schemes in OpenAPI.
    """

    def __init__(self, roles: Sequence[Role]) -> None:
        if not roles:
            raise ValueError("require_role needs at least one role")
        self.roles = frozenset(roles)

    async def __call__(
        self,
        request: Request,
        api_key: Annotated[str | None, Security(_api_key_scheme)],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer_scheme)],
    ) -> Principal:
        principal: Principal | None = getattr(request.state, "principal", None)
        if principal is None:
            authenticator: Authenticator = request.app.state.authenticator
            client = request.client.host if request.client else None
            token = bearer.credentials if bearer is not None else None
            principal = await _resolve(authenticator, api_key, token, client)
            request.state.principal = principal
        authorize(principal, self.roles)
        return principal


class PublicAccess:
    """The dependency behind `public`: no credentials needed (a no-op that documents why)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def __call__(self) -> None:
        return None


def require_role(*roles: Role) -> Any:
    """A route/router dependency allowing principals that hold any of ``roles`` (401/403 otherwise).

    ``APIRouter(dependencies=[require_role(Role.READER)])`` or ``@router.get(...,
    dependencies=[require_role(Role.ADMIN)])``.
    """
    return Security(RoleRequirement(roles))


def public(reason: str) -> Any:
    """A route/router dependency marking it deliberately reachable without credentials."""
    return Security(PublicAccess(reason))


RoutePolicy = RoleRequirement | PublicAccess


def route_policy(route: RouteInfo) -> RoutePolicy | None:
    """The route's policy; the innermost (route-level) one wins over a router-level one."""
    found: RoutePolicy | None = None
    if route.dependant is not None:
        for dep in walk_dependants(route.dependant):
            if isinstance(dep.call, RoleRequirement | PublicAccess):
                found = dep.call
    return found


def check_route_policies(app: FastAPI) -> None:
    """Refuse an app with any API route lacking a `require_role` or `public` dependency."""
    missing = [
        f"{','.join(sorted(info.methods))} {info.path}"
        for info in iter_routes(app.routes)
        if isinstance(info.route, APIRoute) and route_policy(info) is None
    ]
    if missing:
        raise RuntimeError(f"routes without an access policy (require_role/public): {missing}")


def _credentials(scope: Scope) -> tuple[str | None, str | None, str | None]:
    """(X-API-Key, bearer token, client host) of a request scope."""
    headers = Headers(scope=scope)
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" and token.strip() else None
    client = scope.get("client")
    return headers.get("x-api-key") or None, bearer, client[0] if client else None


class AccessMiddleware:
    """401/403 for protected routes before the body is read, and the audit log line."""

    def __init__(self, app: ASGIApp, *, routes: list[BaseRoute], authenticator: Authenticator) -> None:
        self.app = app
        self.routes = RouteTable(routes)
        self.authenticator = authenticator
        # RouteInfo id → its policy: the table keeps its RouteInfos for the life of the app, and
        # walking a route's dependencies on every request is work for once.
        self._policies: dict[int, RoutePolicy | None] = {}

    def _policy(self, route: RouteInfo | None) -> RoutePolicy | None:
        if route is None:
            return None
        try:
            return self._policies[id(route)]
        except KeyError:
            policy = self._policies[id(route)] = route_policy(route)
            return policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self.routes.match(scope)
        policy = self._policy(route)
        record_send = StatusRecorder(send)
        try:
            if isinstance(policy, RoleRequirement):
                # Decided before the body is read: an anonymous or unauthorised upload is refused
                # without being spooled, and a malformed body cannot turn a 401/403 into a 422.
                try:
                    principal = await _resolve(self.authenticator, *_credentials(scope))
                    scope.setdefault("state", {})["principal"] = principal
                    authorize(principal, policy.roles)
                except HTTPException as exc:
                    code = getattr(exc, "code", None) or "unauthorized"
                    await send_error(record_send, exc.status_code, code, str(exc.detail), headers=exc.headers)
                    return
            await self.app(scope, receive, record_send)
        finally:
            if route is not None and isinstance(policy, RoleRequirement):
                if policy.roles & _AUDITED or record_send.status in (401, 403):
                    _audit(scope, route, policy, record_send.status)


def _audit(scope: Scope, route: RouteInfo, policy: RoleRequirement, status: int) -> None:
    """who, role, action, collection, result: names and route templates only, never request data."""
    principal: Principal | None = scope.get("state", {}).get("principal")
    who = principal.name if principal else "anonymous"
    role = principal.role_label if principal else "-"
    path_params: dict[str, Any] = scope.get("path_params") or {}
    collection = path_params.get("name") or path_params.get("alias") or "-"
    note = scope.get("state", {}).get("audit_collections")
    if note:
        collection = ",".join(note)
    method = scope.get("method", "-")
    audit_log.info(
        "audit who=%s role=%s action=%s collection=%s result=%d needs=%s",
        who,
        role,
        f"{method}:{route.path}",
        _UNSAFE.sub("_", str(collection))[:200],
        status,
        "|".join(sorted(policy.roles)),
    )


def note_collections(request: Request, collections: Iterable[str]) -> None:
    """Let a route name the collections a call acts on (e.g. from its body) for the audit line."""
    request.state.audit_collections = [str(c) for c in collections]


def _is_loopback_host(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, security: SecuritySettings) -> str | None:
    """Refuse (`ConfigError`) to serve an open API on a non-loopback address; return a notice when
    serving it open on loopback, None when credentials are configured."""
    if security.auth_configured:
        return None
    if not _is_loopback_host(host):
        raise ConfigError(
            f"refusing to bind {host}: no API keys or OIDC issuer are configured, so the API would be "
            "open to anyone who can reach it. Set RADSEARCH_SECURITY__API_KEYS (see `radsearch keys "
            "create`) or RADSEARCH_SECURITY__OIDC, or bind 127.0.0.1."
        )
    return (
        f"no API keys configured: the API is open, served on {host} (loopback) only; "
        "configure keys before binding another address"
    )
