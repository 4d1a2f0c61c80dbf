"""ReadImage: a registered OCR model (a tiny random DeepSeek-OCR 2 from ``tests/tiny_models.build_tiny_vlm``,
full weights or a LoRA adapter over its base) reads a Pillow-rendered image through the registry and the CLI.

A random model's text is gibberish: what is checked is that the registry answers exactly what
``services.common.ocr_reading.read`` (the function the OCR recipe's evaluations call) answers for the same model
asked directly, under the model's default prompt or the request's, within the run's recorded token budget; and
every refusal: bad images naming ``image``, each kind of model refusing the other RPCs, another tenant's model.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shlex
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from google.protobuf import json_format
from rpc_refusals import field_of, raised, refused
from test_tracing_and_cli import cli_env
from trained_models import register, upload

from distillery.cli.main import cli
from distillery.common.v1 import common_pb2
from distillery.registry.v1 import registry_pb2
from services.common import ocr_reading
from tests.tiny_models import build_tiny_vlm

OCR = common_pb2.TRAINING_PATH_FINETUNE_OCR
ASR = common_pb2.TRAINING_PATH_FINETUNE_ASR
LORA = registry_pb2.ARTIFACT_KIND_LORA_ADAPTER
FULL = registry_pb2.ARTIFACT_KIND_FULL_WEIGHTS
TIMEOUT_S = 120
# What the runs recorded (training_config.json): a small budget keeps a random model's gibberish short.
BUDGET = 24
LORA_PROMPT = "<image>\nRead the receipt."


@pytest.fixture(scope="module")
def vlms(tmp_path_factory) -> dict[str, Path]:
    """A base OCR model (full weights) and a LoRA adapter over its language side, each saved with the processor
    and a training_config.json as the OCR recipe saves them; the adapter's run recorded its own prompt."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    root = tmp_path_factory.mktemp("vlms")
    base = build_tiny_vlm(root / "base")
    (base / "training_config.json").write_text(json.dumps({"decoding": {"max_new_tokens": BUDGET}}))
    adapter = get_peft_model(
        AutoModelForImageTextToText.from_pretrained(base),
        LoraConfig(r=4, target_modules=r".*language_model.*\.(q_proj|v_proj)"),
    )
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA starts as a no-op: move it, so the adapter's answers are its own
        for name, parameter in adapter.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    adapter.save_pretrained(root / "lora")
    AutoProcessor.from_pretrained(base).save_pretrained(root / "lora")
    # The reference for the adapter: the very model trained in memory, merged and saved as full weights (not the
    # adapter loaded back, which is what the registry does).
    adapter.merge_and_unload().save_pretrained(root / "merged")
    (root / "lora" / "training_config.json").write_text(
        json.dumps({"decoding": {"max_new_tokens": BUDGET, "prompt": LORA_PROMPT}})
    )
    return {"base": base, "lora": root / "lora", "merged": root / "merged"}


