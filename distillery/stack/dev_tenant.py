"""The development tenant the local stack makes on first start, and the CLI's key for it.

``credentials.json`` holds ``{"api_key": ..., "tenant_id": ...}`` (0600). It is
kept while its key still works (WhoAmI). If it is lost, a new key is made for
the tenant recorded in stack.json; a fresh data directory gets a new tenant.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc

from distillery.registry.v1 import registry_pb2, registry_pb2_grpc
from distillery.stack.state import write_private

TENANT_NAME = "dev"
KEY_NAME = "dev-cli"
TIMEOUT_S = 10.0


class BootstrapError(Exception):
    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        # The registry (or its database, just restarted) did not answer yet: trying again may pass.
        self.retryable = retryable


def ensure(registry_address: str, admin_token: str, known_tenant_id: str | None, credentials: Path) -> tuple[str, str]:
    """Returns (what happened: "kept", "new key" or "created", the tenant id)."""
    admin = (("authorization", f"Bearer {admin_token}"),)
    with grpc.insecure_channel(registry_address) as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        stored = _read(credentials)
        if stored.get("api_key"):
            try:
                tenant = registry.WhoAmI(
                    registry_pb2.WhoAmIRequest(),
                    metadata=(("authorization", f"Bearer {stored['api_key']}"),),
                    timeout=TIMEOUT_S,
                )
                return "kept", tenant.id
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAUTHENTICATED:  # type: ignore[attr-defined]
                    raise BootstrapError(f"the registry did not answer WhoAmI: {_describe(err)}",
                                         retryable=_retryable(err)) from None  # fmt: skip
        if known_tenant_id is not None:
            secret = _new_key(registry, admin, known_tenant_id)
            if secret is not None:
                write_private(credentials, {"api_key": secret, "tenant_id": known_tenant_id})
                return "new key", known_tenant_id
        try:
            tenant = registry.CreateTenant(
                registry_pb2.CreateTenantRequest(name=TENANT_NAME, tier=registry_pb2.TIER_STANDARD),
                metadata=admin,
                timeout=TIMEOUT_S,
            )
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.ALREADY_EXISTS:  # type: ignore[attr-defined]
                raise BootstrapError(
                    f"a tenant named {TENANT_NAME!r} exists but its id is not recorded in stack.json; "
                    "create a key for it with the admin token, or start with a fresh DISTILLERY_HOME"
                ) from None
            raise BootstrapError(f"CreateTenant failed: {_describe(err)}", retryable=_retryable(err)) from None
        secret = _new_key(registry, admin, tenant.id)
        if secret is None:
            raise BootstrapError(f"the registry lost tenant {tenant.id} right after creating it")
    write_private(credentials, {"api_key": secret, "tenant_id": tenant.id})
    return "created", tenant.id


def _new_key(
    registry: registry_pb2_grpc.RegistryServiceStub, admin: tuple[tuple[str, str], ...], tenant_id: str
) -> str | None:
    """A new key for the tenant; None if there is no such tenant."""
    try:
        created = registry.CreateApiKey(
            registry_pb2.CreateApiKeyRequest(tenant_id=tenant_id, name=KEY_NAME), metadata=admin, timeout=TIMEOUT_S
        )
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
            return None
        raise BootstrapError(f"CreateApiKey failed: {_describe(err)}", retryable=_retryable(err)) from None
    return str(created.secret)


def _retryable(err: grpc.RpcError) -> bool:
    return err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)  # type: ignore[attr-defined]


def _describe(err: grpc.RpcError) -> str:
    return f"{err.code().name}: {err.details()}"  # type: ignore[attr-defined]


def _read(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
