"""Steering vectors: per-layer directions in a model family's hidden space, made from contrastive pairs and
added (times a strength) to the output hidden states of the named decoder layers while a model answers.

- ``compute_vector``: the mean activation difference (contrastive activation addition) between the positive
  and the negative text of each pair, per decoder layer. A text's activation is the mean of the layer's output
  hidden states over the answer's tokens (with a prompt: the assistant turn after the chat template's prompt;
  without: all of the text's tokens). ``pca``: the first principal component of the per-pair differences (not
  centred, so the shared shift counts), its sign aligned with the mean difference and its length the mean
  difference's projection on it.
- ``steered``: a context manager that applies vectors for code running in this thread (this context) only;
  one persistent forward hook per decoder layer reads the current context's additions, so concurrent
  generations on one shared model in other threads are not touched.
- Files: safetensors (``direction.<layer>`` float32 tensors, metadata) and llama.cpp's control-vector GGUF
  (``vector_files``).

torch is imported on first use (the registry starts without it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from services.common.errors import FailedPrecondition, InvalidArgument

# The vector itself and its files (safetensors, llama.cpp's GGUF) live in vector_files; re-exported here.
from services.registry.vector_files import SteeringVector, from_gguf, from_safetensors, to_gguf, to_safetensors

if TYPE_CHECKING:
    import torch

METHODS = ("mean_diff", "pca")
MAX_TOKENS_PER_TEXT = 512

# Per context: id(decoder layer module) -> the tensor to add to its output (already on its device and dtype).
_ACTIVE: ContextVar[dict[int, Any] | None] = ContextVar("distillery_steering", default=None)
# Per context, while compute_vector reads activations: (ids of the layers read, id -> the answer's mean output,
# the answer's first token position).
_CAPTURE: ContextVar[tuple[set[int], dict[int, Any], int] | None] = ContextVar("distillery_capture", default=None)
_INSTALL_LOCK = threading.Lock()
_HOOKED = "_distillery_steering_hook"


def decoder_layers(model: Any) -> Sequence[Any]:
    """The model's decoder blocks, in order (Llama/Qwen2/Mistral/Gemma ``model.layers``, GPT-2 ``transformer.h``,
    GPT-NeoX, OPT, and the same inside a PEFT wrapper); FailedPrecondition for a model of another shape."""
    candidates = (
        ("model", "layers"), ("transformer", "h"), ("gpt_neox", "layers"), ("model", "decoder", "layers"),
        ("base_model", "model", "model", "layers"), ("base_model", "model", "transformer", "h"),
    )  # fmt: skip
    for path in candidates:
        found: Any = model
        for name in path:
            found = getattr(found, name, None)
            if found is None:
                break
        if found is not None and hasattr(found, "__len__") and len(found) > 0:
            return list(found)
    raise FailedPrecondition(
        f"steering vectors need a decoder-only model with a list of decoder layers (Llama, Qwen2, Mistral, GPT-2 "
        f"like); {type(model).__name__} has none that this platform recognises",
        field="model_id",
    )


def hidden_size(model: Any) -> int:
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    if not size:
        raise FailedPrecondition(f"{type(model).__name__}'s config names no hidden_size", field="model_id")
    return int(size)


def check_fits(vector: SteeringVector, model: Any) -> None:
    """FailedPrecondition when ``vector`` was made for another family's shape than ``model``'s."""
    size, count = hidden_size(model), len(decoder_layers(model))
    if vector.hidden_size != size or vector.layer_count != count:
        raise FailedPrecondition(
            f"the vector was made for hidden size {vector.hidden_size} and {vector.layer_count} layers "
            f"({vector.base_model}); this model has hidden size {size} and {count} layers: use a vector made for "
            "this model's base model (`distillery vectors list --model MODEL`)",
            field="vectors",
        )
    outside = [layer for layer in vector.directions if not 0 <= layer < count]
    if outside:
        raise FailedPrecondition(f"the vector has layers {outside} outside this model's 0-{count - 1}", field="vectors")


def _add_hook(module: Any, args: Any, output: Any) -> Any:
    capture = _CAPTURE.get()
    if capture is not None and id(module) in capture[0]:
        hidden = output[0] if isinstance(output, tuple) else output
        capture[1][id(module)] = hidden[0, capture[2] :].float().mean(dim=0).cpu()
    active = _ACTIVE.get()
    if not active:
        return None
    add = active.get(id(module))
    if add is None:
        return None
    if isinstance(output, tuple):
        return (output[0] + add, *output[1:])
    return output + add


def _install(layers: Sequence[Any]) -> None:
    """One persistent forward hook per decoder layer, installed once (idempotent, thread-safe)."""
    with _INSTALL_LOCK:
        for layer in layers:
            if not getattr(layer, _HOOKED, False):
                layer.register_forward_hook(_add_hook)
                setattr(layer, _HOOKED, True)


@contextmanager
def steered(model: Any, attachments: Sequence[tuple[SteeringVector, float, int, int]]) -> Iterator[None]:
    """Within the block, in this thread only, add ``strength * direction`` to the output hidden states of each
    attached layer: attachments are ``(vector, strength, first_layer, last_layer)``, first = last = 0 meaning all
    of the vector's layers, else only its layers in first..last (inclusive). Nests (the additions sum)."""
    if not attachments:
        yield
        return
    import torch

    layers = decoder_layers(model)
    additions: dict[int, torch.Tensor] = {}
    for vector, strength, first, last in attachments:
        check_fits(vector, model)
        for index, direction in vector.directions.items():
            if (first or last) and not first <= index <= last:
                continue
            total = additions.get(index)
            scaled = direction.to(torch.float32) * float(strength)
            additions[index] = scaled if total is None else total + scaled
    _install(layers)
    parameter = next(model.parameters())
    active = dict(_ACTIVE.get() or {})
    for index, addition in additions.items():
        key = id(layers[index])
        moved = addition.to(device=parameter.device, dtype=parameter.dtype)
        active[key] = moved if key not in active else active[key] + moved
    token = _ACTIVE.set(active)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def default_layers(layer_count: int) -> list[int]:
    """The middle third of the decoder layers (at least one; layer 0 only for a one-layer model, as llama.cpp's
    control vectors cannot steer it)."""
    if layer_count <= 1:
        return [0]
    start = max(1, layer_count // 3)
    end = max(start + 1, (2 * layer_count + 2) // 3)
    return list(range(start, min(end, layer_count)))


def check_layers(layers: Sequence[int], layer_count: int) -> list[int]:
    chosen = sorted(set(layers))
    outside = [layer for layer in chosen if not 0 <= layer < layer_count]
    if outside:
        raise InvalidArgument(
            f"layers {outside} are outside the model's decoder layers 0-{layer_count - 1}: choose layers in that range",
            field="layers",
        )
    return chosen


def _texts(tokenizer: Any, prompt: str, answer: str) -> tuple[list[int], int]:
    """Token ids of one side of a pair, and where its answer starts."""
    if not prompt:
        ids = list(tokenizer(answer, add_special_tokens=True)["input_ids"])
        return ids[:MAX_TOKENS_PER_TEXT], 0
    asked = [{"role": "user", "content": prompt}]
    try:
        head = list(tokenizer.apply_chat_template(asked, add_generation_prompt=True, return_dict=True)["input_ids"])
        full = list(
            tokenizer.apply_chat_template([*asked, {"role": "assistant", "content": answer}], return_dict=True)[
                "input_ids"
            ]
        )
    except ValueError as err:
        raise FailedPrecondition(
            f"the model has no usable chat template ({err}): give pairs without prompts (plain texts)",
            field="pairs",
        ) from None
    start = len(head) if full[: len(head)] == head else min(len(head), len(full) - 1)
    full = full[:MAX_TOKENS_PER_TEXT]
    return full, min(start, len(full) - 1)


def _activations(model: Any, layers: Sequence[Any], chosen: Sequence[int], ids: list[int], start: int) -> Any:
    """(len(chosen), hidden) float32: each chosen layer's output hidden states, averaged over the answer. Read by
    the persistent hooks for this context only (a generation in another thread is neither read nor touched)."""
    import torch

    keys = {id(layers[i]) for i in chosen}
    captured: dict[int, torch.Tensor] = {}
    token = _CAPTURE.set((keys, captured, start))
    try:
        device = next(model.parameters()).device
        with torch.inference_mode():
            model(input_ids=torch.tensor([ids], device=device), use_cache=False)
    finally:
        _CAPTURE.reset(token)
    return torch.stack([captured[id(layers[i])] for i in chosen])


def compute_vector(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str, str]],
    layers: Sequence[int] | None,
    method: str,
    base_model: str,
) -> SteeringVector:
    """A vector from ``pairs`` of (prompt, positive, negative) at ``layers`` (None or empty: the middle third)
    by ``method`` ("mean_diff" or "pca"; see the module's docstring). Runs the model once per text."""
    import torch

    method = method or "mean_diff"
    if method not in METHODS:
        raise InvalidArgument(f"method is {method!r}: use one of {', '.join(METHODS)}", field="method")
    if len(pairs) < 2:
        raise InvalidArgument("give at least 2 contrastive pairs", field="pairs")
    blocks = decoder_layers(model)
    _install(blocks)
    chosen = check_layers(layers, len(blocks)) if layers else default_layers(len(blocks))
    diffs = []
    for prompt, positive, negative in pairs:
        pos = _activations(model, blocks, chosen, *_texts(tokenizer, prompt, positive))
        neg = _activations(model, blocks, chosen, *_texts(tokenizer, prompt, negative))
        diffs.append(pos - neg)
    stacked = torch.stack(diffs)  # (pairs, layers, hidden)
    mean = stacked.mean(dim=0)
    directions: dict[int, torch.Tensor] = {}
    for k, layer in enumerate(chosen):
        if method == "mean_diff":
            directions[layer] = mean[k].contiguous()
            continue
        _, _, vh = torch.linalg.svd(stacked[:, k, :], full_matrices=False)
        component = vh[0]
        projection = torch.dot(mean[k], component)
        directions[layer] = (component * projection).contiguous()  # sign and length from the mean difference
    return SteeringVector(directions, hidden_size(model), len(blocks), base_model, method)


__all__ = [
    "SteeringVector", "check_fits", "compute_vector", "decoder_layers", "default_layers", "from_gguf",
    "from_safetensors", "steered", "to_gguf", "to_safetensors",
]  # fmt: skip
