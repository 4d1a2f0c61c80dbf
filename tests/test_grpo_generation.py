"""GRPO's generation without vLLM (``services/trainer/recipes/grpo_generation.py``): each prompt prefilled once for
its samples gives the completions trl's own path gives (same seed, same tokens), so the rewards see what they saw;
the engine picked and recorded. A tiny random Qwen2 with the tool template (``tests/tiny_models.py``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

from services.common import tool_format
from services.trainer.recipes import grpo_generation, tool_data, tool_grpo, tool_rewards, trl_configs
from services.trainer.recipes.grpo_settings import GrpoSettings
from tests.test_tool_recipe import tool_rows
from tests.tiny_models import build_qwen2


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, list[dict[str, str]]]:
    from transformers import AutoTokenizer

    path = build_qwen2(tmp_path_factory.mktemp("grpo-generation") / "qwen2", tools=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = tool_data.grpo_rows(tool_rows()[0][:6], tool_format.detect(tokenizer), tokenizer)
    return path, tokenizer, rows


def test_runs_and_stop_cuts() -> None:
    assert grpo_generation.runs(["a", "a", "b", "b", "b", "a"]) == (["a", "b", "a"], [2, 3, 1])
    rows = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [3, 3, 3, 9]])
    assert grpo_generation.cut_at_stop(rows, [2, 9]) == [[5, 2], [5, 6, 7, 8], [3, 3, 3, 9]]


def test_prefilling_each_prompt_once_samples_what_the_whole_batch_samples(student: tuple) -> None:
    """Three prompts of different lengths, three samples each, at temperature 1 from one seed: the same tokens as
    ``generate`` on the nine left-padded rows (trl's path), and the prompt's ids as trl tokenizes them."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    path, tokenizer, rows = student
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    prompts = [rows[i]["prompt"] for i in (0, 1, 2)]
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    assert len({len(i) for i in ids}) > 1, "the prompts should differ in length, so that padding is exercised"
    config = GenerationConfig(max_new_tokens=16, do_sample=True, temperature=1.0, top_k=0,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=[tokenizer.eos_token_id])  # fmt: skip
    torch.manual_seed(0)
    shared = grpo_generation.sample_shared_prefix(model, ids, [3, 3, 3], config, tokenizer.pad_token_id)

    repeated = [row for row in ids for _ in range(3)]
    longest = max(len(row) for row in repeated)
    padded = torch.tensor([[tokenizer.pad_token_id] * (longest - len(r)) + r for r in repeated])
    mask = torch.tensor([[0] * (longest - len(r)) + [1] * len(r) for r in repeated])
    torch.manual_seed(0)
    whole = model.generate(input_ids=padded, attention_mask=mask, generation_config=config)
    expected = grpo_generation.cut_at_stop(whole[:, longest:], [tokenizer.eos_token_id])
    assert shared == expected
    assert len({tuple(row) for row in shared[:3]}) > 1, "a prompt's samples should differ at temperature 1"


def completions_and_rewards(path: Path, tokenizer: Any, rows: list[dict[str, str]], rollout: Any, out: Path) -> tuple:
    """One GRPO step of trl's trainer as the recipe configures it, with ``rollout`` as its generation (None: trl's)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOTrainer

    settings = GrpoSettings(num_generations=4, prompts_per_step=2, max_completion_length=12, max_steps=1)
    config = trl_configs.grpo_config(settings, out, seed=0, use_gpu=False, bf16=False,
                                     reward_weights=list(tool_rewards.REWARD_WEIGHTS))  # fmt: skip
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(path), reward_funcs=list(tool_rewards.REWARD_FUNCTIONS),
        args=config, processing_class=tokenizer, train_dataset=Dataset.from_list(rows), rollout_func=rollout,
    )  # fmt: skip
    trainer.train()
    logs = trainer._logs
    return list(logs["prompt"]), list(logs["completion"]), {k: list(v) for k, v in logs["rewards"].items()}


def test_the_rewards_see_what_they_see_with_trls_own_generation(student: tuple, tmp_path: Path) -> None:
    """A GRPO step with the shared-prefix rollout and one with trl's generation, from the same weights and seed:
    the same prompts, the same completion texts, the same rewards; and each distinct prompt tokenized once."""
    path, tokenizer, rows = student
    rollout = grpo_generation.SharedPrefixRollout(tokenizer)
    ours = completions_and_rewards(path, tokenizer, rows, rollout, tmp_path / "ours")
    trls = completions_and_rewards(path, tokenizer, rows, None, tmp_path / "trl")
    assert len(ours[1]) == 8 and len(set(ours[1])) > 1
    assert ours == trls
    assert len(rollout._ids) == 2  # two prompts a step, each tokenized once for its four samples


def test_the_recipe_records_its_engine_and_the_time_split(student: tuple, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    path, tokenizer, rows = student
    settings = GrpoSettings(num_generations=2, prompts_per_step=1, max_completion_length=4, max_steps=1)
    model = AutoModelForCausalLM.from_pretrained(path)
    _, metrics = tool_grpo.grpo_train(model, tokenizer, rows, settings, 0, tmp_path, False, False, [])
    assert metrics["grpo_steps"] == 1 and metrics["grpo_generation_vllm"] == 0.0
    assert metrics["grpo_generation_s_per_step"] > 0 and metrics["grpo_training_s_per_step"] > 0


def test_the_engine_is_vllm_only_on_a_gpu_worker_where_vllm_imports() -> None:
    assert grpo_generation.engine(False) == grpo_generation.TRANSFORMERS
    gpu = torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None
    assert grpo_generation.engine(True) == (grpo_generation.VLLM if gpu else grpo_generation.TRANSFORMERS)
    assert grpo_generation.vllm_settings()["vllm_mode"] == "colocate"


def test_the_rollout_tokenizes_each_prompt_once_as_trl_does(student: tuple) -> None:
    _, tokenizer, rows = student
    rollout = grpo_generation.SharedPrefixRollout(tokenizer)
    for row in rows + rows:
        assert rollout.prompt_ids(row["prompt"]) == tokenizer(text=[row["prompt"]])["input_ids"][0]
    assert len(rollout._ids) == len({row["prompt"] for row in rows})


def test_a_merged_lora_adapter_samples_the_same_policy_and_leaves_the_base_weights_bit_for_bit(student: tuple) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    path, tokenizer, rows = student
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path), LoraConfig(r=4, target_modules="all-linear"))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # a trained adapter, not peft's zero start
            torch.nn.init.normal_(parameter, std=0.5)
    model.eval()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = torch.tensor([tokenizer(rows[0]["prompt"])["input_ids"]])
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        with grpo_generation.merged_lora(model):
            assert all(m.merged for m in model.modules() if hasattr(m, "merged_adapters"))
            merged = model(input_ids=ids).logits
    assert torch.allclose(merged, unmerged, atol=1e-4)
    assert not any(m.merged for m in model.modules() if hasattr(m, "merged_adapters"))
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())
