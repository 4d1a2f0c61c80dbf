"""Export: a registered model's weights as files its tenant downloads (adapter, merged, gguf), each export
with its model card; ``distillery models export`` resumes a partial download; presigned URLs serve the same
bytes; ``GetModel`` shows the card and the artifacts.

The models are tests/trained_models.py's tiny Llamas: the LoRA adapter answers QUESTION with "bleu".
"""

from __future__ import annotations

import hashlib
import secrets
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from google.protobuf import json_format, struct_pb2
from rpc_refusals import field_of, raised, refused
from trained_models import FULL, GENERATE_TIMEOUT_S, LORA, QUESTION, build_artifacts, keys_under, upload

from distillery.cli.main import cli
from distillery.registry.v1 import registry_pb2
from services.common.errors import FailedPrecondition
from services.registry import gguf_export

EXPORT_TIMEOUT_S = 300
TRAINING_CONFIG = {
    "recipe": "sft-small", "train_rows": 120, "eval_rows": 12,
    "data": {"dataset_id": "ds_colours", "eval_dataset_id": "ds_colours_eval", "split_id": "spl_1"},
    "sft": {"learning_rate": 0.0002, "epochs": 3, "lora_r": 8, "lora_alpha": 16, "full_finetune": False},
}  # fmt: skip


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    return build_artifacts(tmp_path_factory.mktemp("models"))


def registered(services, service, tenant_id: str, artifacts: dict[str, Path], kind: int) -> registry_pb2.Model:
    """A model registered as the trainer registers one, with a training_config that names its recipe and data."""
    run_id = f"run_{secrets.token_hex(6)}"
    directory = artifacts["lora" if kind == LORA else "full"]
    uri = upload(services, directory, f"tenants/{tenant_id}/runs/{run_id}/model/")
    config = struct_pb2.Struct()
    json_format.ParseDict(TRAINING_CONFIG, config)
    service.ReserveQuota(registry_pb2.ReserveQuotaRequest(run_id=run_id))
    return service.RegisterModel(
        registry_pb2.RegisterModelRequest(
            run_id=run_id, name="colours", path=3, base_model=str(artifacts["base"]), artifact_kind=kind,
            artifact_uri=uri, metrics={"eval_loss_after": 0.25, "eval_loss_before": 3.5},
            training_config=config,
        )
    )  # fmt: skip


def export(client, model_id: str, export_format: str) -> registry_pb2.Export:
    request = registry_pb2.ExportModelRequest(model_id=model_id, format=export_format)
    return client.registry.ExportModel(request, timeout=EXPORT_TIMEOUT_S)


def read(client, model_id: str, export_format: str, path: str, offset: int = 0) -> bytes:
    request = registry_pb2.ReadExportFileRequest(model_id=model_id, format=export_format, path=path, offset=offset)
    return b"".join(chunk.data for chunk in client.registry.ReadExportFile(request, timeout=60))


def cli_env(services, tenant) -> dict[str, str]:
    env = {f"DISTILLERY_{name.upper()}_ADDRESS": address for name, address in services.addresses.items()}
    return env | {"DISTILLERY_HOME": "/nonexistent-distillery-home", "DISTILLERY_API_KEY": tenant.api_key}


