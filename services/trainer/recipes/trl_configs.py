"""trl, peft and transformers configs built from the run's settings, the same way for every recipe.

``SftSettings`` and ``GrpoSettings`` name the hyperparameters a user sets; this module maps
them onto trl's ``SFTConfig`` / ``GRPOConfig``, peft's ``LoraConfig`` and transformers'
early stopping, with what every job shares: CPU or GPU, bf16 where the GPU has it, a log
line for every step (the progress push and the loss guard read them), non-finite losses
logged as they are (``logging_nan_inf_filter=False``: the guard must see them), no
reporting integrations, no progress bars, no dataloader processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.trainer.recipes.grpo_settings import GrpoSettings
from services.trainer.recipes.sft_settings import SftSettings


def precision(use_gpu: bool) -> tuple[bool, Any]:
    """(bf16, the torch dtype to load the model in): bf16 on a GPU that has it, else float32."""
    import torch

    bf16 = use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bf16, torch.bfloat16 if bf16 else torch.float32


def sft_config(
    settings: SftSettings, output_dir: Path, *, use_gpu: bool, bf16: bool, save_checkpoints: bool,
    every: int = 0, patience: int = 0, count_tokens: bool = False, padding_free: bool = False, liger: bool = False,
    checkpointing: bool | None = None,
) -> Any:  # fmt: skip
    """trl's ``SFTConfig``: evals of the eval loss every ``every`` steps (0: none; ``evals.cadence``), a checkpoint
    every ``checkpoint_every_steps`` when ``save_checkpoints``, and with early stopping (``patience`` > 0) the
    best checkpoint by eval loss kept and loaded at the end (checkpoints then fall on evals: the cadence
    becomes ``every`` unless it is a multiple of it); ``count_tokens`` counts the input tokens seen (without
    padding) for a tokens-per-second figure. ``padding_free``: each batch's rows in one sequence, no padding
    (``sft_packing``; rows longer than ``max_seq_length`` are left out beforehand, so nothing is truncated);
    ``liger``: Liger's fused kernels; ``checkpointing``: gradient checkpointing (None: on a GPU)."""
    from trl import SFTConfig

    saves = save_checkpoints or patience > 0
    save_steps = settings.checkpoint_every_steps
    if patience and save_steps % every:
        save_steps = every
    extra: dict[str, Any] = {"include_num_input_tokens_seen": "non_padding"} if count_tokens else {}
    return SFTConfig(
        output_dir=str(output_dir), use_cpu=not use_gpu, bf16=bf16,
        activation_checkpointing=use_gpu if checkpointing is None else checkpointing,
        padding_free=padding_free, use_liger_kernel=liger, seed=settings.seed, data_seed=settings.seed,
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs, max_steps=settings.max_steps or -1,
        per_device_train_batch_size=settings.batch_size, per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        max_length=None if padding_free else settings.max_seq_length,
        save_strategy="steps" if saves else "no", save_steps=save_steps, save_total_limit=2,
        eval_strategy="steps" if every else "no", eval_steps=every or None,
        load_best_model_at_end=patience > 0, metric_for_best_model="eval_loss",
        restore_callback_states_from_checkpoint=True,  # early stopping's count of evals goes on after a resume
        greater_is_better=False, logging_steps=1, logging_nan_inf_filter=False, report_to=[], disable_tqdm=True,
        dataloader_num_workers=0, **extra,
    )  # fmt: skip


def lora_config(settings: SftSettings) -> Any:
    """peft's ``LoraConfig`` on every linear layer, or None for a full fine-tune."""
    from peft import LoraConfig

    if settings.full_finetune:
        return None
    return LoraConfig(
        r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
        target_modules="all-linear", task_type="CAUSAL_LM",
    )  # fmt: skip


def early_stopping(patience: int) -> list[Any]:
    """The early-stopping callback after ``patience`` evals without a lower eval loss (none for 0)."""
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=patience)] if patience else []


def grpo_config(
    settings: GrpoSettings, output_dir: Path, *, seed: int, use_gpu: bool, bf16: bool, reward_weights: list[float]
) -> Any:
    """trl's ``GRPOConfig``: ``completions_per_step`` completions a step (``prompts_per_step`` prompts x
    ``num_generations``), no checkpoints (a GRPO stage starts over when its job is submitted again)."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(output_dir), use_cpu=not use_gpu, bf16=bf16, activation_checkpointing=use_gpu,
        seed=seed, learning_rate=settings.learning_rate, max_steps=settings.max_steps,
        per_device_train_batch_size=settings.completions_per_step, num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length, temperature=settings.temperature, beta=settings.beta,
        reward_weights=list(reward_weights), logging_steps=1, logging_nan_inf_filter=False,
        save_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip


def trainer_args(
    settings: SftSettings,
    output_dir: Path,
    *,
    use_gpu: bool,
    bf16: bool,
    every: int,
    ray_train: bool,
    seq2seq: bool = False,
) -> Any:
    """transformers' ``TrainingArguments`` (``Seq2SeqTrainingArguments`` for an encoder-decoder) of a recipe on a
    plain ``Trainer`` (speech, OCR): evals of the eval loss every ``every`` steps (the recipe's ``BestByMetric``
    adds its metric), a checkpoint every ``settings.checkpoint_every_steps`` under Ray Train, a log line a step."""
    from transformers import Seq2SeqTrainingArguments, TrainingArguments

    extra: dict[str, Any] = {"predict_with_generate": False} if seq2seq else {}
    return (Seq2SeqTrainingArguments if seq2seq else TrainingArguments)(
        output_dir=str(output_dir), use_cpu=not use_gpu, bf16=bf16, seed=settings.seed, data_seed=settings.seed,
        learning_rate=settings.learning_rate, num_train_epochs=settings.epochs, max_steps=settings.max_steps or -1,
        per_device_train_batch_size=settings.batch_size, per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        save_strategy="steps" if ray_train else "no", save_steps=settings.checkpoint_every_steps, save_total_limit=2,
        eval_strategy="steps" if every else "no", eval_steps=every or None, remove_unused_columns=False,
        label_names=["labels"], logging_steps=1, logging_nan_inf_filter=False, report_to=[], disable_tqdm=True,
        dataloader_num_workers=0, **extra,
    )  # fmt: skip
