"""The eval loss after training is the one an eval while training measured on the same weights, not a second
pass (``watch.measured_loss``); where no eval measured the final weights, a pass runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.trainer.recipes import trl_configs
from services.trainer.recipes.sft_settings import SftSettings
from services.trainer.recipes.watch import eval_loss, measured_loss
from tests.tiny_models import build_llama

ROWS = [
    {"prompt": [{"role": "user", "content": f"colour {i}?"}], "completion": [{"role": "assistant", "content": c}]}
    for i, c in enumerate(["rouge", "bleu", "vert", "blanc", "noir", "gris"] * 2)
]


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llama(tmp_path_factory.mktemp("student") / "tiny-llama")


def trained(student: Path, workdir: Path, steps: int, every: int, patience: int, checkpoints: int = 2) -> Any:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    torch.manual_seed(0)
    settings = SftSettings(max_steps=steps, batch_size=4, learning_rate=5e-3, checkpoint_every_steps=checkpoints)
    config = trl_configs.sft_config(
        settings, workdir, use_gpu=False, bf16=False, save_checkpoints=False, every=every, patience=patience
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(student), args=config,
        processing_class=AutoTokenizer.from_pretrained(student), peft_config=trl_configs.lora_config(settings),
        train_dataset=Dataset.from_list(ROWS[:8]), eval_dataset=Dataset.from_list(ROWS[8:]),
        callbacks=trl_configs.early_stopping(patience),
    )  # fmt: skip
    trainer.evaluate()  # the recipe's eval before training
    trainer.train()
    return trainer


def test_the_best_checkpoints_loss_is_reused_and_is_what_a_second_pass_measures(student: Path, tmp_path: Path) -> None:
    trainer = trained(student, tmp_path, steps=6, every=2, patience=3)
    reused = measured_loss(trainer)
    assert reused is not None and reused == trainer.state.best_metric
    assert eval_loss(trainer) == reused
    assert trainer.evaluate()["eval_loss"] == pytest.approx(reused, rel=1e-5)  # the pass it saves


def test_the_last_steps_eval_is_reused_and_without_one_a_pass_runs(student: Path, tmp_path: Path) -> None:
    on_last = trained(student, tmp_path / "a", steps=4, every=2, patience=0)
    assert measured_loss(on_last) == pytest.approx(on_last.evaluate()["eval_loss"], rel=1e-5)
    off_last = trained(student, tmp_path / "b", steps=3, every=0, patience=0)
    assert measured_loss(off_last) is None  # the only eval was before training (step 0), the weights are step 3's
    assert eval_loss(off_last) == pytest.approx(off_last.evaluate()["eval_loss"], rel=1e-5)


def test_the_base_answers_are_the_same_with_an_untrained_adapter_off(student: Path) -> None:
    """An adapter not trained yet adds exactly zero: ``answers.evaluate`` turns it off and answers the same; a
    trained one (a lora_B not zero) stays on."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.trainer.recipes import answers

    tokenizer = AutoTokenizer.from_pretrained(student)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(student), trl_configs.lora_config(SftSettings()))
    model.eval()
    ends = answers.decoding.end_ids(model, tokenizer)
    through = [answers.answer(model, tokenizer, row["prompt"], 12, ends)[0] for row in ROWS[:3]]
    _, evaluated = answers.evaluate(model, tokenizer, ROWS[:3], 12, "base")
    assert [a["answer"] for a in evaluated] == through
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_B" in n).fill_(0.5)
        trained = model(ids).logits
        with model.disable_adapter():
            base = model(ids).logits
        with answers.adapter_off(model):
            kept = model(ids).logits
    assert not torch.equal(trained, base) and torch.equal(kept, trained)
