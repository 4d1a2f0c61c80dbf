"""Steering vectors on a tiny model (services/registry/steering.py): the proof that a vector steers (the
log-probability of held-out positive completions rises with strength and falls with negative strength), that
steering one generation leaves a concurrent one on the same model untouched, and the file round trips."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.common.errors import FailedPrecondition, InvalidArgument
from services.registry import steering, vector_files
from tests.tiny_models import build_llama

# Two behaviours the tiny model learns to tell apart: answers about cats vs. answers about dogs.
QUESTIONS = ["What is your favourite pet?", "Which animal do you like?", "Tell me about animals.",
             "What should I adopt?", "Name a good companion.", "What pet is best?"]  # fmt: skip
POSITIVE = ["cats purr and nap in the sun", "a cat is a quiet friend", "cats chase mice at night"]
NEGATIVE = ["dogs bark and fetch the ball", "a dog is a loyal friend", "dogs run in the park"]
HELD_OUT = [("Any pet advice?", "the cat sleeps all day", "the dog wants a walk")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object]:
    """A 4-layer Llama taught both kinds of answer (so both are plausible and a direction between them exists)."""
    directory = build_llama(tmp_path_factory.mktemp("steer") / "model", hidden=64, layers=4, seed=1)
    model = AutoModelForCausalLM.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    texts = []
    for i, question in enumerate(QUESTIONS):
        for answer in (POSITIVE[i % 3], NEGATIVE[i % 3]):
            texts.append(tokenizer.apply_chat_template(
                [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], tokenize=False
            ))  # fmt: skip
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    model.train()
    for _ in range(40):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    model.eval()
    return model, tokenizer


def pairs() -> list[tuple[str, str, str]]:
    return [(q, POSITIVE[i % 3], NEGATIVE[i % 3]) for i, q in enumerate(QUESTIONS)]


def answer_logprob(model: object, tokenizer: object, prompt: str, answer: str) -> float:
    """Mean log-probability per token of ``answer`` as the assistant's turn after ``prompt``."""
    asked = [{"role": "user", "content": prompt}]
    head = tokenizer.apply_chat_template(asked, add_generation_prompt=True, return_dict=True)["input_ids"]
    full = tokenizer.apply_chat_template([*asked, {"role": "assistant", "content": answer}], return_dict=True)
    ids = torch.tensor([list(full["input_ids"])])
    start = len(head)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    targets = ids[0, 1:]
    picked = logits.gather(1, targets[:, None])[:, 0]
    return float(picked[start - 1 :].mean())


@pytest.mark.parametrize("method", ["mean_diff", "pca"])
def test_a_vector_steers_toward_its_positive_side(tiny: tuple[object, object], method: str) -> None:
    model, tokenizer = tiny
    vector = steering.compute_vector(model, tokenizer, pairs(), None, method, "tiny")
    assert vector.layers == [1, 2] and vector.method == method and vector.hidden_size == 64
    for prompt, positive, negative in HELD_OUT:
        margins = []
        for strength in (-2.0, 0.0, 2.0):
            with steering.steered(model, [(vector, strength, 0, 0)]):
                pos = answer_logprob(model, tokenizer, prompt, positive)
                neg = answer_logprob(model, tokenizer, prompt, negative)
            margins.append((strength, pos, neg))
        (_, pos_minus, neg_minus), (_, pos_zero, neg_zero), (_, pos_plus, neg_plus) = margins
        # The positive completion gets likelier as strength rises (less likely as it falls), and more so than
        # the negative one: the margin between them moves the same way.
        assert pos_minus < pos_zero < pos_plus, margins
        assert pos_minus - neg_minus < pos_zero - neg_zero < pos_plus - neg_plus, margins
    # Unsteered again after the block: the plain model.
    assert answer_logprob(model, tokenizer, *HELD_OUT[0][:2]) == pytest.approx(pos_zero, abs=1e-6)


