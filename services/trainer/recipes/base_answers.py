"""The base student's answers to a run's first eval prompts: what a rubric is checked on before training.

    python -m services.trainer.recipes.base_answers --spec-key tenants/<t>/runs/<run>/rubric/spec.json

Not a recipe (it trains nothing, and the pipeline's ``RECIPES`` does not name it): the trainer submits it
at VALIDATING for a run with a rubric (``services/trainer/rubric_runs.py``), with the run's own spec but
``output_prefix`` the run's ``rubric/`` folder, so the shared skeleton (``job.drive``: secrets, the spec, a
result that is already there, error.json) applies as it is. The trainer service runs no model itself.

One Ray task (the GPU of ``spec.use_gpu``, else the CPUs of a node, as a training job's workers ask) loads
the student as the run's training starts from it (``start_model``: a registered model it trains further
included) and asks it the first ``ROWS`` prompts of the eval split as ``Generate`` asks them
(``answers.evaluate``: greedy, one prompt at a time, the evaluation's token budget). The job writes
``<output_prefix>/result.json``::

    {"answers": ["...", ...], "references": ["...", ...], "finish_reasons": [...],
     "decoding": {"max_new_tokens": N, "temperature": 0.0}, "student_model": "..."}

in the eval split's order; the trainer scores them with the rubric beside the references.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from services.common.objects import ObjectStore
from services.common.settings import S3Settings
from services.trainer.recipes import answers, job, start_model, trl_configs
from services.trainer.recipes.job_spec import JobSpec
from services.trainer.recipes.splits import prompt_completion, split_lines

log = logging.getLogger("distillery.recipes.base_answers")

ROWS = 16  # the first rows of the eval split a rubric is checked on (as many as answers.EVAL_PROMPTS)


def main(argv: list[str] | None = None) -> int:
    return job.drive(argv, "python -m services.trainer.recipes.base_answers", fit)


def fit(spec: JobSpec, s3: S3Settings) -> None:
    import ray

    job.start_ray()
    if spec.use_gpu:
        options: dict[str, Any] = {"num_gpus": 1}
    else:
        node_cpus = max((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"]), default=1)
        options = {"num_cpus": max(1, node_cpus)}
    task = ray.remote(answer_eval_prompts).options(max_retries=1, **options)
    result = ray.get(task.remote(spec.to_json(), job.secrets_for_workers()))
    job.write_json(ObjectStore(s3), f"{spec.output_prefix}/result.json", result)
    log.info("run %s: %d base answers written", spec.run_id, len(result["answers"]))


def answer_eval_prompts(spec_json: str, secrets: dict[str, str]) -> dict[str, Any]:
    """In the Ray task: the student's answers to the first ``ROWS`` eval prompts (module docstring)."""
    from transformers import AutoTokenizer

    spec = job.worker_spec({"spec": spec_json, "secrets": secrets})
    store = ObjectStore(S3Settings.from_env())
    workdir = Path(tempfile.mkdtemp(prefix=f"{spec.run_id}-base-answers-"))
    try:
        start = start_model.fetch(spec, store, workdir)
        tokenizer = AutoTokenizer.from_pretrained(start_model.tokenizer_source(spec, start))
        model, _ = start_model.load(spec, start, trl_configs.precision(spec.use_gpu)[1])
        if spec.use_gpu:
            model = model.to("cuda")
        rows = []
        for where, line in split_lines(store, spec.eval_key, "eval"):
            rows.append(prompt_completion(line, where))
            if len(rows) == ROWS:
                break
        max_new_tokens = answers.budget(rows, tokenizer)
        _, answered = answers.evaluate(model, tokenizer, rows, max_new_tokens, "base", limit=ROWS)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "answers": [a["answer"] for a in answered], "references": [a["reference"] for a in answered],
        "finish_reasons": [a["finish_reason"] for a in answered],
        "decoding": {"max_new_tokens": max_new_tokens, "temperature": 0.0}, "student_model": spec.student_model,
    }  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
