"""distillery keys: your own teacher provider keys (stored encrypted, never shown again), and API keys for
Distillery itself (``keys create``).

``keys set`` reads the key from a hidden prompt, or DISTILLERY_PROVIDER_KEY (``--key``
works too, but leaves the key in the shell's history). The teacher service checks it
with one cheap call to the provider before storing it; only its last four characters
are ever shown again.
"""

from __future__ import annotations

import click

from distillery.cli.output import as_dict, console, json_option, print_json, print_table, rpc_errors
from distillery.client import Client
from distillery.registry.v1 import registry_pb2
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
    """Bring your own OpenAI, Anthropic or Google AI keys for teacher models (usage not billed); create API keys."""


@group.command("set")
@click.argument("provider", type=click.Choice(list(PROVIDERS)))
@click.option(
    "--key",
    prompt="API key",
    hide_input=True,
    envvar="DISTILLERY_PROVIDER_KEY",
    show_envvar=True,
    help="The provider's API key. Leave it out to type it at a hidden prompt (keeps it out of shell history).",
)
@click.option("--skip-check", is_flag=True, help="Store the key without the provider checking it (not recommended).")
def set_(provider: str, key: str, skip_check: bool) -> None:
    """Store your key for PROVIDER, encrypted; it replaces the one stored before."""
    request = teacher_pb2.SetProviderKeyRequest(provider=PROVIDERS[provider], api_key=key, skip_check=skip_check)
    with rpc_errors():
        stored = Client.from_environment().teacher.SetProviderKey(request)
    checked = "not checked" if skip_check else "checked with the provider"
    console.print(f"stored the {provider} key ending in …{stored.last4} ({checked})", highlight=False)
    console.print(
        f"[dim]teachers named {provider}:<model> now use it; usage is billed to your {provider} account[/dim]"
    )


@group.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List stored provider keys (last four characters only)."""
    with rpc_errors():
        reply = Client.from_environment().teacher.ListProviderKeys(teacher_pb2.ListProviderKeysRequest())
    if as_json:
        print_json([{**as_dict(k), "provider": provider_name(k.provider)} for k in reply.keys])
        return
    rows = [
        (
            provider_name(k.provider),
            f"…{k.last4}",
            k.created_at.ToJsonString(),
            k.checked_at.ToJsonString() if k.HasField("checked_at") else "not checked",
        )
        for k in reply.keys
    ]
    print_table("Provider keys", ["provider", "key", "stored", "checked"], rows)


@group.command("delete")
@click.argument("provider", type=click.Choice(list(PROVIDERS)))
def delete(provider: str) -> None:
    """Delete your stored key for PROVIDER."""
    with rpc_errors():
        Client.from_environment().teacher.DeleteProviderKey(
            teacher_pb2.DeleteProviderKeyRequest(provider=PROVIDERS[provider])
        )
    console.print(f"deleted the {provider} key")


@group.command("create")
@click.option("--name", default="default", show_default=True, help="A name to recognise the key by.")
@click.option(
    "--store-traffic", is_flag=True,
    help="Store every request made with this key through the OpenAI-compatible endpoint as traffic, as if each "
         "said \"store\": true (`distillery traffic list`, `datasets from-traffic`).",
)  # fmt: skip
@json_option
def create(name: str, store_traffic: bool, as_json: bool) -> None:
    """Create a Distillery API key for your tenant; its secret is shown once, here only."""
    with rpc_errors():
        made = Client.from_environment().registry.CreateApiKey(
            registry_pb2.CreateApiKeyRequest(name=name, store_traffic=store_traffic)
        )
    if as_json:
        print_json({"key": as_dict(made.key), "secret": made.secret})
        return
    stored = ", requests stored as traffic" if made.key.store_traffic else ""
    console.print(f"created API key {made.key.id} ({made.key.name}{stored}); its secret, shown only now:",
                  highlight=False)  # fmt: skip
    click.echo(made.secret)
    console.print("[dim]use it as DISTILLERY_API_KEY, or as the bearer token of the OpenAI-compatible endpoint[/dim]")