def test_layer_range_and_bounds(tiny: tuple[object, object]) -> None:
    model, tokenizer = tiny
    vector = steering.compute_vector(model, tokenizer, pairs(), [1, 2, 3], "mean_diff", "tiny")
    ids = torch.tensor([tokenizer("the cat")["input_ids"]])
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
        with steering.steered(model, [(vector, 3.0, 3, 3)]):
            last_only = model(input_ids=ids).logits
        with steering.steered(model, [(vector, 3.0, 0, 0)]):
            every = model(input_ids=ids).logits
    assert not torch.equal(plain, last_only) and not torch.equal(last_only, every)
    with pytest.raises(InvalidArgument, match="outside the model's decoder layers 0-3"):
        steering.compute_vector(model, tokenizer, pairs(), [4], "mean_diff", "tiny")
    with pytest.raises(InvalidArgument, match="at least 2"):
        steering.compute_vector(model, tokenizer, pairs()[:1], None, "mean_diff", "tiny")
    other = steering.SteeringVector({1: torch.zeros(32)}, 32, 4, "other", "imported")
    with pytest.raises(FailedPrecondition, match="hidden size 32 and 4 layers"):
        steering.check_fits(other, model)


def test_a_steered_generation_leaves_a_concurrent_one_untouched(tiny: tuple[object, object]) -> None:
    model, tokenizer = tiny
    vector = steering.compute_vector(model, tokenizer, pairs(), None, "mean_diff", "tiny")
    ids = torch.tensor([tokenizer("Which animal do you like? the")["input_ids"]])
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
        with steering.steered(model, [(vector, 4.0, 0, 0)]):
            steered_alone = model(input_ids=ids).logits
    assert not torch.allclose(plain, steered_alone)
    results: dict[str, list[torch.Tensor]] = {"plain": [], "steered": []}
    barrier = threading.Barrier(2)

    def run(kind: str) -> None:
        barrier.wait()
        for _ in range(30):
            with torch.inference_mode():
                if kind == "steered":
                    with steering.steered(model, [(vector, 4.0, 0, 0)]):
                        results[kind].append(model(input_ids=ids).logits)
                else:
                    results[kind].append(model(input_ids=ids).logits)

    threads = [threading.Thread(target=run, args=(kind,)) for kind in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(torch.equal(logits, plain) for logits in results["plain"])
    assert all(torch.allclose(logits, steered_alone, atol=1e-5) for logits in results["steered"])


def test_file_round_trips(tiny: tuple[object, object], tmp_path: Path) -> None:
    model, tokenizer = tiny
    vector = steering.compute_vector(model, tokenizer, pairs(), [1, 3], "pca", "tiny-base")
    again = steering.from_safetensors(steering.to_safetensors(vector), "tiny-base")
    assert again == steering.SteeringVector(again.directions, 64, 4, "tiny-base", "pca")
    assert all(torch.equal(again.directions[k], vector.directions[k]) for k in vector.layers)
    data = steering.to_gguf(vector)
    assert data[:4] == b"GGUF" and vector_files.detect(data) == "gguf"
    imported = steering.from_gguf(data, "tiny-base")
    assert imported.layers == [1, 3] and imported.method == "imported" and imported.hidden_size == 64
    assert all(torch.equal(imported.directions[k], vector.directions[k]) for k in vector.layers)
    # llama.cpp's reader keys: the architecture and the layer count it expects.
    import gguf

    (tmp_path / "v.gguf").write_bytes(data)
    reader = gguf.GGUFReader(tmp_path / "v.gguf")
    arch = reader.get_field("general.architecture")
    assert bytes(arch.parts[arch.data[0]]).decode() == "controlvector"
    assert int(reader.get_field("controlvector.layer_count").parts[-1][0]) == 2
    assert [t.name for t in reader.tensors] == ["direction.1", "direction.3"]
    with_zero = steering.SteeringVector({0: torch.ones(64)}, 64, 4, "tiny-base", "mean_diff")
    with pytest.raises(FailedPrecondition, match="cannot steer decoder layer 0"):
        steering.to_gguf(with_zero)
    with pytest.raises(InvalidArgument, match="neither safetensors nor GGUF"):
        vector_files.detect(b"hello world, not a vector")
