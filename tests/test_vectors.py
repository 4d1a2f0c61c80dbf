"""Steering vectors through the registry (CreateVector .. ExportVector, `distillery vectors`): computed with a
registered tiny model, stored per tenant, the built-in library made on first use, files in and out, refusals."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from rpc_refusals import assert_refused, refused
from tiny_models import build_llama
from trained_models import FULL, register, upload

from distillery.cli.main import cli
from distillery.registry.v1 import registry_pb2
from services.registry import vector_files

TIMEOUT_S = 120
PAIRS = [
    ("Which pet?", "cats purr and nap in the sun", "dogs bark and fetch the ball"),
    ("", "a cat is a quiet friend", "a dog is a loyal friend"),
    ("Tell me about animals.", "cats chase mice at night", "dogs run in the park"),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer tiny Llama saved as full weights (its base model: itself)."""
    directory = build_llama(tmp_path_factory.mktemp("vectors") / "model", layers=4)
    (directory / "training_config.json").write_text(json.dumps({"recipe": "sft"}))
    return directory


def a_model(services, service_registry_for, tenant, model_dir: Path) -> registry_pb2.Model:
    run_id = f"run_{secrets.token_hex(6)}"
    uri = upload(services, model_dir, f"tenants/{tenant.tenant_id}/runs/{run_id}/model/")
    return register(service_registry_for(tenant), run_id, FULL, uri, str(model_dir))


def pairs_pb(rows=PAIRS) -> list[registry_pb2.ContrastivePair]:
    return [registry_pb2.ContrastivePair(prompt=p, positive=a, negative=b) for p, a, b in rows]


def test_vectors_are_made_listed_exported_imported_and_deleted(
    services, make_tenant, client_for, service_registry_for, model_dir
):
    tenant = make_tenant()
    registry = client_for(tenant).registry
    model = a_model(services, service_registry_for, tenant, model_dir)

    # The built-in library appears on first use, made for the model's base model.
    listed = registry.ListVectors(registry_pb2.ListVectorsRequest(model_id=model.id), timeout=TIMEOUT_S).vectors
    assert [(v.name, v.built_in, v.pair_count, list(v.layers)) for v in listed] == [
        ("concise", True, 20, [1, 2]), ("formal", True, 20, [1, 2]), ("friendly", True, 20, [1, 2]),
    ]  # fmt: skip
    assert all(v.suggested_strength > 0 and v.base_model == str(model_dir) and v.hidden_size == 64 for v in listed)
    again = registry.ListVectors(registry_pb2.ListVectorsRequest(model_id=model.id), timeout=TIMEOUT_S).vectors
    assert [v.id for v in again] == [v.id for v in listed]  # made once

    made = registry.CreateVector(
        registry_pb2.CreateVectorRequest(
            name="cats", model_id=model.id, pairs=pairs_pb(), layers=[1, 3], method="pca", description="cats, not dogs"
        ),
        timeout=TIMEOUT_S,
    )
    assert (made.name, made.method, list(made.layers), made.pair_count, made.built_in) == ("cats", "pca", [1, 3], 3, 0)
    assert made.id.startswith("vec_") and made.layer_count == 4 and made.description == "cats, not dogs"
    assert registry.GetVector(registry_pb2.GetVectorRequest(vector_id=made.id)) == made
    assert registry.GetVector(registry_pb2.GetVectorRequest(vector_id="cats", model_id=model.id)) == made
    refused(lambda: registry.CreateVector(
        registry_pb2.CreateVectorRequest(name="cats", model_id=model.id, pairs=pairs_pb()), timeout=TIMEOUT_S
    ), grpc.StatusCode.ALREADY_EXISTS)  # fmt: skip

    # Out as safetensors and as llama.cpp's GGUF, and back in.
    tensors = registry.ExportVector(registry_pb2.ExportVectorRequest(vector_id=made.id))
    assert tensors.filename == "cats.safetensors" and vector_files.detect(tensors.data) == "safetensors"
    exported = vector_files.from_safetensors(tensors.data, "x")
    assert exported.layers == [1, 3] and exported.method == "pca"
    gguf = registry.ExportVector(registry_pb2.ExportVectorRequest(vector_id="cats", model_id=model.id, format="gguf"))
    assert gguf.filename == "cats.gguf" and gguf.data[:4] == b"GGUF"
    imported = registry.ImportVector(
        registry_pb2.ImportVectorRequest(name="cats-copy", model_id=model.id, data=gguf.data), timeout=TIMEOUT_S
    )
    assert (imported.method, list(imported.layers), imported.layer_count) == ("imported", [1, 3], 4)
    round_trip = vector_files.from_safetensors(
        registry.ExportVector(registry_pb2.ExportVectorRequest(vector_id=imported.id)).data, "x"
    )
    assert all((round_trip.directions[k] == exported.directions[k]).all() for k in (1, 3))

    # Deleted: gone from the list and from S3.
    registry.DeleteVector(registry_pb2.DeleteVectorRequest(vector_id=made.id))
    refused(lambda: registry.GetVector(registry_pb2.GetVectorRequest(vector_id=made.id)), grpc.StatusCode.NOT_FOUND)
    names = [v.name for v in registry.ListVectors(registry_pb2.ListVectorsRequest()).vectors]
    assert names == ["cats-copy", "concise", "formal", "friendly"]
    err = refused(lambda: registry.GetVector(registry_pb2.GetVectorRequest(vector_id="cats", model_id=model.id)),
                  grpc.StatusCode.NOT_FOUND)  # fmt: skip
    assert f"distillery vectors list --model {model.id}" in err.details()


