"""Padding-free packing in the SFT recipe (``recipes/sft_packing.py``): a packed batch gives the loss and the
gradients of its rows run one by one, its batches are (almost) all real tokens, and the same rows put end to
end without the position ids starting again (naive concatenation) give another loss: the check can fail.

The rows are ``examples/support_pairs.jsonl`` as the recipe reads a split; the model is the tests' tiny Llama.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from services.common.errors import InvalidArgument
from services.trainer.recipes import sft_packing
from services.trainer.recipes.sft import recipe_trainer
from services.trainer.recipes.sft_settings import SftSettings, resolve_sft
from services.trainer.recipes.splits import prompt_completion
from tests.tiny_models import build_llama

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "support_pairs.jsonl"


def support_rows() -> list[dict[str, Any]]:
    """The example pairs as the recipe's prompt-completion rows."""
    rows = []
    for i, line in enumerate(EXAMPLES.read_text().splitlines()):
        pair = json.loads(line)
        messages = [
            {"role": "system", "content": pair["system_prompt"]}, {"role": "user", "content": pair["input"]},
            {"role": "assistant", "content": pair["output"]},
        ]  # fmt: skip
        rows.append(prompt_completion(json.dumps({"messages": messages}), f"line {i + 1}"))
    return rows


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llama(tmp_path_factory.mktemp("student") / "llama")


def trainer_for(student: Path, tmp_path: Path, **settings: Any) -> tuple[Any, Any, dict[str, Any]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.trainer.recipes import trl_configs

    sft = SftSettings(batch_size=4, lora_dropout=0.0, max_steps=3, **settings)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    rows = support_rows()
    return recipe_trainer(
        sft, model, trl_configs.lora_config(sft), AutoTokenizer.from_pretrained(student), rows, rows[:8],
        tmp_path / "out", use_gpu=False, bf16=False, save_checkpoints=False,
    )  # fmt: skip


def row_by_row_loss(model: Any, examples: list[dict[str, Any]]) -> torch.Tensor:
    """The batch's loss with every row run alone: the sum of the rows' token losses over all their label tokens."""
    total, count = torch.zeros(()), 0
    for example in examples:
        ids = torch.tensor([example["input_ids"]])
        labels = torch.tensor([example["labels"]])
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
        target = labels[0, 1:]
        total = total + torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
        count += int((target != -100).sum())
    return total / count


def gradients(model: Any, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_a_packed_batch_gives_the_loss_and_gradients_of_its_rows_one_by_one(student: Path, tmp_path: Path) -> None:
    trainer, _, speed = trainer_for(student, tmp_path)
    assert speed["packing"] and speed["attention"] == sft_packing.VARLEN
    model = trainer.model
    model.train()
    examples = [trainer.train_dataset[i] for i in range(4)]
    assert len({len(e["input_ids"]) for e in examples}) > 1  # rows of different lengths: padding would be needed
    batch = trainer.data_collator(examples)
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1
    packed = model(**batch, use_cache=False).loss
    alone = row_by_row_loss(model, examples)
    assert torch.allclose(packed, alone, atol=1e-5), (packed.item(), alone.item())
    for got, want in zip(gradients(model, packed), gradients(model, row_by_row_loss(model, examples)), strict=True):
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-4)

    # The same rows end to end, positions counting on across rows: each row sees the ones before it.
    naive = {"input_ids": batch["input_ids"], "labels": batch["labels"]}
    contaminated = model(**naive, use_cache=False).loss
    assert abs(contaminated.item() - alone.item()) > 100 * 1e-5, "naive concatenation must not pass the check above"


def test_packed_batches_are_real_tokens_and_padded_ones_are_not(student: Path, tmp_path: Path) -> None:
    fractions = {}
    for name, disable in (("packed", False), ("padded", True)):
        trainer, counter, speed = trainer_for(student, tmp_path / name, disable_packing=disable)
        assert speed["packing"] is not disable and not speed["liger"] and not speed["gradient_checkpointing"]
        trainer.model.train()
        for _ in trainer.get_train_dataloader():
            pass
        assert counter.real == sum(len(r["input_ids"]) for r in trainer.train_dataset)
        fractions[name] = counter.non_padding_fraction
    assert fractions["packed"] >= 0.95, fractions
    assert fractions["padded"] < fractions["packed"], fractions


def test_training_packed_follows_training_padded(student: Path, tmp_path: Path) -> None:
    """Three steps of the recipe's trainer, packed and padded, from the same seed: the same losses."""
    losses = {}
    for name, disable in (("packed", False), ("padded", True)):
        trainer, counter, _ = trainer_for(student, tmp_path / name, disable_packing=disable)
        trainer.train()
        losses[name] = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        assert counter.real > 0
    assert len(losses["packed"]) == 3
    assert losses["packed"] == pytest.approx(losses["padded"], rel=1e-3), losses


def test_the_probe_sees_an_attention_that_lets_rows_see_each_other(student: Path) -> None:
    from transformers import AttentionInterface, AutoModelForCausalLM
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def leaky(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
        return sdpa_attention_forward(module, query, key, value, None, is_causal=True)  # one causal sequence

    AttentionInterface.register("test_leaky", leaky)
    AttentionMaskInterface.register("test_leaky", sdpa_mask)
    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    assert sft_packing.is_exact(model)
    model.set_attn_implementation("test_leaky")
    assert not sft_packing.is_exact(model)


def test_disable_packing_is_a_checked_setting() -> None:
    assert resolve_sft({}).disable_packing is False
    assert resolve_sft({"disable_packing": True}).disable_packing is True
    with pytest.raises(InvalidArgument) as err:
        SftSettings(disable_packing="yes")  # type: ignore[arg-type]
    assert err.value.field == "sft.disable_packing"
