"""What lets a retried attempt of the tool-calling recipe (``tool_calling.py``) go on where the last one stopped.

The recipe's Ray Train job retries an attempt that raised or lost its worker (``max_failures``, ``job.train_on_ray``).
A retry starts the stages again, but not from zero:

- **SFT checkpoints.** In the Ray job the SFT trainer saves a checkpoint every ``sft.checkpoint_every_steps`` steps
  and at its last step; ``reporting`` is the ``RayTrainReportCallback`` that reports each to Ray Train, which
  keeps the last two in S3 under ``<output_prefix>/ray/``. ``train`` resumes a retried attempt from the last one
  (``ray.train.get_checkpoint``: the weights, the optimizer, the scheduler, the position in the data), with the
  run event ``resuming from the checkpoint at step N``. Called directly (no Ray) the recipe saves none.
- **The base evaluation** runs once per run: its rates and the eval loss before training are kept in
  ``<output_prefix>/eval_before.json`` (``BEFORE``), which a retried attempt reads instead.
- **The SFT result.** With GRPO to follow, ``keep`` saves the SFT model (the adapter, or the full weights) under
  ``<output_prefix>/sft/model/`` and what SFT measured in ``<output_prefix>/sft/sft.json`` (written last: it says
  SFT is done). An attempt that finds it (``kept``: one retried during GRPO) skips the base evaluation and SFT and
  starts GRPO from that model (``kept_model``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.common.objects import ObjectStore
from services.trainer.recipes import job
from services.trainer.recipes.job_spec import JobSpec
from services.trainer.recipes.progress import ProgressPush, stage_log

BEFORE = "eval_before.json"
SFT_MODEL = "sft/model"
SFT_DONE = "sft/sft.json"
RESUMING = "resuming from the checkpoint at step"


def reporting(ray_train: bool) -> list[Any]:
    """The callback that reports each checkpoint the trainer saves to Ray Train (none outside a Ray Train job)."""
    if not ray_train:
        return []
    from ray.train.huggingface.transformers import RayTrainReportCallback

    return [RayTrainReportCallback()]


def train(trainer: Any, progress: ProgressPush, ray_train: bool) -> Any:
    """``trainer.train()``; in a retried attempt of a Ray Train job, from the last checkpoint it reported."""
    checkpoint = None
    if ray_train:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return trainer.train()
    from ray.train.huggingface.transformers import RayTrainReportCallback

    with checkpoint.as_directory() as directory:
        resume = Path(directory) / RayTrainReportCallback.CHECKPOINT_NAME
        step = json.loads((resume / "trainer_state.json").read_text())["global_step"]
        stage_log(progress, f"{RESUMING} {step}")
        return trainer.train(resume_from_checkpoint=str(resume))


def keep(store: ObjectStore, spec: JobSpec, model: Any, directory: Path, done: dict[str, Any]) -> None:
    """Save the SFT model in ``directory`` and upload it, then what SFT measured (``done``)."""
    model.save_pretrained(directory)
    job.upload_dir(store, directory, f"{spec.output_prefix}/{SFT_MODEL}")
    job.write_json(store, f"{spec.output_prefix}/{SFT_DONE}", done)


def kept(store: ObjectStore, spec: JobSpec) -> dict[str, Any] | None:
    """What SFT measured in an earlier attempt of this run (``keep``), or None when SFT did not finish."""
    return job.read_json(store, f"{spec.output_prefix}/{SFT_DONE}")


def kept_model(store: ObjectStore, spec: JobSpec, directory: Path, dtype: Any) -> Any:
    """The SFT model an earlier attempt kept, in ``directory``: the adapter on the student, trainable, or the full
    weights (loaded from ``directory``, which ``tool_grpo.grpo_start`` then takes as they are)."""
    from transformers import AutoModelForCausalLM

    store.download_prefix(f"{spec.output_prefix}/{SFT_MODEL}/", directory)
    if not (directory / "adapter_config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(spec.student_model, dtype=dtype)
    return PeftModel.from_pretrained(base, directory, is_trainable=True)