def page(
    text: str = "TOTAL 12.40 EUR", fmt: str = "PNG", size: tuple[int, int] = (160, 48), mode: str = "RGB"
) -> bytes:
    """A rendered line of text as an image file."""
    from PIL import Image, ImageDraw

    image = Image.new(mode, size, "white")
    ImageDraw.Draw(image).text((4, size[1] // 3), text, fill="black")
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def direct(vlms: dict[str, Path], kind: int, data: bytes, prompt: str) -> str:
    """What ocr_reading.read answers for the model loaded with transformers (an adapter: as trained, merged)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(vlms["merged" if kind == LORA else "base"])
    processor = AutoProcessor.from_pretrained(vlms["base"])
    (text,) = ocr_reading.read(model.eval(), processor, [ocr_reading.load_image(data)], [prompt], BUDGET)
    return text


def ocr_model(services, service, tenant_id: str, vlms: dict[str, Path], kind: int) -> registry_pb2.Model:
    """Upload and register as the OCR recipe does: path finetune-ocr, the model under the run's model/."""
    run_id = f"run_{secrets.token_hex(6)}"
    directory = vlms["lora" if kind == LORA else "base"]
    uri = upload(services, directory, f"tenants/{tenant_id}/runs/{run_id}/model/")
    service.ReserveQuota(registry_pb2.ReserveQuotaRequest(run_id=run_id))
    return service.RegisterModel(
        registry_pb2.RegisterModelRequest(
            run_id=run_id, name="ocr", path=OCR, base_model=str(vlms["base"]), artifact_kind=kind,
            artifact_uri=uri, metrics={"cer_before": 0.9, "cer_after": 0.2},
        )
    )  # fmt: skip


def read(client, model_id: str, image: bytes, prompt: str = "") -> registry_pb2.ReadImageResponse:
    request = registry_pb2.ReadImageRequest(model_id=model_id, image=image, prompt=prompt)
    return client.registry.ReadImage(request, timeout=TIMEOUT_S)


@pytest.mark.parametrize("kind", [FULL, LORA], ids=["full", "lora"])
def test_an_ocr_model_reads_as_the_runs_evaluations_do(
    services, make_tenant, client_for, service_registry_for, vlms, kind, tmp_path
):
    tenant = make_tenant()
    client = client_for(tenant)
    model = ocr_model(services, service_registry_for(tenant), tenant.tenant_id, vlms, kind)
    data = page()

    # No prompt: the run's recorded one (the adapter's), else the model type's (DeepSeek's "Free OCR.").
    default = LORA_PROMPT if kind == LORA else ocr_reading.DEEPSEEK_PROMPT
    reply = read(client, model.id, data)
    assert reply.text and reply.text == direct(vlms, kind, data, default)
    assert (reply.prompt, reply.width, reply.height) == (default, 160, 48) and reply.latency_ms > 0

    given = read(client, model.id, data, prompt="Read the total.")
    assert (given.prompt, given.text) == ("Read the total.", direct(vlms, kind, data, "Read the total."))
    if kind == FULL:
        assert given.text != reply.text
    else:  # the adapter is applied: it reads otherwise than its base model
        assert (reply.text, given.text) != (direct(vlms, FULL, data, default), direct(vlms, FULL, data, given.prompt))

    # Every format the RPC takes reads (the first frame; transparency on white; any mode to RGB).
    for fmt, mode in (("JPEG", "RGB"), ("WEBP", "RGBA"), ("BMP", "L"), ("TIFF", "RGB")):
        other = page(fmt=fmt, size=(120, 40), mode=mode)
        found = read(client, model.id, other)
        assert (found.width, found.height) == (120, 40) and found.text == direct(vlms, kind, other, default), fmt

    # The CLI: the text on stdout, the prompt used on stderr; --json has it all.
    image = tmp_path / "page.png"
    image.write_bytes(data)
    env = cli_env(services, tenant.api_key)
    said = CliRunner().invoke(cli, ["models", "read", model.id, str(image)], env=env)
    assert said.exit_code == 0, said.output
    assert said.stdout == reply.text + "\n"
    assert f"prompt: {default!r} (the model's default)" in said.stderr
    said = CliRunner().invoke(cli, ["models", "read", model.id, str(image), "--prompt", "Read the total.", "--json"],
                              env=env)  # fmt: skip
    assert said.exit_code == 0, said.output
    assert json.loads(said.stdout) == {
        "text": given.text, "prompt": "Read the total.", "width": 160, "height": 48,
        "latency_ms": pytest.approx(json.loads(said.stdout)["latency_ms"]),
    }  # fmt: skip


def test_each_kind_of_model_refuses_the_others_rpcs(services, make_tenant, client_for, service_registry_for, vlms):
    tenant = make_tenant()
    client, service = client_for(tenant), service_registry_for(tenant)
    ocr = ocr_model(services, service, tenant.tenant_id, vlms, FULL)
    # Refused before any artifact is fetched: a text and a speech model need none here.
    text = register(service, f"run_{secrets.token_hex(6)}", FULL, f"tenants/{tenant.tenant_id}/runs/x/model/", "base")
    run_id = f"run_{secrets.token_hex(6)}"
    service.ReserveQuota(registry_pb2.ReserveQuotaRequest(run_id=run_id))
    speech = service.RegisterModel(
        registry_pb2.RegisterModelRequest(
            run_id=run_id, name="speech", path=ASR, base_model="base", artifact_kind=FULL,
            artifact_uri=f"tenants/{tenant.tenant_id}/runs/{run_id}/model/",
        )
    )  # fmt: skip

    ask = registry_pb2.GenerateRequest(model_id=ocr.id, messages=[registry_pb2.ChatMessage(role="user", content="hi")])
    listen = registry_pb2.TranscribeRequest(model_id=ocr.id, audio=b"RIFF")
    for call, rpc in (
        (lambda: client.registry.Generate(ask, timeout=TIMEOUT_S), "Generate"),
        (lambda: client.registry.Transcribe(listen, timeout=TIMEOUT_S), "Transcribe"),
    ):
        err = refused(call, grpc.StatusCode.FAILED_PRECONDITION)
        assert field_of(err) == "model_id"
        assert f"with ReadImage (distillery models read {ocr.id} IMAGE), not {rpc}" in err.details(), err.details()
    for other, rpc in ((text, "Generate"), (speech, "Transcribe")):
        err = refused(lambda: read(client, other.id, page()), grpc.StatusCode.FAILED_PRECONDITION)  # noqa: B023
        assert field_of(err) == "model_id"
        assert f"with {rpc} (" in err.details() and err.details().endswith("not ReadImage"), err.details()


def test_an_ocr_models_snippets_read_an_image(services, make_tenant, client_for, service_registry_for, vlms, tmp_path):
    tenant = make_tenant()
    client = client_for(tenant)
    model = ocr_model(services, service_registry_for(tenant), tenant.tenant_id, vlms, FULL)
    served = dict(client.registry.GetSnippet(registry_pb2.GetSnippetRequest(model_id=model.id)).snippets)
    assert served["cli"] == f"distillery models read {model.id} page.png"
    assert "RegistryService/ReadImage" in served["grpcurl"] and '"image_url"' in served["python"]

    # Each runs where page.png is, and reads what a direct ReadImage call reads (python: the openai SDK against
    # the gateway's endpoint, which serves the deployed model).
    (tmp_path / "page.png").write_bytes(page())
    expected = read(client, model.id, page()).text
    env = cli_env(services, tenant.api_key)
    client.registry.DeployModel(registry_pb2.DeployModelRequest(model_id=model.id, engine="local"), timeout=TIMEOUT_S)
    ran = subprocess.run(
        [sys.executable, "-c", served["python"]], env={**os.environ, **env}, cwd=tmp_path, capture_output=True,
        text=True, timeout=TIMEOUT_S, check=False,
    )  # fmt: skip
    assert (ran.returncode, ran.stdout) == (0, expected + "\n"), ran.stderr

    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path):
        Path("page.png").write_bytes(page())
        said = runner.invoke(cli, shlex.split(served["cli"])[1:], env=env)
    assert (said.exit_code, said.stdout) == (0, expected + "\n"), said.output

    # grpcurl: the words a shell hands it, replayed over gRPC (the -d JSON carries the image as base64).
    record = (
        f'grpcurl() {{ {shlex.quote(sys.executable)} -c "import json, sys; print(json.dumps(sys.argv[1:]))" "$@"; }}'
    )
    done = subprocess.run(
        ["bash", "-c", f"{record}\n{served['grpcurl']}"], env={"PATH": os.environ["PATH"], **env}, cwd=tmp_path,
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    words = json.loads(done.stdout)
    assert words[:3] == ["-plaintext", "-H", f"authorization: Bearer {tenant.api_key}"] and words[3] == "-d"
    assert words[-2:] == [services.address("registry"), "distillery.registry.v1.RegistryService/ReadImage"]
    request = json_format.Parse(words[4], registry_pb2.ReadImageRequest())
    assert request.image == page()
    reply = client.registry.ReadImage(request, timeout=TIMEOUT_S)
    assert reply.text == expected


def test_bad_images_are_refused_naming_the_field(services, make_tenant, client_for, service_registry_for, vlms):
    from PIL import Image

    tenant = make_tenant()
    client = client_for(tenant)
    model = ocr_model(services, service_registry_for(tenant), tenant.tenant_id, vlms, FULL)
    huge = io.BytesIO()
    Image.new("1", (8000, 6000), 1).save(huge, "PNG")  # a small file of 48 megapixels
    gif = io.BytesIO()
    Image.new("RGB", (40, 20), "white").save(gif, "GIF")
    for image, words in (
        (b"", "empty"),
        (b"hello, not an image at all\n", "not a PNG, JPEG, WebP, BMP or TIFF image"),
        (gif.getvalue(), "not a PNG, JPEG, WebP, BMP or TIFF image"),
        (page()[:60], "image cannot be read"),
        (huge.getvalue(), "over 40,000,000 pixels"),
        (page() + bytes(20 * 1024 * 1024), "MiB"),
    ):
        err = refused(lambda: read(client, model.id, image))  # noqa: B023
        assert field_of(err) == "image" and words in err.details(), (words, err.details())
    err = refused(lambda: read(client, model.id, page(), prompt="x" * 70_000))
    assert field_of(err) == "prompt", err.details()

    # The CLI refuses a file over the limit before sending it.
    env = cli_env(services, tenant.api_key)
    with CliRunner().isolated_filesystem():
        Path("big.png").write_bytes(page() + bytes(20 * 1024 * 1024))
        said = CliRunner().invoke(cli, ["models", "read", model.id, "big.png"], env=env)
    assert said.exit_code == 2 and "20 MiB" in said.output


def test_another_tenants_ocr_model_is_not_found(services, make_tenant, client_for, service_registry_for, vlms):
    owner = make_tenant()
    model = ocr_model(services, service_registry_for(owner), owner.tenant_id, vlms, FULL)
    err = raised(lambda: read(client_for(make_tenant()), model.id, page()))
    assert err.code() == grpc.StatusCode.NOT_FOUND
