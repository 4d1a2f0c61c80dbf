"""distillery keys: your own teacher provider keys (stored encrypted, never shown again)."""

from __future__ import annotations

import click

from distillery.cli.output import as_dict, console, json_option, print_json, print_table, rpc_errors
from distillery.client import Client
from distillery.teacher.v1 import teacher_pb2

PROVIDERS = {
    "openai": teacher_pb2.PROVIDER_OPENAI,
    "anthropic": teacher_pb2.PROVIDER_ANTHROPIC,
    "google": teacher_pb2.PROVIDER_GOOGLE,
}


def provider_name(provider: int) -> str:
    return teacher_pb2.Provider.Name(provider).removeprefix("PROVIDER_").lower()


@click.group("keys")
def group() -> None:
    """Bring your own OpenAI, Anthropic or Google AI keys for teacher models."""


@group.command("set")
@click.argument("provider", type=click.Choice(list(PROVIDERS)))
@click.option("--key", prompt=True, hide_input=True, envvar="DISTILLERY_PROVIDER_KEY", help="The provider's API key.")
def set_(provider: str, key: str) -> None:
    """Store a provider key (checked with a cheap call first)."""
    with rpc_errors():
        stored = Client.from_environment().teacher.SetProviderKey(
            teacher_pb2.SetProviderKeyRequest(provider=PROVIDERS[provider], api_key=key)
        )
    console.print(f"stored the {provider} key ending in {stored.last4}")


@group.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List stored provider keys (last four characters only)."""
    with rpc_errors():
        reply = Client.from_environment().teacher.ListProviderKeys(teacher_pb2.ListProviderKeysRequest())
    if as_json:
        print_json([as_dict(k) for k in reply.keys])
        return
    rows = [(provider_name(k.provider), f"…{k.last4}", k.created_at.ToJsonString()) for k in reply.keys]
    print_table("Provider keys", ["provider", "key", "stored"], rows)


@group.command("delete")
@click.argument("provider", type=click.Choice(list(PROVIDERS)))
def delete(provider: str) -> None:
    """Delete a stored provider key."""
    with rpc_errors():
        Client.from_environment().teacher.DeleteProviderKey(
            teacher_pb2.DeleteProviderKeyRequest(provider=PROVIDERS[provider])
        )
    console.print(f"deleted the {provider} key")
