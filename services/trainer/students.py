"""Where a run's student model may come from (``CreateRunRequest.student_model``).

- a hub id, ``org/name`` (e.g. ``HuggingFaceTB/SmolLM2-135M-Instruct``), where the deployment allows
  the hub (``DISTILLERY_ALLOW_HUB_MODELS``, on by default);
- a directory under one of the operator's model roots (``DISTILLERY_MODEL_ROOTS``), checked after
  symlinks and ``..`` are resolved, and stored so resolved: the job reads what was checked;
- one of the tenant's own registered models (``model:mdl_...`` or ``mdl_...``), to train it further:
  recognised, and refused for now (the job cannot fetch a registered model's artifacts yet).

Anything else (another path on the server, such as another tenant's cached model; a relative path;
a URL) is INVALID_ARGUMENT naming ``student_model`` and saying what to give instead.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from services.common.errors import InvalidArgument
from services.common.ids import check_text

FIELD = "student_model"
MAX_STUDENT_CHARS = 512
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_HUB_ID = re.compile(rf"{_HUB_PART}/{_HUB_PART}")
_REGISTERED = re.compile(r"(?:model:)?mdl_[A-Za-z0-9_-]+|model:.*")


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
        """The student model as the run stores it (a hub id as given, a directory as its real path)."""
        value = value.strip()
        if not value:
            raise InvalidArgument(f"student_model is required: give {self.choices()}", field=FIELD)
        check_text(value, FIELD, MAX_STUDENT_CHARS)
        if _REGISTERED.fullmatch(value):
            raise InvalidArgument(
                f"student_model {value!r}: training a registered model further is not supported yet; give the "
                f"model it was trained from (its base_model in `distillery models show`): {self.choices()}",
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
