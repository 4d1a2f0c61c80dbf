"""Mid-training evals by a rubric's score, for a run with a rubric (the SFT recipe's text paths).

A run with a rubric hands its job the rubric as stored (``JobSpec.rubric``). At each of the trainer's evals
(``RubricScore``, a ``TrainerCallback``), the model answers the first ``ROWS`` eval prompts as ``Generate``
asks them (``answers.evaluate``: greedy, one at a time), and each answer is scored on the rubric's
programmatic criteria (``rubric_scores``): ``eval_rubric_score`` is the mean over the prompts of each
answer's weighted total, and ``eval_rubric_<criterion>`` each criterion's mean. They join the eval's
metrics before the trainer picks its best checkpoint and early stopping looks (``metric_for_best_model``
is then ``eval_rubric_score``, higher is better: ``use``), are recorded with the eval in the trainer's log
history (so ``evals.history`` and the run's ``Run.evals`` show them) and are pushed as metrics.

Judge criteria are not scored here (a job has no route to the teacher): a rubric of judge criteria only
leaves the run's evals on the eval loss (``for_job`` returns None). A row a criterion cannot score counts 0
(the rubric was checked on the eval set before training, so that is the answer's doing). Every worker
computes the same score (the same greedy answers from the same weights), so all agree on the best
checkpoint and on when to stop.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import TrainerCallback

from services.trainer.recipes import answers
from services.trainer.recipes.progress import ProgressPush, push_metrics
from services.trainer.recipes.rubric_scores import GradeError, Row, score, weighted
from services.trainer.rubric import Criterion, Rubric

log = logging.getLogger("distillery.recipes.rubric_evals")

ROWS = 16  # the first eval prompts answered at each eval
METRIC = "eval_rubric_score"


def for_job(stored: dict[str, Any] | None) -> list[Criterion] | None:
    """The programmatic criteria of the job's rubric; None without a rubric, or without any."""
    if not stored:
        return None
    criteria = [c for c in Rubric.from_dict(stored).criteria if not c.is_judge]
    if not criteria:
        log.info("the run's rubric has judge criteria only: evals score the eval loss")
    return criteria or None


def use(config: Any) -> None:
    """Have the trainer keep the checkpoint with the best rubric score, and stop early by it."""
    config.metric_for_best_model, config.greater_is_better = METRIC, True


def scores(criteria: list[Criterion], rows: list[dict[str, Any]], answered: list[dict[str, Any]]) -> dict[str, float]:
    """``eval_rubric_score`` and ``eval_rubric_<criterion>`` of the answers to ``rows`` (prompt-completion rows)."""
    per_criterion: list[list[float]] = [[] for _ in criteria]
    totals = []
    for i, (row, got) in enumerate(zip(rows, answered, strict=False)):
        scored = Row(str(row["prompt"][-1]["content"]), answers.reference(row), got["answer"])
        values = []
        for column, criterion in zip(per_criterion, criteria, strict=True):
            try:
                value = score(criterion, scored, i)
            except GradeError:
                value = 0.0
            column.append(value)
            values.append(value)
        totals.append(weighted(criteria, values))
    n = max(1, len(totals))
    out = {METRIC: sum(totals) / n}
    out.update({f"eval_rubric_{c.name}": sum(column) / n for c, column in zip(criteria, per_criterion, strict=True)})
    return out


class RubricScore(TrainerCallback):
    """At each eval: the rubric's score of the model's answers, added to the eval's metrics (module docstring)."""

    def __init__(
        self, criteria: list[Criterion], tokenizer: Any, rows: list[dict[str, Any]], max_new_tokens: int,
        push: ProgressPush | None = None,
    ) -> None:  # fmt: skip
        self.criteria, self.tokenizer, self.rows = criteria, tokenizer, rows[:ROWS]
        self.max_new_tokens, self.push = max_new_tokens, push

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, model: Any = None,
                    **kwargs: Any) -> None:  # fmt: skip
        if model is None or metrics is None:
            return
        _, answered = answers.evaluate(model, self.tokenizer, self.rows, self.max_new_tokens, "rubric", limit=ROWS)
        values = scores(self.criteria, self.rows, answered)
        metrics.update(values)  # before the trainer's best-checkpoint and early-stopping checks read them
        logged = state.log_history[-1] if state.log_history else {}
        if logged.get("step") == state.global_step and "eval_loss" in logged:
            logged.update(values)  # the eval's entry: what evals.history reads
        push_metrics(self.push, state.global_step, values)
