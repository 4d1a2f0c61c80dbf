"""The loss guard of every training phase: a non-finite loss stops training and ends the run.

``Watch`` is a transformers ``TrainerCallback``: at a logged loss that is not finite (the
logged loss is the mean over ranks, so every rank agrees) it stops training at once and
keeps where; after ``trainer.train()`` the recipe calls ``check()``, which raises the phase's
``training_diverged`` failure (``failures.diverged``: lower that phase's learning rate).
``eval_loss`` is the same guard for an evaluation's loss after training; it reuses the loss an eval while
training measured on the same weights (``measured_loss``) rather than run the same pass again.
"""

from __future__ import annotations

import math
import os
from typing import Any

from transformers import TrainerCallback

from services.trainer.recipes import failures


class Watch(TrainerCallback):
    """Stops training at a non-finite loss; also keeps the input tokens seen when training began."""

    def __init__(self, phase: str = failures.SFT) -> None:
        self.phase = phase
        self.diverged: tuple[int, float] | None = None
        self.tokens_at_begin = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.tokens_at_begin = int(getattr(state, "num_input_tokens_seen", 0) or 0)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        loss = (logs or {}).get("loss")
        if isinstance(loss, int | float) and not math.isfinite(loss):
            self.diverged = (state.global_step, float(loss))
            control.should_training_stop = True

    def check(self) -> None:
        """Raise the phase's ``training_diverged`` failure when a loss was not finite."""
        if self.diverged is not None:
            raise failures.diverged(*self.diverged, phase=self.phase)


def eval_loss(trainer: Any, phase: str = failures.SFT) -> float:
    """The eval loss of the trainer's model after training: the one an eval while training measured on the same
    weights (``measured_loss``), else ``trainer.evaluate()``'s; a non-finite one is the phase's
    ``training_diverged`` failure."""
    measured = measured_loss(trainer)
    # evaluate() is a collective: all ranks run it, or none
    reuse = _every_rank_agrees(measured is not None)
    loss = measured if reuse and measured is not None else float(trainer.evaluate()["eval_loss"])
    if not math.isfinite(loss):
        raise failures.diverged(trainer.state.global_step, loss, phase=phase)
    return loss


# The weight files transformers' ``Trainer._load_best_model`` loads a best checkpoint from.
_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")


def measured_loss(trainer: Any) -> float | None:
    """The eval loss of the trainer's model as it is after ``train()``, when an eval while training measured
    those very weights (the same eval set, batches and precision: the same number), else None:

    - with ``load_best_model_at_end`` by eval loss, the model is the best checkpoint, whose loss is
      ``state.best_metric`` when that checkpoint is the best eval's step (an eval between checkpoints may have
      scored better) and its weights were there to load (a resumed job's best may be an earlier attempt's);
    - without it, the model is the last step's, measured when the last eval fell on the last step.
    """
    state, args = trainer.state, trainer.args
    if args.load_best_model_at_end:
        best = state.best_model_checkpoint or ""
        at_best = os.path.basename(best) == f"checkpoint-{getattr(state, 'best_global_step', None)}"
        loaded = at_best and any(os.path.isfile(os.path.join(best, name)) for name in _WEIGHTS)
        if args.metric_for_best_model in ("eval_loss", "loss") and loaded and state.best_metric is not None:
            return float(state.best_metric)
        return None
    evals = [entry for entry in state.log_history if "eval_loss" in entry]
    if evals and evals[-1].get("step") == state.global_step:
        return float(evals[-1]["eval_loss"])
    return None


def _every_rank_agrees(reuse: bool) -> bool:
    """True when every rank can reuse its measured loss. Each rank decides on its own files (rank 0 alone keeps
    the checkpoints), and a rank that calls ``evaluate()`` alone waits for the others forever: the ranks agree
    on the minimum of their answers (gloo or NCCL; a single process answers for itself)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return reuse
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    flag = torch.tensor([1 if reuse else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())
