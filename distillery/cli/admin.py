"""distillery admin: operator commands, made with the registry's admin token.

The token is DISTILLERY_ADMIN_TOKEN, else the local stack's (``$DISTILLERY_HOME/stack.json``, written by
``distillery up``). It is never printed.
"""

from __future__ import annotations

import os

import click

from distillery.cli.output import console, fail, json_option, print_json, rpc_errors
from distillery.client import Client, home, read_json, service_addresses
from distillery.registry.v1 import registry_pb2

TIERS = {"standard": registry_pb2.TIER_STANDARD, "starter": registry_pb2.TIER_STARTER, "pro": registry_pb2.TIER_PRO}


def admin_token() -> str:
    """DISTILLERY_ADMIN_TOKEN, else the local stack's admin token; fails naming both when neither is there."""
    token = os.environ.get("DISTILLERY_ADMIN_TOKEN", "")
    if not token:
        secrets = (read_json(home() / "stack.json") or {}).get("secrets") or {}
        token = secrets.get("admin_token", "") if isinstance(secrets, dict) else ""
    if not isinstance(token, str) or not token:
        fail(
            "no admin token: set DISTILLERY_ADMIN_TOKEN to the registry's admin token",
            hint=f"the local stack keeps its own in {home() / 'stack.json'} (start it with `distillery up`)",
        )
    return token


def admin_client() -> Client:
    return Client(service_addresses(), admin_token())


@click.group("admin")
def group() -> None:
    """Operator commands (the registry's admin token: DISTILLERY_ADMIN_TOKEN, or the local stack's)."""


@group.group("tenants")
def tenants() -> None:
    """Tenants: tiers and private-model allowances."""


@tenants.command("set-tier")
@click.argument("tenant_id")
@click.argument("tier", type=click.Choice(list(TIERS)))
@click.option("--allowance", type=click.IntRange(min=0), default=0,
              help="Private models allowed; default (0): the tier's own (standard 3, starter 10, pro 50).")  # fmt: skip
@json_option
def set_tier(tenant_id: str, tier: str, allowance: int, as_json: bool) -> None:
    """Move a tenant to a tier (and allowance); its quota follows at once.

    An allowance below the models the tenant holds keeps them all; new runs are refused until it deletes
    models to get under it."""
    with rpc_errors():
        tenant = admin_client().registry.SetTenantTier(
            registry_pb2.SetTenantTierRequest(tenant_id=tenant_id, tier=TIERS[tier], model_allowance=allowance)
        )
    if as_json:
        print_json(tenant)
        return
    console.print(f"tenant {tenant.id} ({tenant.name}): tier {tier}, allowance {tenant.model_allowance} private models",
                  highlight=False)  # fmt: skip