def test_adapter_export_has_the_adapter_and_its_card(
    services, make_tenant, client_for, service_registry_for, artifacts
):
    tenant = make_tenant()
    client = client_for(tenant)
    model = registered(services, service_registry_for(tenant), tenant.tenant_id, artifacts, LORA)

    built = export(client, model.id, "adapter")
    files = {f.path: f for f in built.files}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "chat_template.jinja",
            "README.md"} <= set(files)  # fmt: skip
    assert "training_args.bin" not in files
    again = export(client, model.id, "adapter")  # built once: a second call lists the same build
    assert [(f.path, f.sha256) for f in again.files] == [(f.path, f.sha256) for f in built.files]
    adapter = read(client, model.id, "adapter", "adapter_model.safetensors")
    assert adapter == (artifacts["lora"] / "adapter_model.safetensors").read_bytes()
    assert hashlib.sha256(adapter).hexdigest() == files["adapter_model.safetensors"].sha256

    # The card: base model, path, recipe, data, settings, eval figures, and how to load it.
    card = read(client, model.id, "adapter", "README.md").decode()
    for fact in (
        str(artifacts["base"]),
        "finetune-text",
        "sft-small",
        "ds_colours",
        "ds_colours_eval",
        "120",
        "learning_rate: 0.0002",
        "- lora_r: 8\n",  # a whole number as written, not 8.0
        "eval_loss_after",
        "0.25",
        "PeftModel.from_pretrained",
    ):
        assert fact in card, fact  # fmt: skip

    # A presigned URL serves the same bytes, without credentials.
    assert built.url_expires_at.seconds > 0
    with urllib.request.urlopen(files["README.md"].url, timeout=10) as response:
        assert response.read().decode() == card
    # Resuming from an offset gives the rest of the file.
    assert read(client, model.id, "adapter", "adapter_model.safetensors", offset=100) == adapter[100:]

    # GetModel shows the card and the artifacts; ListModels does not carry them.
    got = client.registry.GetModel(registry_pb2.GetModelRequest(id=model.id))
    assert "sft-small" in got.card and str(artifacts["base"]) in got.card
    sizes = {a.path: a.size_bytes for a in got.artifacts}
    assert sizes["adapter_model.safetensors"] == len(adapter) and "training_config.json" in sizes
    listed = client.registry.ListModels(registry_pb2.ListModelsRequest()).models
    assert [(m.id, m.card, len(m.artifacts)) for m in listed] == [(model.id, "", 0)]
    shown = CliRunner().invoke(cli, ["models", "show", model.id], env=cli_env(services, tenant))
    assert shown.exit_code == 0, shown.output
    assert "sft-small" in shown.output and "ds_colours" in shown.output and "adapter_model.safetensors" in shown.output

    # Deleting the model deletes its exports.
    prefix = f"tenants/{tenant.tenant_id}/exports/{model.id}/"
    assert keys_under(services, prefix)
    client.registry.DeleteModel(registry_pb2.DeleteModelRequest(id=model.id))
    assert keys_under(services, prefix) == []


