"""Checks of a run request for the paths that train on media as it is: finetune-asr (Whisper on clips) and
finetune-ocr (a vision-language model on images). Each refusal names the field and says what to give instead.

- Neither path has a teacher, tools or RL: ``teacher``, ``augment_count``, ``tool_ids``, ``seed_prompts`` and
  ``system_prompts`` are refused.
- Continuing one of the tenant's registered speech or OCR models is not supported yet (``student_model``).
- ``language`` belongs to finetune-asr (any code Whisper knows, ``services/common/whisper.py``); ``train_vision``
  and ``image_mode`` to finetune-ocr. Each given on another path is refused.
- finetune-ocr refuses DeepSeek-OCR's remote-code repositories (``deepseek-ai/DeepSeek-OCR`` and ``-2``, pinned to an
  old transformers), naming DeepSeek-OCR 2 as transformers loads it natively (``deepseek-community/DeepSeek-OCR-2``).
"""

from __future__ import annotations

import re
from typing import Any

from distillery.common.v1 import common_pb2
from distillery.trainer.v1 import trainer_pb2 as pb
from services.common import whisper
from services.common.errors import InvalidArgument
from services.common.ids import check_text
from services.trainer.students import registered_id

MEDIA_PATHS = {common_pb2.TRAINING_PATH_FINETUNE_ASR: "finetune-asr", common_pb2.TRAINING_PATH_FINETUNE_OCR:
               "finetune-ocr"}  # fmt: skip
MAX_IMAGE_MODE_CHARS = 32
OCR_2 = "deepseek-community/DeepSeek-OCR-2"
# deepseek-ai's own DeepSeek-OCR and DeepSeek-OCR-2 repositories: remote code (model type deepseek_vl_v2).
_REMOTE_CODE_OCR = re.compile(r"^deepseek-ai/deepseek-ocr(-2)?/?$|(^|/)deepseek-ocr/?$", re.IGNORECASE)


def checked(request: pb.CreateRunRequest) -> dict[str, Any]:
    """The request's media fields as stored (``language``, ``train_vision``, ``image_mode``: only those given)."""
    speech = request.path == common_pb2.TRAINING_PATH_FINETUNE_ASR
    ocr = request.path == common_pb2.TRAINING_PATH_FINETUNE_OCR
    if request.language and not speech:
        raise InvalidArgument("language overrides the spoken language of a finetune-asr run's clips; leave it out "
                              "of other runs", field="language")  # fmt: skip
    for field, given in (("train_vision", request.train_vision), ("image_mode", request.image_mode)):
        if given and not ocr:
            raise InvalidArgument(f"{field} is for finetune-ocr runs", field=field)
    if not (speech or ocr):
        return {}
    path = MEDIA_PATHS[request.path]
    for field, value in (("teacher", request.teacher), ("augment_count", request.augment_count),
                         ("tool_ids", request.tool_ids), ("seed_prompts", request.seed_prompts),
                         ("system_prompts", request.system_prompts)):  # fmt: skip
        if value:
            raise InvalidArgument(f"{field} is not for {path} runs: they train on their dataset's "
                                  f"{'transcripts' if speech else 'texts'} as they are", field=field)  # fmt: skip
    if registered_id(request.student_model) is not None:
        raise InvalidArgument(f"continuing one of your {'speech' if speech else 'OCR'} models is not supported yet: "
                              "give a model by hub id or directory (--student)", field="student_model")  # fmt: skip
    if speech:
        return {"language": _language(request.language)} if request.language else {}
    if _REMOTE_CODE_OCR.search(request.student_model.strip()):
        raise InvalidArgument(f"student_model {request.student_model!r} is DeepSeek-OCR's remote code, pinned to an "
                              f"old transformers: give DeepSeek-OCR 2 as transformers loads it natively ({OCR_2}), "
                              "or another image-text-to-text model", field="student_model")  # fmt: skip
    check_text(request.image_mode, "image_mode", MAX_IMAGE_MODE_CHARS)
    stored: dict[str, Any] = {"train_vision": True} if request.train_vision else {}
    if request.image_mode.strip():
        stored["image_mode"] = request.image_mode.strip()
    return stored


def _language(given: str) -> str:
    try:
        return whisper.whisper_language(given)
    except ValueError as err:
        raise InvalidArgument(f"language {err}", field="language") from None
