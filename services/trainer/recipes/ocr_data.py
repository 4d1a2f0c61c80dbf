"""The OCR recipe's rows: images out of their archives in S3, answers as tokens, batches for the trainer.

- **Rows** (``read_split``): a split is ingest's canonical OCR JSONL, one image a row: ``{"image": the name of
  the file inside the ZIP, "text", "prompt" ("" for none), "width", "height", "format", "archive_key": the S3
  key of the ZIP, "sha256": of the image's bytes (rows stored before it was kept have none)}``. Each distinct
  archive is downloaded once into the job's scratch directory and the named entries are read with zipfile
  (ingest validated them: names, sizes, formats); an entry whose bytes no longer match the row's sha256 is an
  ``invalid_dataset`` failure. A row keeps its image's encoded bytes (decoded when a batch or a reading needs
  it: a split of large pages does not sit in memory as pixels).
- **Answers** (``with_answers``): a row's prompt is its own or the model's default; its answer is the
  tokens of its text and the end-of-sequence token. Rows whose answer is over ``sft.max_seq_length`` tokens
  are left out and counted (the image's tokens do not count: the processor fixes them per image).
- **Batches** (``Collator``): each row's image decoded (``ocr_reading.load_image``) and put through the
  processor with its prompt exactly as reading does (``ocr_reading.prompt_inputs``, in the run's resolution
  mode), the answer's tokens appended; labels are the answer's tokens only (the prompt and the image's tokens
  are -100); padded on the right; the image tensors of the rows concatenated.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from services.common import ocr_reading
from services.common.objects import ObjectStore
from services.trainer.recipes import failures

# Ingest's bound on an OCR image (services/ingest/ocr.py, OcrLimits.max_pixels): every stored image is within it.
MAX_PIXELS = 100_000_000


def split_lines(store: ObjectStore, key: str, name: str) -> Iterator[tuple[str, str]]:
    """(where, line) for each non-blank line of the split at ``key``."""
    text = store.get_bytes(key).decode("utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield f"{name} split line {number}", line


def read_split(store: ObjectStore, key: str, name: str, workdir: Path) -> list[dict[str, Any]]:
    """The split's rows ``{"image", "text", "prompt", "data"}`` (module docstring), in order."""
    archives: dict[str, zipfile.ZipFile] = {}
    rows = []
    try:
        for where, line in split_lines(store, key, name):
            try:
                raw = json.loads(line)
                image, text, archive_key = raw["image"], raw["text"], raw["archive_key"]
            except (ValueError, KeyError, TypeError):
                raise failures.invalid_dataset(f"{where}: not an ocr row (image, text, archive_key)") from None
            prompt = raw.get("prompt") or ""
            if not (isinstance(image, str) and isinstance(text, str) and isinstance(prompt, str)
                    and isinstance(archive_key, str) and archive_key):  # fmt: skip
                raise failures.invalid_dataset(f"{where}: the row needs an image name, a text and its archive's key")
            if archive_key not in archives:
                archives[archive_key] = open_archive(store, archive_key, workdir / "archives" / f"{len(archives)}.zip")
            try:
                data = archives[archive_key].read(image)
            except KeyError:
                raise failures.invalid_dataset(
                    f"{where}: the dataset's archive has no {image!r} any more: upload the dataset again"
                ) from None
            digest = raw.get("sha256")
            if isinstance(digest, str) and digest and hashlib.sha256(data).hexdigest() != digest:
                raise failures.invalid_dataset(
                    f"{where}: the bytes of {image!r} are not the ones ingest checked: upload the dataset again"
                )
            rows.append({"image": image, "text": text, "prompt": prompt, "data": data})
    finally:
        for archive in archives.values():
            archive.close()
    return rows


def open_archive(store: ObjectStore, key: str, path: Path) -> zipfile.ZipFile:
    """The image ZIP at ``key``, downloaded to ``path`` and opened."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        store.client.fget_object(store.bucket, key, str(path))
        return zipfile.ZipFile(path)
    except Exception as err:  # minio's errors for an archive that is gone, zipfile's for one that is not a ZIP
        raise failures.invalid_dataset(
            f"cannot read the dataset's image archive ({type(err).__name__}: {err}): upload the dataset again"
        ) from None


def answer_ids(tokenizer: Any, text: str) -> list[int]:
    """A row's answer: its text's tokens and the end of sequence."""
    return [*tokenizer(text, add_special_tokens=False)["input_ids"], int(tokenizer.eos_token_id)]


def with_answers(
    rows: list[dict[str, Any]], tokenizer: Any, default_prompt: str, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """The rows with their ``prompt`` (their own, else ``default_prompt``) and ``answer`` tokens, those whose
    answer is over ``limit`` tokens left out; and how many were."""
    kept, too_long = [], 0
    for row in rows:
        answer = answer_ids(tokenizer, row["text"])
        if len(answer) > limit:
            too_long += 1
            continue
        kept.append({**row, "prompt": row["prompt"] or default_prompt, "answer": answer})
    return kept, too_long


def images(rows: Sequence[dict[str, Any]]) -> list[Any]:
    """The rows' images, decoded."""
    return [ocr_reading.load_image(row["data"], MAX_PIXELS) for row in rows]


class Collator:
    """Batches of rows for the trainer (module docstring)."""

    def __init__(self, processor: Any, image_mode: str = "") -> None:
        tokenizer = processor.tokenizer
        self.processor, self.image_mode = processor, image_mode
        self.pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        parts = []
        for row, image in zip(rows, images(rows), strict=True):
            batch = ocr_reading.prompt_inputs(self.processor, [image], [row["prompt"]], self.image_mode)
            parts.append((batch, batch["input_ids"].shape[1], row["answer"]))
        width = max(length + len(answer) for _, length, answer in parts)
        ids = torch.full((len(parts), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(parts), width), dtype=torch.long)
        labels = torch.full((len(parts), width), -100, dtype=torch.long)
        per_token: dict[str, Any] = {}
        stacked: dict[str, list[Any]] = {}
        for n, (batch, length, answer) in enumerate(parts):
            ids[n, :length] = batch["input_ids"][0]
            ids[n, length : length + len(answer)] = torch.tensor(answer)
            mask[n, : length + len(answer)] = 1
            labels[n, length : length + len(answer)] = torch.tensor(answer)
            for key, value in batch.items():
                if key in ("input_ids", "attention_mask") or not hasattr(value, "shape"):
                    continue
                if value.dim() >= 2 and value.shape[0] == 1 and value.shape[1] == length:  # a value per token
                    per_token.setdefault(key, torch.zeros((len(parts), width), dtype=value.dtype))[n, :length] = value[
                        0
                    ]
                else:  # the image's tensors (pixels, tile counts, grids): one image a row, concatenated
                    stacked.setdefault(key, []).append(value)
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels, **per_token}
        return out | {key: torch.cat(values) for key, values in stacked.items()}
