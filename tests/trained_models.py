"""Registered models for the tests that ask one: tiny Llamas (tests/tiny_models.py) taught one answer
each, so a reply shows which weights answered (the adapter says "bleu", the fully fine-tuned model
"rouge"), uploaded to S3 and registered as the trainer does."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from minio import Minio
from tiny_models import build_llama

from distillery.registry.v1 import registry_pb2

QUESTION = "Translate the colour to French: blue"
LORA = registry_pb2.ARTIFACT_KIND_LORA_ADAPTER
FULL = registry_pb2.ARTIFACT_KIND_FULL_WEIGHTS
GENERATE_TIMEOUT_S = 120


def teach(model, tokenizer, answer: str, steps: int = 60, lr: float = 1e-2) -> None:
    """A few optimiser steps on one conversation, so greedy decoding says ``answer``."""

    conversation = [{"role": "user", "content": QUESTION}]
    prompt = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt + answer + "<|im_end|>\n", return_tensors="pt").input_ids
    optimise(model, ids, ids, steps, lr)


def optimise(model, ids, labels, steps: int, lr: float) -> None:
    """``steps`` AdamW steps on one sequence (labels -100 where nothing is learnt)."""
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    torch.manual_seed(0)
    model.train()
    for _ in range(steps):
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def build_artifacts(root: Path) -> dict[str, Path]:
    """A base model, a LoRA adapter on it and a fully fine-tuned copy, as the training recipes save them:
    the adapter answers QUESTION with "bleu", the full fine-tune with "rouge"."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = build_llama(root / "base")
    tokenizer = AutoTokenizer.from_pretrained(base)

    adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=8, target_modules="all-linear"))
    teach(adapter, tokenizer, "bleu")
    adapter.save_pretrained(root / "lora")

    full = AutoModelForCausalLM.from_pretrained(base)
    teach(full, tokenizer, "rouge", lr=3e-3)
    full.save_pretrained(root / "full")

    for kind in ("lora", "full"):
        tokenizer.save_pretrained(root / kind)
        (root / kind / "training_config.json").write_text(json.dumps({"recipe": "sft", "kind": kind}))
    return {"base": base, "lora": root / "lora", "full": root / "full"}


def s3_client(services) -> Minio:
    s3 = services.s3
    return Minio(s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key, secure=False, region=s3.region)


def upload(services, directory: Path, prefix: str) -> str:
    """Every file of ``directory`` under ``prefix``; returns the s3:// URI of the prefix."""
    client = s3_client(services)
    for path in directory.rglob("*"):
        if path.is_file():
            client.fput_object(services.s3.bucket, prefix + path.relative_to(directory).as_posix(), str(path))
    return f"s3://{services.s3.bucket}/{prefix}"


def keys_under(services, prefix: str) -> list[str]:
    objects = s3_client(services).list_objects(services.s3.bucket, prefix=prefix, recursive=True)
    return [o.object_name for o in objects if o.object_name]


def register(service, run_id: str, kind: int, uri: str, base_model: str) -> registry_pb2.Model:
    """Reserve and register as the trainer does (``service`` is a ``service_registry_for`` stub)."""
    service.ReserveQuota(registry_pb2.ReserveQuotaRequest(run_id=run_id))
    return service.RegisterModel(
        registry_pb2.RegisterModelRequest(
            run_id=run_id, name="colours", path=3, base_model=base_model, artifact_kind=kind, artifact_uri=uri,
            metrics={"eval_loss": 0.5},
        )
    )  # fmt: skip


def trained_model(services, service, tenant_id: str, artifacts: dict[str, Path], kind: int) -> registry_pb2.Model:
    run_id = f"run_{secrets.token_hex(6)}"
    directory = artifacts["lora" if kind == LORA else "full"]
    uri = upload(services, directory, f"tenants/{tenant_id}/runs/{run_id}/model/")
    return register(service, run_id, kind, uri, str(artifacts["base"]))
