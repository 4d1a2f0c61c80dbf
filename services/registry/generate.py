"""Generate (and Transcribe, ReadImage): runtime testing of a registered model.

A model's artifacts (a LoRA adapter or full weights, with the tokenizer and its chat
template) are copied once from S3 into a local cache directory, loaded (an adapter is
merged into its base model), and kept in a small LRU of loaded models (``max_loaded``: the registry's
DISTILLERY_MAX_LOADED_MODELS, default 2; a local deployment warms its model here, docs/serving.md). torch,
transformers and peft are imported on first use, so the registry starts fast; loading
and generating run in worker threads, with one lock per model so that concurrent
requests load it once. Speech models (path TRAINING_PATH_FINETUNE_ASR) share the cache and
the LRU, loaded and asked by ``transcribe.py``, and so do OCR models (TRAINING_PATH_FINETUNE_OCR),
by ``read_image.py``; each RPC refuses the other kinds of model, naming the RPC that answers them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillery.common.v1 import common_pb2
from distillery.registry.v1 import registry_pb2
from services.common import decoding, served_models, tool_format
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.objects import ObjectStore
from services.common.tool_format import ToolFormat
from services.registry import read_image as ocr
from services.registry import sampling as sampler
from services.registry import transcribe as speech
from services.registry.models import Model, check_tools_json
from services.registry.profiles import Sampling

ROLES = ("system", "user", "assistant", "tool")
DEFAULT_MAX_NEW_TOKENS = 128
MAX_NEW_TOKENS = 2048
MAX_TEMPERATURE = 2.0

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class Reply:
    # The text, and with tools the calls made or the block that did not parse; why generation ended.
    answer: decoding.ToolAnswer
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    prompt_ids: list[int] = field(default_factory=list)
    # The settings it was made with (sampling.reported: the strategy, temperature and token budget always).
    sampling: Sampling = field(default_factory=Sampling)


@dataclass(frozen=True)
class Loaded:
    """A model in memory, with what its run recorded about asking it (``training_config.json``)."""

    model: Any  # a transformers PreTrainedModel
    tokenizer: Any
    # The system message the model was trained under (distill-tools), used when a request brings none.
    system_prompt: str = ""
    # How it renders tools: recorded at training (detected again only for models registered before that).
    tool_format: ToolFormat | None = None
    # The token budget its run's evaluation answered in; a request's max_new_tokens of 0 takes it.
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS


def check_request(messages: Sequence[Mapping[str, Any]], max_new_tokens: int, temperature: float) -> None:
    """Refuse what no model could answer: no messages, unknown roles, out-of-range settings."""
    if not messages:
        raise InvalidArgument("messages is empty: give at least one message", field="messages")
    for i, message in enumerate(messages):
        if message.get("role") not in ROLES:
            raise InvalidArgument(
                f"messages[{i}].role is {message.get('role')!r}: use one of {', '.join(ROLES)}",
                field=f"messages[{i}].role",
            )
    if not 0 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise InvalidArgument(
            f"max_new_tokens is {max_new_tokens}: use 1 to {MAX_NEW_TOKENS} (0: the model's default)",
            field="max_new_tokens",
        )
    if not 0 <= temperature <= MAX_TEMPERATURE:  # also refuses NaN
        raise InvalidArgument(f"temperature is {temperature}: use 0 (greedy) to {MAX_TEMPERATURE}", field="temperature")


def artifact_prefix(artifact_uri: str, bucket: str, tenant_id: str) -> str:
    """The S3 key prefix (ending in "/") of ``s3://<bucket>/tenants/<tenant>/...`` or of a
    bare ``tenants/<tenant>/...`` key. Anything outside the service's bucket or the
    tenant's own prefix is refused: a model never reads another tenant's objects."""
    key = artifact_uri
    if key.startswith("s3://"):
        uri_bucket, _, key = key.removeprefix("s3://").partition("/")
        if uri_bucket != bucket:
            raise FailedPrecondition(
                f"the model's artifacts ({artifact_uri}) are not in this service's bucket {bucket!r}",
                field="artifact_uri",
            )
    key = key.strip("/") + "/"
    parts = key.split("/")[:-1]
    if parts[:2] != ["tenants", tenant_id] or len(parts) < 3 or any(p in ("", ".", "..") for p in parts):
        raise FailedPrecondition(
            f"the model's artifacts ({artifact_uri}) are not under its tenant's prefix tenants/{tenant_id}/",
            field="artifact_uri",
        )
    return key


class Generator:
    """Loads registered models on demand and answers chat messages with them."""

    def __init__(self, store: ObjectStore, cache_dir: Path, max_loaded: int = 2) -> None:
        self.store = store
        self.cache_dir = cache_dir.expanduser()
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[str, Loaded | speech.Speech | ocr.Reader] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    async def generate(
        self,
        model: Model,
        messages: Sequence[Mapping[str, Any]],
        max_new_tokens: int = 0,
        temperature: float = 0.0,
        tools: Sequence[Mapping[str, Any]] = (),
        settings: Sampling | None = None,
        steering: Sequence[Any] = (),
    ) -> Reply:
        """Answer ``messages`` (chat-template dicts: role, content, ...) as the assistant; ``max_new_tokens``
        0 is the model's default. ``tools`` are canonical tools, rendered as given (key order kept).
        ``settings``: a profile's sampling as applied (``profiles.applied``), over ``max_new_tokens`` and
        ``temperature``; ``steering``: vectors to apply (``steering.steered``'s attachments)."""
        loaded = await self.text_model(model, messages, max_new_tokens, temperature)
        chosen = settings or plain_settings(max_new_tokens, temperature)
        budget = chosen.max_tokens or loaded.max_new_tokens
        return await asyncio.to_thread(_generate, loaded, messages, budget, chosen, tools, steering)

    async def text_model(
        self, model: Model, messages: Sequence[Mapping[str, Any]], max_new_tokens: int, temperature: float
    ) -> Loaded:
        """The text model, loaded, once the request is checked (Generate's checks; GenerateStream's too)."""
        check_request(messages, max_new_tokens, temperature)
        if is_speech(model) or is_ocr(model):
            raise wrong_kind(model, "Generate")
        loaded = await self._load(model)
        assert isinstance(loaded, Loaded)
        return loaded

    async def warm(self, model: Model) -> None:
        """Load a model of any kind (a local deployment keeps it warm; the LRU still bounds memory)."""
        await self._load(model)

    def is_loaded(self, model_id: str) -> bool:
        return model_id in self._loaded

    async def transcribe(self, model: Model, audio: bytes, language: str = "") -> speech.Transcript:
        """Transcribe one .wav clip (``transcribe.py``) in ``language`` ("": detected)."""
        if not is_speech(model):
            raise wrong_kind(model, "Transcribe")
        clip = await asyncio.to_thread(speech.decode_wav, audio)
        loaded = await self._load(model)
        assert isinstance(loaded, speech.Speech)
        code = speech.language_code(loaded.model.generation_config, language)
        return await asyncio.to_thread(speech.transcribe, loaded, clip, code)

    async def read_image(self, model: Model, image: bytes, prompt: str = "") -> ocr.Reading:
        """Read one image (``read_image.py``) under ``prompt`` ("": the model's default OCR prompt)."""
        if not is_ocr(model):
            raise wrong_kind(model, "ReadImage")
        picture = await asyncio.to_thread(ocr.decode_image, image)
        loaded = await self._load(model)
        assert isinstance(loaded, ocr.Reader)
        return await asyncio.to_thread(ocr.read, loaded, picture, prompt)

    async def forget(self, model_id: str) -> None:
        """Drop a (deleted) model from memory and from the local cache."""
        self._loaded.pop(model_id, None)
        self._locks.pop(model_id, None)
        if _SAFE_ID.match(model_id):
            await asyncio.to_thread(shutil.rmtree, self.cache_dir / model_id, True)

    async def _load(self, model: Model) -> Loaded | speech.Speech | ocr.Reader:
        if not _SAFE_ID.match(model.id):
            raise InvalidArgument(f"invalid model id {model.id!r}", field="model_id")
        prefix = artifact_prefix(model.artifact_uri, self.store.bucket, model.tenant_id)
        async with self._locks.setdefault(model.id, asyncio.Lock()):
            loaded = self._loaded.get(model.id)
            if loaded is None:
                directory = await asyncio.to_thread(self._download, model, prefix)
                if is_speech(model):
                    loaded = await asyncio.to_thread(speech.load, directory, model.base_model, model.artifact_kind)
                elif is_ocr(model):
                    loaded = await asyncio.to_thread(ocr.load, directory, model.base_model, model.artifact_kind)
                else:
                    loaded = await asyncio.to_thread(_load, model, directory)
                self._loaded[model.id] = loaded
            self._loaded.move_to_end(model.id)
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
        return loaded

    def _download(self, model: Model, prefix: str) -> Path:
        """The model's artifacts in the local cache: fetched once, into a temporary
        directory renamed into place, so a half-done copy is never used."""
        target = self.cache_dir / model.id
        if target.is_dir():
            return target
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{model.id}-", dir=self.cache_dir))
        try:
            if self.store.download_prefix(prefix, partial) == 0:
                raise FailedPrecondition(f"no artifacts found at {model.artifact_uri}", field="artifact_uri")
            try:
                os.rename(partial, target)
            except OSError:
                if not target.is_dir():  # else another process finished first: use its copy
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return target


def offered_tools(model: Model, model_tools: bool, tools_json: Sequence[str]) -> list[dict[str, Any]]:
    """The tools a request offers: the model's own (in training order) when it asks for them, then its
    ``tools_json``; each checked and read as the renderer takes them (key order and numbers as written)."""
    if model_tools and not model.tools_json:
        raise FailedPrecondition(
            f"model {model.id} was not trained with tools: offer tools with tools_json (`--tool ID`)",
            field="model_tools",
        )
    texts = [*(model.tools_json if model_tools else []), *tools_json]
    check_tools_json(texts)
    return tool_format.tools_from_json(texts)


def is_speech(model: Model) -> bool:
    return model.path == common_pb2.TRAINING_PATH_FINETUNE_ASR


def is_ocr(model: Model) -> bool:
    return model.path == common_pb2.TRAINING_PATH_FINETUNE_OCR


def wrong_kind(model: Model, rpc: str) -> FailedPrecondition:
    """FAILED_PRECONDITION for ``rpc`` asked of a model it does not answer, naming the RPC (and command) that does."""
    if is_speech(model):
        kind = "a speech model: it transcribes audio with Transcribe"
        command = f"distillery models transcribe {model.id} FILE.wav"
    elif is_ocr(model):
        kind, command = "an OCR model: it reads images with ReadImage", f"distillery models read {model.id} IMAGE"
    else:
        kind, command = "a text model: ask it with Generate", f"distillery models generate {model.id} PROMPT"
    return FailedPrecondition(f"model {model.id} is {kind} ({command}), not {rpc}", field="model_id")


def plain_settings(max_new_tokens: int, temperature: float) -> Sampling:
    """A request's own max_new_tokens and temperature as settings (no profile)."""
    return Sampling(temperature=temperature, max_tokens=max_new_tokens or None)


def steered(loaded: Loaded, steering: Sequence[Any]) -> AbstractContextManager[Any]:
    """The steering vectors applied to generation in this thread (none: nothing changes)."""
    if not steering:
        return nullcontext()
    from services.registry import steering as hooks

    return hooks.steered(loaded.model, steering)


def _load(model: Model, directory: Path) -> Loaded:
    adapter = model.artifact_kind == registry_pb2.ARTIFACT_KIND_LORA_ADAPTER or (
        model.artifact_kind == registry_pb2.ARTIFACT_KIND_UNSPECIFIED and (directory / "adapter_config.json").exists()
    )
    try:
        network, tokenizer = served_models.load(directory, model.base_model, adapter)
    except served_models.BaseModelUnavailable as err:
        raise FailedPrecondition(
            f"the base model {model.base_model!r} cannot be loaded: {err}", field="base_model"
        ) from None
    config_file = directory / "training_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    recorded = config.get("tool_format_detail")
    return Loaded(
        network, tokenizer, str(config.get("system_prompt") or ""),
        ToolFormat.from_dict(recorded) if isinstance(recorded, dict) else None,
        int((config.get("decoding") or {}).get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS),
    )  # fmt: skip


def prompt_ids(loaded: Loaded, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]) -> list[int]:
    """The prompt as token ids: with tools, exactly as the tool-calling recipe's evaluation asked the model
    (``tool_format.prompt_ids``, its recorded format, its system message first when the request has none)."""
    tokenizer = loaded.tokenizer
    conversation = [dict(m) for m in messages]
    try:
        if not tools:
            return list(tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=True)
                        ["input_ids"])  # fmt: skip
        fmt = loaded.tool_format or tool_format.detect(tokenizer)
        if loaded.system_prompt and conversation[0].get("role") != "system":
            conversation.insert(0, {"role": "system", "content": loaded.system_prompt})
        return tool_format.prompt_ids(fmt, tokenizer, conversation, [dict(t) for t in tools])
    except (ValueError, tool_format.RenderError) as err:  # no chat template, or one that refuses these messages
        raise FailedPrecondition(f"the model's chat template cannot format these messages: {err}") from None


