"""The loss guard of every training phase: a non-finite loss stops training and ends the run.

``Watch`` is a transformers ``TrainerCallback``: at a logged loss that is not finite (the
logged loss is the mean over ranks, so every rank agrees) it stops training at once and
keeps where; after ``trainer.train()`` the recipe calls ``check()``, which raises the phase's
``training_diverged`` failure (``failures.diverged``: lower that phase's learning rate).
``eval_loss`` is the same guard for an evaluation's loss.
"""

from __future__ import annotations

import math
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
    """``trainer.evaluate()``'s eval loss; a non-finite one is the phase's ``training_diverged`` failure."""
    loss = float(trainer.evaluate()["eval_loss"])
    if not math.isfinite(loss):
        raise failures.diverged(trainer.state.global_step, loss, phase=phase)
    return loss
