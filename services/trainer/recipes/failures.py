"""What went wrong in a training job, as a run error code, a message for the user and the field at fault.

The recipe raises ``RunFailure`` for what it recognises itself (an unknown model, a dataset
no row of which fits, a diverged loss). Anything else reaches the driver as whatever Ray
Train raised: with Ray 2.60, ``TorchTrainer.fit()`` raises ``ray.train.WorkerGroupError``
whose ``worker_failures`` maps each failed rank to the exception its loop raised (the
original type, unpickled; its ``__cause__`` is gone but the traceback text is in the
message), or ``ray.train.ControllerError`` with ``controller_failure``. A worker killed by
Ray's memory monitor shows up as a Ray error whose text says so. ``classify`` walks all of
these, so the code is the same wherever the error was raised.

What a user should change depends on the phase that was running: SFT (``sft.*`` settings)
or GRPO (``grpo.*``: its memory goes to sampling ``prompts_per_step`` x ``num_generations``
completions of up to ``max_completion_length`` tokens a step). The phase comes from the job
(``job.enter_phase`` records it where the driver reads it: a worker killed by the memory
monitor leaves no exception of its own to carry it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

UNKNOWN_MODEL = "unknown_model"
INVALID_DATASET = "invalid_dataset"
OUT_OF_MEMORY = "out_of_memory"
TRAINING_DIVERGED = "training_diverged"
TRAINING_FAILED = "training_failed"

# The phases of a training job that fail differently: the settings to change are theirs.
SFT, GRPO = "sft", "grpo"
PHASES = (SFT, GRPO)

# Texts that mean memory ran out: torch on GPU ("CUDA out of memory") and CPU ("can't allocate
# memory"), Ray's memory monitor ("... killed due to the node running low on memory",
# "killed due to memory pressure (OOM)"). Not "OOM killer": Ray names it in every message
# about a worker that died for an unknown reason.
_OOM_TEXT = re.compile(
    r"out of memory|can't allocate memory|running low on memory|memory pressure|\bOutOfMemoryError\b", re.I
)
_OOM_TYPES = ("OutOfMemoryError", "MemoryError")  # torch.OutOfMemoryError, ray.exceptions.OutOfMemoryError


class RunFailure(Exception):
    """A failure the user can act on: ``code`` is stable, ``message`` says what to do."""

    def __init__(self, code: str, message: str, field: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "field": self.field}


def unknown_model(student_model: str, err: BaseException) -> RunFailure:
    return RunFailure(
        UNKNOWN_MODEL,
        f"cannot load the student model {student_model!r} ({_last_line(err)}): give a model id from the hub "
        "or a path that the Ray workers can read",
        "student_model",
    )


def invalid_dataset(message: str) -> RunFailure:
    return RunFailure(INVALID_DATASET, message, "dataset_id")


def diverged(step: int, loss: float, phase: str = SFT) -> RunFailure:
    """A non-finite loss at ``step``: the phase's learning rate was too high."""
    if phase == GRPO:
        return RunFailure(
            TRAINING_DIVERGED,
            f"the GRPO loss became {loss} at step {step}: lower grpo.learning_rate and try again",
            "grpo.learning_rate",
        )
    return RunFailure(
        TRAINING_DIVERGED,
        f"the training loss became {loss} at step {step}: the training diverged. Lower sft.learning_rate and try again",
        "sft.learning_rate",
    )


def out_of_memory(err: BaseException, phase: str = SFT) -> RunFailure:
    """Memory ran out during ``phase``: the message and the field name that phase's settings."""
    if phase == GRPO:
        return RunFailure(
            OUT_OF_MEMORY,
            f"GRPO ran out of memory ({_last_line(err)}): lower grpo.prompts_per_step or grpo.num_generations "
            "(each step samples prompts_per_step x num_generations completions at once) or "
            "grpo.max_completion_length, or keep LoRA (sft.full_finetune=false)",
            "grpo.prompts_per_step",
        )
    return RunFailure(
        OUT_OF_MEMORY,
        f"training ran out of memory ({_last_line(err)}): lower sft.batch_size or sft.max_seq_length "
        "(raise sft.gradient_accumulation_steps to keep the effective batch), or keep LoRA "
        "(sft.full_finetune=false)",
        "sft.batch_size",
    )


def classify(err: BaseException, phase: str = SFT) -> RunFailure:
    """The run failure that ``err`` (raised anywhere: driver, controller, a worker) stands for, while the job
    was in ``phase`` (``SFT`` or ``GRPO``)."""
    chain = list(_chain(err))
    for e in chain:
        if isinstance(e, RunFailure):
            return e
    for e in chain:
        if _is_oom(e):
            return out_of_memory(e, phase)
    root = next((e for e in chain if not _is_wrapper(e)), err)  # what a worker raised, not Ray's wrapper
    return RunFailure(TRAINING_FAILED, f"training failed: {type(root).__name__}: {_last_line(root)}")


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and everything it wraps: causes, contexts, Ray Train's worker and controller failures."""
    seen: set[int] = set()
    todo = [err]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        inner: list[object] = [e.__cause__, e.__context__, getattr(e, "controller_failure", None)]
        inner.append(getattr(e, "cause", None))  # ray.exceptions.RayTaskError
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            inner.extend(failures[rank] for rank in sorted(failures))
        todo.extend(x for x in inner if isinstance(x, BaseException))


def _is_wrapper(e: BaseException) -> bool:
    """Ray's errors that carry another: a worker group's, a controller's, a task's."""
    return (
        hasattr(e, "worker_failures")
        or hasattr(e, "controller_failure")
        or isinstance(getattr(e, "cause", None), BaseException)
    )


def _is_oom(e: BaseException) -> bool:
    if any(cls.__name__ in _OOM_TYPES for cls in type(e).__mro__):
        return True
    # A wrapper's text holds its workers' tracebacks; those workers' exceptions are in the chain themselves.
    return not _is_wrapper(e) and bool(_OOM_TEXT.search(str(e)))


def _last_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."
