"""API keys that store traffic: CreateApiKey's store_traffic is kept on the key, listed, and given to the services
that authenticate with it (AuthenticateKey: the gateway stores such a key's requests); `distillery keys create
--store-traffic` makes one and shows its secret once."""

from __future__ import annotations

import json

from click.testing import CliRunner
from test_tracing_and_cli import cli_env

from distillery.cli.main import cli
from distillery.registry.v1 import registry_pb2


def test_a_key_that_stores_traffic_says_so_where_it_is_checked(services, make_tenant, client_for):
    tenant = make_tenant()
    registry = client_for(tenant).registry
    made = registry.CreateApiKey(registry_pb2.CreateApiKeyRequest(name="capture", store_traffic=True))
    plain = registry.CreateApiKey(registry_pb2.CreateApiKeyRequest(name="plain"))
    assert made.key.store_traffic and not plain.key.store_traffic
    listed = {k.name: k.store_traffic for k in registry.ListApiKeys(registry_pb2.ListApiKeysRequest()).keys}
    assert listed == {"test": False, "capture": True, "plain": False}

    checked = registry.AuthenticateKey(registry_pb2.AuthenticateKeyRequest(api_key=made.secret))
    assert (checked.tenant_id, checked.key_id, checked.store_traffic) == (tenant.tenant_id, made.key.id, True)
    checked = registry.AuthenticateKey(registry_pb2.AuthenticateKeyRequest(api_key=plain.secret))
    assert (checked.key_id, checked.store_traffic) == (plain.key.id, False)


def test_the_cli_creates_a_key_that_stores_traffic(services, make_tenant, client_for):
    tenant = make_tenant()
    env = cli_env(services, tenant.api_key)
    said = CliRunner().invoke(cli, ["keys", "create", "--name", "capture", "--store-traffic"], env=env)
    assert said.exit_code == 0 and "requests stored as traffic" in said.output, said.output
    secret = next(line for line in said.output.splitlines() if line.startswith("dk_"))
    checked = client_for(tenant).registry.AuthenticateKey(registry_pb2.AuthenticateKeyRequest(api_key=secret))
    assert checked.tenant_id == tenant.tenant_id and checked.store_traffic

    said = CliRunner().invoke(cli, ["keys", "create", "--json"], env=env)
    made = json.loads(said.output)
    assert said.exit_code == 0 and made["secret"].startswith("dk_") and not made["key"].get("store_traffic")
