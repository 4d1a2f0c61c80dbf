"""Steering-vector files (docs/optimization.md, "Steering vectors").

- safetensors: one float32 tensor ``direction.<layer>`` of shape (hidden_size,) per decoder layer (0-based, the
  layer whose output it is added to), with string metadata ``format`` ("distillery-steering-vector"),
  ``hidden_size``, ``layer_count``, ``base_model`` and ``method``.
- GGUF, llama.cpp's control vector (what ``--control-vector`` loads and repeng's ``export_gguf`` writes):
  ``general.architecture`` = "controlvector", ``controlvector.model_hint`` (the model type, e.g. "llama"),
  ``controlvector.layer_count`` (the number of direction tensors), and float32 1-D tensors ``direction.<n>``
  where llama.cpp adds ``direction.<n>`` to the output of decoder block n (0-based, as here); n = 0 is not
  loadable there (llama.cpp refuses "invalid (zero) direction tensor layer index"), so a vector with layer 0
  is refused for GGUF export.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.common.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    import torch

FORMAT = "distillery-steering-vector"
SAFETENSORS, GGUF = "safetensors", "gguf"
GGUF_MAGIC = b"GGUF"
MAX_LAYERS = 1024


@dataclass(frozen=True)
class SteeringVector:
    directions: dict[int, torch.Tensor]  # decoder layer (0-based) -> (hidden_size,) float32 on CPU
    hidden_size: int
    layer_count: int
    base_model: str
    method: str  # "mean_diff" | "pca" | "imported"

    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)


def detect(data: bytes) -> str:
    """ "gguf" or "safetensors" from the file's first bytes; InvalidArgument for anything else."""
    if data[:4] == GGUF_MAGIC:
        return GGUF
    if len(data) > 8:
        header = int.from_bytes(data[:8], "little")
        if 0 < header < len(data) and data[8:9] == b"{":
            return SAFETENSORS
    raise InvalidArgument(
        "the file is neither safetensors nor GGUF: give a file written by `distillery vectors export` or a "
        "llama.cpp control vector (.gguf)",
        field="data",
    )


def to_safetensors(vector: SteeringVector) -> bytes:
    from safetensors.torch import save

    tensors = {f"direction.{layer}": d.detach().cpu().float().contiguous() for layer, d in vector.directions.items()}
    metadata = {
        "format": FORMAT, "hidden_size": str(vector.hidden_size), "layer_count": str(vector.layer_count),
        "base_model": vector.base_model, "method": vector.method,
    }  # fmt: skip
    return bytes(save(tensors, metadata=metadata))


def _layer_of(name: str) -> int:
    prefix, _, number = name.partition(".")
    if prefix != "direction" or not number.isdigit() or int(number) >= MAX_LAYERS:
        raise InvalidArgument(
            f"tensor {name!r} is not a direction: a vector file holds tensors named direction.<layer>", field="data"
        )
    return int(number)


def _vector(directions: dict[int, Any], layer_count: int, base_model: str, method: str) -> SteeringVector:
    if not directions:
        raise InvalidArgument("the file holds no direction tensors", field="data")
    sizes = {tuple(d.shape) for d in directions.values()}
    if len(sizes) != 1 or len(next(iter(sizes))) != 1:
        raise InvalidArgument(f"the direction tensors are not 1-D of one size (shapes {sorted(sizes)})", field="data")
    size = next(iter(sizes))[0]
    return SteeringVector(directions, int(size), max(layer_count, max(directions) + 1), base_model, method)


def from_safetensors(data: bytes, base_model: str) -> SteeringVector:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load

    try:
        tensors = load(data)
        with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
            f.write(data)
            f.flush()
            with safe_open(f.name, framework="pt") as opened:
                metadata = opened.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for a broken header
        raise InvalidArgument(f"the safetensors file cannot be read: {err}", field="data") from None
    directions = {_layer_of(name): t.to(torch.float32).contiguous() for name, t in tensors.items()}
    count = int(metadata["layer_count"]) if metadata.get("layer_count", "").isdigit() else 0
    method = metadata.get("method") or "imported"
    return _vector(directions, count, base_model, method)


def to_gguf(vector: SteeringVector, model_hint: str = "llama") -> bytes:
    import gguf

    if 0 in vector.directions:
        raise FailedPrecondition(
            "llama.cpp's control vectors cannot steer decoder layer 0 (it refuses direction.0): export a vector "
            "made without layer 0 (`distillery vectors create ... --layers 1-N`), or use --format safetensors",
            field="format",
        )
    fd, path = tempfile.mkstemp(suffix=".gguf")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(path, "controlvector")
        writer.add_string("controlvector.model_hint", model_hint)
        writer.add_uint32("controlvector.layer_count", len(vector.directions))
        for layer in sorted(vector.directions):
            writer.add_tensor(f"direction.{layer}", vector.directions[layer].detach().cpu().float().numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def from_gguf(data: bytes, base_model: str) -> SteeringVector:
    import gguf
    import numpy as np
    import torch

    fd, path = tempfile.mkstemp(suffix=".gguf")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            reader = gguf.GGUFReader(path)
        except Exception as err:  # the reader raises ValueError/struct errors for a broken file
            raise InvalidArgument(f"the GGUF file cannot be read: {err}", field="data") from None
        arch = reader.get_field("general.architecture")
        if arch is None or bytes(arch.parts[arch.data[0]]).decode() != "controlvector":
            raise InvalidArgument(
                'the GGUF file is not a control vector (general.architecture is not "controlvector")', field="data"
            )
        directions = {}
        for tensor in reader.tensors:
            if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
                raise InvalidArgument(f"tensor {tensor.name} is not float32", field="data")
            layer = _layer_of(tensor.name)
            directions[layer] = torch.from_numpy(np.array(tensor.data, dtype=np.float32).reshape(-1)).contiguous()
    finally:
        os.unlink(path)
    return _vector(directions, 0, base_model, "imported")
