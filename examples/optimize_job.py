"""The job of `make optimize`, on a running local stack: steer `make run`'s model with a "concise" vector.

1. finds `make run`'s model: the newest finetune-text model of yours trained from the demo model
   (SmolLM2-135M-Instruct); without one it stops, saying to run `make run` first;
2. computes a steering vector from `examples/steering/concise.jsonl` (20 contrastive pairs: a short answer and a
   long-winded one to the same question) with CreateVector, in the registry's serving process — or reuses the one an
   earlier run made;
3. asks the model the 20 prompts of `examples/steering/prompts.jsonl` through Generate at strengths 0, +s and -s
   (the vector attached to each request, GenerateRequest.vectors; greedy, no profile) and prints the mean answer
   length in tokens and words at each strength;
4. prints two answers side by side: the same prompt at strength -s and +s.

Running it again reuses the vector. DISTILLERY_STEER_STRENGTH overrides s.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import grpc

from distillery.client import Client
from distillery.common.v1 import common_pb2
from distillery.demo_model import MODEL_NAME
from distillery.registry.v1 import registry_pb2

STEERING = Path(__file__).parent / "steering"
PAIRS = STEERING / "concise.jsonl"
PROMPTS = STEERING / "prompts.jsonl"
VECTOR = "concise-demo"
# Raw mean activation differences added at 10 of SmolLM2's 30 layers: 0.15 shortens answers; past ~0.3 the model
# breaks into repeated fragments (docs/optimization.md, "make optimize").
STRENGTH = float(os.environ.get("DISTILLERY_STEER_STRENGTH", "0.15"))
MAX_NEW_TOKENS = 128
TIMEOUT_S = 900


def say(text: str = "") -> None:
    print(text, flush=True)


def demo_model(client: Client) -> registry_pb2.Model:
    """The newest finetune-text model trained from the demo model (what `make run` registers)."""
    found: list[registry_pb2.Model] = []
    token = ""
    while True:
        reply = client.registry.ListModels(
            registry_pb2.ListModelsRequest(page=common_pb2.PageRequest(page_size=100, page_token=token))
        )
        found.extend(reply.models)
        token = reply.page.next_page_token
        if not token:
            break
    ours = [
        m for m in found
        if m.path == common_pb2.TRAINING_PATH_FINETUNE_TEXT and Path(m.base_model.rstrip("/")).name == MODEL_NAME
    ]  # fmt: skip
    if not ours:
        sys.exit(f"no finetune-text model trained from {MODEL_NAME} yet: run `make run` first, then `make optimize`")
    return max(ours, key=lambda m: (m.created_at.seconds, m.created_at.nanos))


def concise_vector(client: Client, model: registry_pb2.Model) -> registry_pb2.Vector:
    """The demo's vector: reused when an earlier run made it, else computed from the pairs file."""
    try:
        found = client.registry.GetVector(registry_pb2.GetVectorRequest(vector_id=VECTOR, model_id=model.id))
        say(f"reused vector {found.id} ({found.name}, {found.pair_count} pairs, layers {found.layers[0]}-"
            f"{found.layers[-1]} of {found.layer_count})")  # fmt: skip
        return found
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.NOT_FOUND:
            raise
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    pairs = [registry_pb2.ContrastivePair(prompt=r.get("prompt", ""), positive=r["positive"], negative=r["negative"])
             for r in rows]  # fmt: skip
    started = time.monotonic()
    made = client.registry.CreateVector(
        registry_pb2.CreateVectorRequest(
            name=VECTOR, model_id=model.id, pairs=pairs, description="make optimize: short answers (examples/steering)"
        ),
        timeout=TIMEOUT_S,
    )
    say(f"computed vector {made.id} ({made.name}) from {made.pair_count} pairs in {time.monotonic() - started:.0f} s: "
        f"{made.method}, layers {made.layers[0]}-{made.layers[-1]} of {made.layer_count}, hidden size "
        f"{made.hidden_size}")  # fmt: skip
    return made


def ask(client: Client, model_id: str, prompt: str, vector_id: str, strength: float) -> registry_pb2.GenerateResponse:
    request = registry_pb2.GenerateRequest(
        model_id=model_id, messages=[registry_pb2.ChatMessage(role="user", content=prompt)],
        max_new_tokens=MAX_NEW_TOKENS, profile="none",
        sampling=registry_pb2.Sampling(strategy="greedy"),
    )  # fmt: skip
    if strength:
        request.vectors.add(vector_id=vector_id, strength=strength)
    else:
        request.no_vectors = True
    return client.registry.Generate(request, timeout=TIMEOUT_S)


def side_by_side(left: str, right: str, width: int = 48) -> list[str]:
    a = textwrap.wrap(" ".join(left.split()), width) or [""]
    b = textwrap.wrap(" ".join(right.split()), width) or [""]
    a += [""] * (len(b) - len(a))
    b += [""] * (len(a) - len(b))
    return [f"  {x:<{width}} | {y}" for x, y in zip(a, b, strict=True)]


def main() -> None:
    started = time.monotonic()
    client = Client.from_environment(timeout=60)
    model = demo_model(client)
    say(f"model: {model.id} ({model.name} v{model.version}, base {model.base_model})")
    vector = concise_vector(client, model)
    prompts = [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines() if line.strip()]
    strengths = (0.0, STRENGTH, -STRENGTH)
    answers: dict[float, list[registry_pb2.GenerateResponse]] = {}
    say(f"\nasking {len(prompts)} prompts at strengths 0, +{STRENGTH:g} and -{STRENGTH:g} (greedy, at most "
        f"{MAX_NEW_TOKENS} new tokens):")  # fmt: skip
    say(f"  {'strength':>8}  {'mean tokens':>11}  {'mean words':>10}  {'hit the cap':>11}  {'s/answer':>8}")
    for strength in strengths:
        began = time.monotonic()
        replies = [ask(client, model.id, p, vector.id, strength) for p in prompts]
        answers[strength] = replies
        tokens = sum(r.completion_tokens for r in replies) / len(replies)
        words = sum(len(r.message.content.split()) for r in replies) / len(replies)
        capped = sum(r.completion_tokens >= MAX_NEW_TOKENS for r in replies)
        per = (time.monotonic() - began) / len(replies)
        say(f"  {strength:>+8g}  {tokens:>11.1f}  {words:>10.1f}  {capped:>8}/{len(replies)}  {per:>8.1f}")
    for index in (0, 1):
        say(f"\nprompt: {prompts[index]}")
        say(f"  {'strength -' + format(STRENGTH, 'g'):<48} | strength +{STRENGTH:g}")
        for line in side_by_side(answers[-STRENGTH][index].message.content, answers[STRENGTH][index].message.content):
            say(line)
    say(f"\ndone in {time.monotonic() - started:.0f} s.")
    say(f"Attach it to the model's profile: distillery models optimize {model.id} --vector {VECTOR}={STRENGTH:g}")


if __name__ == "__main__":
    main()