def test_another_tenants_vector_is_not_found(services, make_tenant, client_for, service_registry_for, model_dir):
    owner, stranger = make_tenant(), make_tenant()
    model = a_model(services, service_registry_for, owner, model_dir)
    made = client_for(owner).registry.CreateVector(
        registry_pb2.CreateVectorRequest(name="mine", model_id=model.id, pairs=pairs_pb()), timeout=TIMEOUT_S
    )
    other = client_for(stranger).registry
    for call in (
        lambda: other.GetVector(registry_pb2.GetVectorRequest(vector_id=made.id)),
        lambda: other.ExportVector(registry_pb2.ExportVectorRequest(vector_id=made.id)),
        lambda: other.DeleteVector(registry_pb2.DeleteVectorRequest(vector_id=made.id)),
        lambda: other.GetVector(registry_pb2.GetVectorRequest(vector_id="mine")),
    ):
        refused(call, grpc.StatusCode.NOT_FOUND)
    refused(lambda: other.ListVectors(registry_pb2.ListVectorsRequest(model_id=model.id)), grpc.StatusCode.NOT_FOUND)
    assert list(other.ListVectors(registry_pb2.ListVectorsRequest()).vectors) == []
    assert client_for(owner).registry.GetVector(registry_pb2.GetVectorRequest(vector_id=made.id)).name == "mine"