def _generate(
    loaded: Loaded,
    messages: Sequence[Mapping[str, Any]],
    max_new_tokens: int,
    settings: Sampling,
    tools: Sequence[Mapping[str, Any]],
    steering: Sequence[Any] = (),
) -> Reply:
    """One answer, decoded as the recipes' evaluations decode (``decoding``) under ``settings`` (``sampling``)."""
    import torch

    started = time.perf_counter()
    tokenizer = loaded.tokenizer
    prompt = prompt_ids(loaded, messages, tools)
    ends = decoding.end_ids(loaded.model, tokenizer)
    input_ids = torch.tensor([prompt], device=loaded.model.device)
    stops = sampler.stop_criteria(tokenizer, len(prompt), settings.stop)
    with steered(loaded, steering), torch.inference_mode():
        output = loaded.model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            eos_token_id=ends, **sampler.generate_options(settings), **({"stopping_criteria": stops} if stops else {}),
        )  # fmt: skip
    text, finish, generated = decoding.completion(tokenizer, output[0, len(prompt) :].tolist(), ends)
    text, stopped = sampler.cut(text, settings.stop)
    finish = decoding.STOP if stopped else finish
    answer = decoding.tool_answer(text, finish) if tools else decoding.ToolAnswer(text, finish_reason=finish)
    return Reply(
        answer=answer,
        prompt_ids=prompt,
        prompt_tokens=len(prompt),
        completion_tokens=generated,
        latency_ms=(time.perf_counter() - started) * 1000,
        sampling=sampler.reported(settings, max_new_tokens),
    )
