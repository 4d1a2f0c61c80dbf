"""Mid-training evals: their cadence, early stopping, the best step, and how training ended.

Every path evaluates while it trains, on by default:

- **Cadence** (``cadence``): ``sft.eval_every_steps`` when set; 0 (the default) evaluates about
  ``EVALS_PER_RUN`` times a run (every ``ceil(planned steps / 10)`` steps); -1 evaluates only before and
  after training.
- **Early stopping** (``patience``): training stops after ``sft.early_stopping_patience`` evals in a row
  without a better score; 0 (the default) means ``DEFAULT_PATIENCE``; -1 never stops early.
- **The best checkpoint** is what the run keeps and registers, not the last weights.

The text paths use transformers' own machinery for eval loss (``load_best_model_at_end``, checkpoints at
the evals, ``EarlyStoppingCallback``); ``history`` reads what happened from the trainer's state. The
tool-calling path scores generated calls, which transformers cannot do, so ``BestByMetric`` (a
``TrainerCallback``) measures at each of the trainer's evals (or every ``every`` steps for a trainer without
an eval set, GRPO), keeps a copy of the trainable weights at the best score, stops after ``patience`` evals
without a better one, and puts the best weights back at the end. A better score is a higher correct rate,
or the same rate at a lower eval loss where the trainer measured one: a small student's rate stays at 0 for
a while as it learns the format, and that is progress, not a reason to stop.

What a job writes into result.json, and the trainer shows on the run (``Run.evals``, ``best_step``,
``stop_reason``, ``stop_step``): ``{"evals": [{"step", "values"}], "best_step", "stop": {"reason", "step"}}``;
the reasons are ``max_steps``, ``epochs`` and ``early_stop``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from services.trainer.recipes.progress import ProgressPush, push_metrics
from services.trainer.recipes.sft_settings import SftSettings

EVALS_PER_RUN = 10
DEFAULT_PATIENCE = 3
OFF = -1


def planned_steps(settings: SftSettings, rows: int, workers: int = 1) -> int:
    """Optimizer steps a run of ``rows`` training rows takes: ``max_steps``, else its epochs' worth."""
    if settings.max_steps:
        return settings.max_steps
    per_epoch = math.ceil(math.ceil(rows / (settings.batch_size * workers)) / settings.gradient_accumulation_steps)
    return settings.epochs * max(per_epoch, 1)


def cadence(settings: SftSettings, steps: int) -> int:
    """Steps between evals: the setting, about ``EVALS_PER_RUN`` a run for 0, none (0) for -1."""
    if settings.eval_every_steps == OFF:
        return 0
    return settings.eval_every_steps or max(math.ceil(steps / EVALS_PER_RUN), 1)


def patience(settings: SftSettings, every: int) -> int:
    """Evals without a better score before training stops: the setting, ``DEFAULT_PATIENCE`` for 0; none (0)
    for -1 or without evals."""
    if not every or settings.early_stopping_patience == OFF:
        return 0
    return settings.early_stopping_patience or DEFAULT_PATIENCE


def ending(step: int, planned: int, settings: SftSettings, stopped_early: bool) -> dict[str, Any]:
    """How training ended, for result.json's ``stop``."""
    if stopped_early and step < planned:
        return {"reason": "early_stop", "step": step}
    return {"reason": "max_steps" if settings.max_steps else "epochs", "step": step}


def history(trainer: Any, key: str = "eval_loss") -> tuple[list[dict[str, Any]], int]:
    """The evals a transformers trainer logged (``[{"step", "values"}]``) and the step of its best checkpoint
    (0 when it kept none)."""
    evals = [
        {"step": int(entry["step"]), "values": {k: float(v) for k, v in entry.items() if k.startswith("eval_")
                                                 and isinstance(v, int | float) and math.isfinite(v)}}
        for entry in trainer.state.log_history
        if key in entry and "step" in entry
    ]  # fmt: skip
    best = trainer.state.best_model_checkpoint or ""
    best_step = int(best.rsplit("-", 1)[-1]) if best.rsplit("-", 1)[-1].isdigit() else 0
    return evals, best_step


class BestByMetric(TrainerCallback):
    """Measure (``measure(model) -> values``) at the trainer's evals, or every ``every`` steps when ``on_steps``;
    keep the weights at the best ``rank``, stop after ``patience`` evals without a better one (0: never), and
    ``restore`` the best at the end. ``offset`` turns a stage's steps into the run's (a GRPO stage after SFT).
    ``lower_is_better``: the score is an error rate (the speech recipe's WER), better when lower."""

    def __init__(
        self, measure: Callable[[Any], dict[str, float]], key: str, every: int, patience: int,
        push: ProgressPush | None = None, offset: int = 0, on_steps: bool = False, lower_is_better: bool = False,
    ) -> None:  # fmt: skip
        self.measure, self.key, self.every, self.patience = measure, key, every, patience
        self.sign = -1.0 if lower_is_better else 1.0
        self.push, self.offset, self.on_steps = push, offset, on_steps
        self.evals: list[dict[str, Any]] = []
        self.best: tuple[float, float] = (-math.inf, -math.inf)
        self.best_step, self.since_best = 0, 0
        self.stopped_early = False
        self._weights: dict[str, Any] | None = None
        self._training = False  # an evaluate() before or after train() is not a mid-training eval

    def rank(self, values: dict[str, float]) -> tuple[float, float]:
        """Higher is better: the score (negated when lower is better), then the eval loss (lower) where there is
        one."""
        return self.sign * values[self.key], -values.get("eval_loss", math.inf)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._training = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._training = False

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, model: Any = None,
                    **kwargs: Any) -> None:  # fmt: skip
        if self._training and not self.on_steps and model is not None:
            loss = (metrics or {}).get("eval_loss")
            self._measured(state, control, model, {"eval_loss": float(loss)} if loss is not None else {})

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.on_steps and self.every and not state.global_step % self.every and model is not None:
            self._measured(state, control, model, {})

    def _measured(self, state: Any, control: Any, model: Any, values: dict[str, float]) -> None:
        step = self.offset + state.global_step
        values = {**self.measure(model), **values}
        self.evals.append({"step": step, "values": values})
        push_metrics(self.push, step, values)
        if self.rank(values) > self.best:
            self.best, self.best_step, self.since_best = self.rank(values), step, 0
            self._weights = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
        else:
            self.since_best += 1
            if self.patience and self.since_best >= self.patience:
                self.stopped_early = control.should_training_stop = True

    def values_at(self, step: int) -> dict[str, float] | None:
        """What the eval at run step ``step`` measured (None: no eval fell on that step)."""
        return next((e["values"] for e in reversed(self.evals) if e["step"] == step), None)

    def restore(self, model: Any, final: dict[str, float]) -> bool:
        """Put the best weights back unless the final values (measured after training) rank at least as well;
        True when it did."""
        if self._weights is None or self.rank(final) >= self.best:
            return False
        import torch

        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in self._weights:
                    parameter.copy_(self._weights[name].to(parameter.device))
        return True