def test_bad_pairs_layers_and_files_are_refused_naming_the_field(
    services, make_tenant, client_for, service_registry_for, model_dir, tmp_path
):
    tenant = make_tenant()
    registry = client_for(tenant).registry
    model = a_model(services, service_registry_for, tenant, model_dir)

    def create(**fields):
        request = registry_pb2.CreateVectorRequest(name="v", model_id=model.id, **fields)
        return lambda: registry.CreateVector(request, timeout=TIMEOUT_S)

    assert_refused(create(pairs=pairs_pb(PAIRS[:1])), "pairs")
    assert_refused(create(pairs=pairs_pb([*PAIRS, ("q", "", "no")])), "pairs[3].positive")
    assert_refused(create(pairs=pairs_pb([*PAIRS, ("q", "same", "same")])), "pairs[3]")
    assert_refused(create(pairs=pairs_pb([*PAIRS, ("q", "x" * 5000, "no")])), "pairs[3].positive")
    err = assert_refused(create(pairs=pairs_pb(), layers=[2, 4]), "layers")
    assert "0-3" in err.details()
    assert_refused(create(pairs=pairs_pb(), method="svd"), "method")
    assert_refused(
        lambda: registry.CreateVector(
            registry_pb2.CreateVectorRequest(name="bad name!", model_id=model.id, pairs=pairs_pb())
        ),
        "name",
    )
    assert_refused(
        lambda: registry.ImportVector(
            registry_pb2.ImportVectorRequest(name="junk", model_id=model.id, data=b"not a vector at all")
        ),
        "data",
    )
    wrong_size = vector_files.to_safetensors(
        vector_files.SteeringVector({1: __import__("torch").ones(32)}, 32, 4, "other", "mean_diff")
    )
    assert_refused(
        lambda: registry.ImportVector(
            registry_pb2.ImportVectorRequest(name="small", model_id=model.id, data=wrong_size), timeout=TIMEOUT_S
        ),
        "data",
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    # The CLI names the bad row by line and field before asking.
    env = {f"DISTILLERY_{name.upper()}_ADDRESS": address for name, address in services.addresses.items()}
    env |= {"DISTILLERY_HOME": "/nonexistent-distillery-home", "DISTILLERY_API_KEY": tenant.api_key}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"positive": "short", "negative": "long"}\n{"positive": "short"}\n')
    said = CliRunner().invoke(cli, ["vectors", "create", "v", "--model", model.id, "--pairs", str(bad)], env=env)
    assert said.exit_code == 1 and "line 2: negative must be a non-empty string" in said.output, said.output
    said = CliRunner().invoke(cli, ["vectors", "create", "v", "--model", model.id, "--pairs", str(bad),
                                    "--layers", "a-b"], env=env)  # fmt: skip
    assert said.exit_code == 2 and "4-8 or 4,5,6" in said.output


def test_the_cli_and_a_vector_attached_by_a_profile(
    services, make_tenant, client_for, service_registry_for, model_dir, tmp_path
):
    tenant = make_tenant()
    registry = client_for(tenant).registry
    model = a_model(services, service_registry_for, tenant, model_dir)
    env = {f"DISTILLERY_{name.upper()}_ADDRESS": address for name, address in services.addresses.items()}
    env |= {"DISTILLERY_HOME": "/nonexistent-distillery-home", "DISTILLERY_API_KEY": tenant.api_key}
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p, "positive": a, "negative": b}) + "\n" for p, a, b in PAIRS))

    def run(*args: str) -> str:
        said = CliRunner().invoke(cli, list(args), env=env)
        assert said.exit_code == 0, said.output
        return said.output

    made = run("vectors", "create", "cats", "--model", model.id, "--pairs", str(pairs), "--layers", "1-2")
    assert "cats: mean_diff, layers 1-2 of 4, hidden size 64, 3 pairs" in " ".join(made.split())
    listed = json.loads(run("vectors", "list", "--model", model.id, "--json"))
    assert [(v["name"], v.get("built_in", False)) for v in listed] == [
        ("concise", True), ("formal", True), ("friendly", True), ("cats", False),
    ]  # fmt: skip
    assert "concise" in run("vectors", "list")
    assert "cats" in run("vectors", "show", "cats", "--model", model.id)
    out = tmp_path / "cats.gguf"
    assert "wrote" in run("vectors", "export", "cats", "--model", model.id, "--format", "gguf", "--out", str(out))
    assert out.read_bytes()[:4] == b"GGUF"
    assert "imported" in run("vectors", "import", "cats2", str(out), "--model", model.id)

    # Attached by a profile: deleting it is refused, naming the profile; detached, it goes.
    registry.SetProfile(registry_pb2.SetProfileRequest(
        model_id=model.id, vectors=[registry_pb2.AttachedVector(vector_name="cats", strength=2.0)]
    ), timeout=TIMEOUT_S)  # fmt: skip
    err = refused(lambda: registry.DeleteVector(registry_pb2.DeleteVectorRequest(vector_id="cats", model_id=model.id)),
                  grpc.StatusCode.FAILED_PRECONDITION)  # fmt: skip
    assert f"{model.id}/default" in err.details()
    registry.SetProfile(registry_pb2.SetProfileRequest(model_id=model.id), timeout=TIMEOUT_S)
    assert "deleted cats" in run("vectors", "delete", "cats", "--model", model.id)