def test_merged_export_loads_with_transformers_and_answers_like_the_served_model(
    services, make_tenant, client_for, service_registry_for, artifacts, tmp_path
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tenant = make_tenant()
    client = client_for(tenant)
    model = registered(services, service_registry_for(tenant), tenant.tenant_id, artifacts, LORA)
    env = cli_env(services, tenant)
    out = tmp_path / "export"

    said = CliRunner().invoke(cli, ["models", "export", model.id, "--format", "merged", "--out", str(out)], env=env)
    assert said.exit_code == 0, said.output
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    assert not (out / "adapter_config.json").exists() and not list(out.glob("*.part"))

    # Plain transformers, no peft: the merged weights answer as Generate does.
    network = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = network.generate(**prompt, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    served = client.registry.Generate(
        registry_pb2.GenerateRequest(
            model_id=model.id, messages=[registry_pb2.ChatMessage(role="user", content=QUESTION)], max_new_tokens=8
        ),
        timeout=GENERATE_TIMEOUT_S,
    )
    assert answer == served.message.content.strip() == "bleu"

    # A partial download resumes: the weights cut to a .part of half their size, the rest fetched.
    weights = out / "model.safetensors"
    whole = weights.read_bytes()
    (out / "model.safetensors.part").write_bytes(whole[: len(whole) // 2])
    weights.unlink()
    said = CliRunner().invoke(cli, ["models", "export", model.id, "--format", "merged", "--out", str(out)], env=env)
    assert said.exit_code == 0, said.output
    assert f"model.safetensors: resuming from byte {len(whole) // 2:,}" in said.output
    assert "README.md: already complete, skipped" in said.output
    files = {f.path: f for f in export(client, model.id, "merged").files}
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == files["model.safetensors"].sha256
    assert weights.read_bytes() == whole and not (out / "model.safetensors.part").exists()

    # --urls prints each file's presigned URL; each serves the file's bytes.
    said = CliRunner().invoke(cli, ["models", "export", model.id, "--format", "merged", "--urls"], env=env)
    assert said.exit_code == 0, said.output
    lines = dict((line.split("\t")[0], line.split("\t")) for line in said.stdout.splitlines() if "\t" in line)
    _, size, sha256, url = lines["config.json"]
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read()
    assert body == (out / "config.json").read_bytes() and len(body) == int(size)
    assert hashlib.sha256(body).hexdigest() == sha256


def test_export_refusals(services, make_tenant, client_for, service_registry_for, artifacts):
    tenant = make_tenant()
    client = client_for(tenant)
    full = registered(services, service_registry_for(tenant), tenant.tenant_id, artifacts, FULL)

    # A full fine-tune has no adapter: use merged.
    err = refused(lambda: export(client, full.id, "adapter"), grpc.StatusCode.FAILED_PRECONDITION)
    assert "merged" in err.details() and field_of(err) == "format"
    assert field_of(refused(lambda: export(client, full.id, "onnx"))) == "format"

    # Reading before the export is built, then paths outside it.
    err = refused(lambda: read(client, full.id, "merged", "README.md"), grpc.StatusCode.FAILED_PRECONDITION)
    assert "ExportModel" in err.details()
    built = export(client, full.id, "merged")  # a full fine-tune's weights as they are
    assert "model.safetensors" in {f.path for f in built.files}
    for path in ("../manifest.json", "/etc/passwd", "nope.txt", "", "a/../README.md"):
        err = refused(lambda: read(client, full.id, "merged", path))  # noqa: B023
        assert field_of(err) == "path", path
    assert field_of(refused(lambda: read(client, full.id, "merged", "README.md", offset=10**9))) == "offset"

    # Another tenant's model is not found.
    other = client_for(make_tenant())
    assert raised(lambda: export(other, full.id, "merged")).code() == grpc.StatusCode.NOT_FOUND
    assert raised(lambda: read(other, full.id, "merged", "README.md")).code() == grpc.StatusCode.NOT_FOUND


def build_llama_with_smollm2_tokenizer(directory: Path) -> Path:
    """tests/tiny_models.py's tiny Llama with a real tokenizer, SmolLM2's (from the demo's GGUF: no hub), which
    llama.cpp's converter recognises (the tests' own tokenizer, trained here, it does not)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from distillery.demo_model import gguf_path

    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def test_gguf_export_runs_llama_cpps_converter(
    services, make_tenant, client_for, service_registry_for, artifacts, tmp_path
):
    """The converter, installed by `make setup`, turns a model with a tokenizer it knows into a GGUF that the gguf
    package reads back with the model's tensors; a tokenizer it does not know is refused with its own words."""
    import numpy
    from gguf import GGUFReader
    from safetensors.torch import load_file

    assert gguf_export.default_converter().is_file(), "run `make setup` (deploy/native/gguf_converter.sh)"
    tenant = make_tenant()
    client, service = client_for(tenant), service_registry_for(tenant)
    smol = build_llama_with_smollm2_tokenizer(tmp_path / "smol")
    model = registered(services, service, tenant.tenant_id, {**artifacts, "full": smol}, FULL)

    built = export(client, model.id, "gguf")
    assert sorted(f.path for f in built.files) == ["README.md", "model.gguf"]
    (tmp_path / "model.gguf").write_bytes(read(client, model.id, "gguf", "model.gguf"))
    reader = GGUFReader(tmp_path / "model.gguf")
    architecture = reader.fields["general.architecture"]
    assert bytes(architecture.parts[architecture.data[0]]).decode() == "llama"
    # The model's tensors, each one of them, with its values (in f16).
    weights = load_file(smol / "model.safetensors")
    tensors = {t.name: t for t in reader.tensors}
    assert sorted(int(t.n_elements) for t in tensors.values()) == sorted(w.numel() for w in weights.values())
    embedding = tensors["token_embd.weight"].data
    assert embedding.shape == (49152, 64)
    assert numpy.allclose(embedding, weights["model.embed_tokens.weight"].numpy(), atol=1e-3)
    assert "llama.cpp" in read(client, model.id, "gguf", "README.md").decode()

    # The tests' tokenizer, trained here: the converter does not recognise its pre-tokenizer, and says so.
    refused_model = registered(services, service, tenant.tenant_id, artifacts, FULL)
    err = refused(lambda: export(client, refused_model.id, "gguf"), grpc.StatusCode.FAILED_PRECONDITION)
    assert "GGUF converter refused this model" in err.details() and "--format merged" in err.details()
    assert "BPE pre-tokenizer was not recognized" in err.details(), err.details()
    # Nothing half-built is served: no manifest, so reading is refused as unbuilt.
    refused(lambda: read(client, refused_model.id, "gguf", "model.gguf"), grpc.StatusCode.FAILED_PRECONDITION)

    # Without the converter the format is refused, naming what installs it.
    with pytest.raises(FailedPrecondition, match="make setup"):
        gguf_export.convert(Path("/nonexistent/convert_hf_to_gguf.py"), smol, tmp_path / "out", 10)


@pytest.mark.parametrize("kind", ["speech", "ocr"])
def test_merged_export_of_speech_and_ocr_adapters(tmp_path, kind):
    """A speech (Whisper) or OCR model's adapter merges as a text model's does: full weights with the processor,
    equal to the adapter merged in memory."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tiny_models import build_tiny_vlm, build_whisper
    from transformers import AutoModelForImageTextToText, AutoModelForSpeechSeq2Seq, AutoProcessor

    from distillery.common.v1 import common_pb2
    from services.registry import exports
    from services.registry.models import Model

    if kind == "speech":
        base, auto, targets = build_whisper(tmp_path / "base"), AutoModelForSpeechSeq2Seq, ["q_proj", "v_proj"]
        path = common_pb2.TRAINING_PATH_FINETUNE_ASR
    else:
        base, auto = build_tiny_vlm(tmp_path / "base"), AutoModelForImageTextToText
        targets, path = r".*language_model.*\.(q_proj|v_proj)", common_pb2.TRAINING_PATH_FINETUNE_OCR
    adapter = get_peft_model(auto.from_pretrained(base), LoraConfig(r=4, target_modules=targets))
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA starts as a no-op: move it, so merging changes the weights
        for name, parameter in adapter.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    adapter.save_pretrained(tmp_path / "lora")
    AutoProcessor.from_pretrained(base).save_pretrained(tmp_path / "lora")
    expected = adapter.merge_and_unload().state_dict()

    model = Model(
        id="mdl_x", tenant_id="t", name="m", path=path, base_model=str(base), run_id="run_x", version=1,
        artifact_kind=LORA, artifact_uri="tenants/t/runs/run_x/model/", created_at=datetime.now(UTC),
    )  # fmt: skip
    exports.merged_export(model, tmp_path / "lora", tmp_path / "merged")
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    assert {"processor_config.json", "tokenizer.json"} <= {p.name for p in (tmp_path / "merged").iterdir()}
    AutoProcessor.from_pretrained(tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    loaded = auto.from_pretrained(tmp_path / "merged").state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in loaded.items():
        assert torch.allclose(tensor, expected[name], atol=1e-6), name
    base_weights = auto.from_pretrained(base).state_dict()
    assert any(not torch.equal(base_weights[name], tensor) for name, tensor in loaded.items())  # merged, not the base
