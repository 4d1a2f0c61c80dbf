"""Tokens, the access each method takes, and the caller of each RPC.

Keys look like ``dk_<40 url-safe chars>``. Only their sha256 is stored; the key
itself is shown once at creation and never logged (logs redact the ``dk_`` shape).
The registry resolves keys from its own table; every other service asks the
registry (``AuthenticateKey``) and caches the answer for a short while.

Which token each method takes is declared once per service, in its ``access.py``
(an ``AccessTable``), and enforced by ``interceptors.AuthInterceptor``: servicers
read the caller it sets (``current_caller``) and check no token themselves.
"""

from __future__ import annotations

import contextvars
import enum
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from services.common.errors import Unauthenticated

# A call between services carries the service token and names the tenant it acts for.
TENANT_HEADER = "x-distillery-tenant"
SERVICE_KEY_ID = "service"
ADMIN_KEY_ID = "admin"
RUN_KEY_ID = "run"


class Access(enum.Flag):
    """The tokens a method takes: its entry in its service's access table."""

    OPEN = enum.auto()  # no token (the key check itself; the admin calls that check their own)
    KEY = enum.auto()  # a tenant's API key
    SERVICE = enum.auto()  # the service token, naming the tenant it acts for (TENANT_HEADER)
    ADMIN = enum.auto()  # the registry's admin token
    RUN = enum.auto()  # a training job's run token, for the run its request names (``run_id``)
    TENANT = KEY | SERVICE  # a tenant's own key, or another service acting for the tenant


@dataclass(frozen=True)
class AccessTable:
    """The access of every method of one gRPC service, by method name.

    ``why`` explains, per method, why a caller with the wrong kind of token is refused
    (shown in the PermissionDenied a tenant's key gets from a service-only method).
    """

    service: str  # the full service name, e.g. "distillery.registry.v1.RegistryService"
    methods: Mapping[str, Access]
    why: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, access in self.methods.items():
            if Access.OPEN in access and access != Access.OPEN:
                raise ValueError(f"{self.service}/{name}: an open method takes no token of any kind")
            if Access.RUN in access and access != Access.RUN:
                raise ValueError(f"{self.service}/{name}: a run-token method takes no other token")
        if unknown := set(self.why) - set(self.methods):
            raise ValueError(f"{self.service}: why names methods not in the table: {sorted(unknown)}")

    def paths(self) -> dict[str, Access]:
        """The table keyed by gRPC method path (``/<service>/<method>``), as the interceptor sees calls."""
        return {f"/{self.service}/{name}": access for name, access in self.methods.items()}

    def missing(self, method_names: Iterable[str]) -> list[str]:
        """The methods of the service's proto that have no entry (each must have one)."""
        return sorted(set(method_names) - set(self.methods))


@dataclass(frozen=True)
class Caller:
    """Who is calling: the tenant every object of the call is scoped to.

    A call with the admin token has no tenant (``is_admin``); a call with a run token
    is scoped to that run's tenant and names the run (``run_id``).
    """

    tenant_id: str
    tier: int
    key_id: str
    run_id: str = ""


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("distillery_caller", default=None)


def current_caller() -> Caller:
    caller = _caller.get()
    if caller is None:  # a servicer method not covered by the auth interceptor
        raise Unauthenticated("this call needs an API key")
    return caller


def caller_or_none() -> Caller | None:
    return _caller.get()


def set_caller(caller: Caller | None) -> contextvars.Token[Caller | None]:
    return _caller.set(caller)


def service_metadata(service_token: str, tenant_id: str) -> list[tuple[str, str]]:
    """Metadata of a call one service makes to another on behalf of ``tenant_id``."""
    return [("authorization", f"Bearer {service_token}"), (TENANT_HEADER, tenant_id)]


def service_caller(metadata: Any) -> Caller:
    """The tenant a service call acts for (its token already checked)."""
    for name, value in metadata or ():
        if name.lower() == TENANT_HEADER and isinstance(value, str) and value:
            return Caller(tenant_id=value, tier=0, key_id=SERVICE_KEY_ID)
    raise Unauthenticated(f"a call with the service token must name its tenant in {TENANT_HEADER}")


def is_service(caller: Caller) -> bool:
    return caller.key_id == SERVICE_KEY_ID


ADMIN_CALLER = Caller(tenant_id="", tier=0, key_id=ADMIN_KEY_ID)


def is_admin(caller: Caller) -> bool:
    return caller.key_id == ADMIN_KEY_ID


def run_caller(tenant_id: str, run_id: str) -> Caller:
    return Caller(tenant_id=tenant_id, tier=0, key_id=RUN_KEY_ID, run_id=run_id)


def hash_key(key: str) -> str:
    """Keys carry 240 random bits, so a plain sha256 is a safe, fast lookup hash."""
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_token(metadata: Any) -> str | None:
    """The token of an 'authorization: Bearer <token>' entry of gRPC metadata, if any."""
    for name, value in metadata or ():
        if name.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


KeyResolver = Callable[[str], Awaitable[Caller]]
"""Resolves an API key to its caller; raises Unauthenticated for a bad key."""

AdminCheck = Callable[[str], bool]
"""Whether a token is the admin token (only the registry has one)."""

RunVerifier = Callable[[str, str], Awaitable[Caller]]
"""Resolves (run token, run id) to the run's caller (``run_caller``); raises Unauthenticated otherwise."""


class CachedResolver:
    """Wraps a resolver with a small TTL cache keyed by the key's hash (good answers only)."""

    def __init__(self, resolve: KeyResolver, ttl_s: float = 30.0, max_entries: int = 10_000) -> None:
        self._resolve = resolve
        self._ttl = ttl_s
        self._max = max_entries
        self._cache: dict[str, tuple[float, Caller]] = {}

    async def __call__(self, key: str) -> Caller:
        digest = hash_key(key)
        hit = self._cache.get(digest)
        now = time.monotonic()
        if hit and hit[0] > now:
            return hit[1]
        caller = await self._resolve(key)
        if len(self._cache) >= self._max:
            self._cache.clear()
        self._cache[digest] = (now + self._ttl, caller)
        return caller


def registry_resolver(channel: grpc.aio.Channel, timeout_s: float) -> KeyResolver:
    """Resolve keys by asking the registry over gRPC."""
    from distillery.registry.v1 import registry_pb2, registry_pb2_grpc
    from services.common.errors import Unavailable

    stub = registry_pb2_grpc.RegistryServiceStub(channel)

    async def resolve(key: str) -> Caller:
        try:
            reply = await stub.AuthenticateKey(registry_pb2.AuthenticateKeyRequest(api_key=key), timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise Unauthenticated(err.details() or "invalid API key") from None
            raise Unavailable(
                f"cannot check the API key: the registry service is unavailable ({err.code().name})"
            ) from None
        return Caller(tenant_id=reply.tenant_id, tier=reply.tier, key_id=reply.key_id)

    return resolve
