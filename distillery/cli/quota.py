"""distillery quota: the private-model allowance of your tier."""

from __future__ import annotations

import click

from distillery.cli.output import console, json_option, print_json, rpc_errors
from distillery.client import Client
from distillery.registry.v1 import registry_pb2


@click.command("quota")
@json_option
def command(as_json: bool) -> None:
    """Show your tier's private-model allowance and how much of it is used."""
    with rpc_errors():
        quota = Client.from_environment().registry.GetQuota(registry_pb2.GetQuotaRequest())
    if as_json:
        print_json(quota)
        return
    tier = registry_pb2.Tier.Name(quota.tier).removeprefix("TIER_").lower()
    console.print(
        f"tier [bold]{tier}[/bold]: {quota.used} of {quota.allowance} private models used, "
        f"{quota.reserved} held by runs in progress, {quota.available} available"
    )
