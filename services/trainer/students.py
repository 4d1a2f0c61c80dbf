"""Where a run's student model may come from (``CreateRunRequest.student_model``).

- a hub id, ``org/name`` (e.g. ``HuggingFaceTB/SmolLM2-135M-Instruct``), where the deployment allows
  the hub (``DISTILLERY_ALLOW_HUB_MODELS``, on by default);
- a directory under one of the operator's model roots (``DISTILLERY_MODEL_ROOTS``), checked after
  symlinks and ``..`` are resolved, and stored so resolved: the job reads what was checked;
- one of the tenant's own registered models (``model:mdl_...`` or ``mdl_...``), to train it further: the
  run stores the id, and ``continued_from`` (given the model as the registry answers it to the tenant) what
  its job starts from: the model's artifacts (read-only to the job) and the base model they were trained on
  (checked again as a student, since the deployment's allowances may have changed). A LoRA adapter goes on
  training as an adapter (its own rank and targets), or merged into its base when the run asks for a full
  fine-tune; full weights go on as a full fine-tune only (an adapter over them would need a base that
  ``Generate`` cannot load by name).

Anything else (another path on the server, such as another tenant's cached model; a relative path;
a URL) is INVALID_ARGUMENT naming ``student_model`` and saying what to give instead.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from distillery.registry.v1 import registry_pb2
from services.common.errors import InvalidArgument
from services.common.ids import check_text

FIELD = "student_model"
MAX_STUDENT_CHARS = 512
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_HUB_ID = re.compile(rf"{_HUB_PART}/{_HUB_PART}")
_REGISTERED = re.compile(r"(?:model:)?(mdl_[A-Za-z0-9_-]{1,64})")
ARTIFACT_KINDS = {
    registry_pb2.ARTIFACT_KIND_LORA_ADAPTER: "lora_adapter",
    registry_pb2.ARTIFACT_KIND_FULL_WEIGHTS: "full_weights",
}


def registered_id(student_model: str) -> str | None:
    """The model id when ``student_model`` (as ``check`` stored it) names a registered model, else None."""
    found = _REGISTERED.fullmatch(student_model)
    return found.group(1) if found else None


@dataclass(frozen=True)
class StudentSources:
    """What the deployment allows (the trainer's settings ``allow_hub_models`` and ``model_roots``)."""

    allow_hub: bool = True
    roots: tuple[str, ...] = ()

    def choices(self) -> str:
        """What to give, in words, for a refusal."""
        ways = ["a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct"] if self.allow_hub else []
        if self.roots:
            ways.append("a model directory under " + " or ".join(self.roots))
        if not ways:
            return "nothing: this deployment allows neither hub models nor model directories (ask its operator)"
        return " or ".join(ways)

    def check(self, value: str) -> str:
        """The student model as the run stores it (a hub id as given, a directory as its real path, a registered
        model as its id)."""
        value = value.strip()
        if not value:
            raise InvalidArgument(f"student_model is required: give {self.choices()}", field=FIELD)
        check_text(value, FIELD, MAX_STUDENT_CHARS)
        if (model_id := registered_id(value)) is not None:
            return model_id
        if value.startswith("model:"):
            raise InvalidArgument(
                f"student_model {value[:80]!r}: after 'model:' give one of your model ids (mdl_..., from "
                "`distillery models list`)",
                field=FIELD,
            )
        if os.path.isabs(value):
            return self._directory(value)
        if _HUB_ID.fullmatch(value) and ".." not in value:
            if not self.allow_hub:
                raise InvalidArgument(
                    f"student_model {value!r}: this deployment does not load models from the hub "
                    f"(DISTILLERY_ALLOW_HUB_MODELS=false); give {self.choices()}",
                    field=FIELD,
                )
            return value
        raise InvalidArgument(
            f"student_model {value[:80]!r} is neither a hub id (org/name) nor an absolute path: give {self.choices()}",
            field=FIELD,
        )

    def continued_from(self, model: registry_pb2.Model, bucket: str, full_finetune: bool) -> dict[str, str]:
        """What a run that trains ``model`` (the tenant's own, as GetModel answered it) further starts from:
        ``model_id``, ``base_model`` (the model's base, checked again), ``artifact_kind`` and ``artifact_prefix``
        (the S3 key prefix of its artifacts, which must lie under the tenant's own prefix)."""
        kind = ARTIFACT_KINDS.get(model.artifact_kind)
        if kind is None:
            raise InvalidArgument(
                f"student_model {model.id!r} has no artifacts a run can continue (kind "
                f"{registry_pb2.ArtifactKind.Name(model.artifact_kind)}): give its base model "
                f"{model.base_model!r} instead",
                field=FIELD,
            )
        if kind == "full_weights" and not full_finetune:
            raise InvalidArgument(
                f"student_model {model.id!r} holds full weights: train it further with a full fine-tune "
                "(sft.full_finetune=true, --full-finetune); a LoRA adapter over them could not be served",
                field=FIELD,
            )
        owned = f"s3://{bucket}/tenants/{model.tenant_id}/"
        if not model.artifact_uri.startswith(owned) or ".." in model.artifact_uri:
            raise InvalidArgument(
                f"student_model {model.id!r}: its artifacts are not where this deployment keeps models; give its "
                f"base model {model.base_model!r} instead",
                field=FIELD,
            )
        try:
            base = self.check(model.base_model)
        except InvalidArgument as err:
            raise InvalidArgument(
                f"student_model {model.id!r} was trained from {model.base_model!r}, which this deployment no "
                f"longer allows ({err.message})",
                field=FIELD,
            ) from None
        if registered_id(base) is not None:
            raise InvalidArgument(f"student_model {model.id!r} names no base model: give one", field=FIELD)
        prefix = model.artifact_uri.removeprefix(f"s3://{bucket}/").rstrip("/")
        return {"model_id": model.id, "base_model": base, "artifact_kind": kind, "artifact_prefix": prefix}

    def _directory(self, value: str) -> str:
        real = os.path.realpath(value)
        for root in self.roots:
            root = os.path.realpath(root)
            if real != root and os.path.commonpath([real, root]) == root:
                return real
        raise InvalidArgument(
            f"student_model {value!r} is not under a model directory this deployment allows "
            f"(symlinks and '..' resolved): give {self.choices()}",
            field=FIELD,
        )
