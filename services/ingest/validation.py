"""Checking a received upload by its kind: the report and, when valid, the canonical JSONL.

- pairs / inputs: one JSONL or CSV file (``text_rows``);
- asr: a manifest and .wav files (``asr``); each canonical row also names the S3
  key of its audio;
- ocr: a manifest and an image ZIP (``ocr``); each canonical row also names the
  S3 key of the ZIP it lies in;
- tool_calls: one JSONL file of OpenAI-format conversations with tools (``tool_rows``).

The limits of every kind come from the service's settings; an upload may lower
or raise the clip length and context size it is checked against. An upload of no
bytes at all is answered with one ``empty_file`` violation per file (``empty``)
before any kind is checked.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from distillery.ingest.v1 import ingest_pb2
from services.common.errors import InvalidArgument
from services.common.reports import Report
from services.ingest import asr, ocr, text_rows, tool_rows
from services.ingest.uploads import Plan, kind_name, local_path

CANONICAL = "canonical.jsonl"


@dataclass(frozen=True)
class Limits:
    text: text_rows.TextLimits = field(default_factory=text_rows.TextLimits)
    asr: asr.AsrLimits = field(default_factory=asr.AsrLimits)
    ocr: ocr.OcrLimits = field(default_factory=ocr.OcrLimits)


_EXPECTED: dict[int, str] = {
    ingest_pb2.DATASET_KIND_PAIRS: 'one row per line, {"input": ..., "output": ...} (or CSV input,output)',
    ingest_pb2.DATASET_KIND_INPUTS: 'one row per line, {"input": ...} (or CSV input)',
    ingest_pb2.DATASET_KIND_TOOL_CALLS: "one conversation with its tools per line (OpenAI fine-tuning format)",
    ingest_pb2.DATASET_KIND_ASR: "a manifest with one row per clip, and the .wav files it names",
    ingest_pb2.DATASET_KIND_OCR: "a manifest with one row per image, and the image ZIP it names",
}


def empty(plan: Plan) -> Report:
    """The report on an upload of no bytes at all: every file is named with ``empty_file``."""
    report = Report()
    what = _EXPECTED.get(plan.kind, "its rows")
    for spec in plan.files:
        report.add(
            0, "", "empty_file",
            f"{spec.name!r} is empty (0 bytes), so nothing was checked or stored: write the dataset's rows into it "
            "and send it again",
            f"a {kind_name(plan.kind)} dataset needs {what}; check that whatever wrote {spec.name!r} finished",
            entry=spec.name,
        )  # fmt: skip
    return report


def check(plan: Plan, folder: Path, limits: Limits, object_keys: dict[str, str] | None = None) -> Report:
    """Validate the upload in ``folder``; when valid, its canonical JSONL is ``folder/canonical.jsonl``.

    ``object_keys`` maps each file name to the S3 key it is stored under (canonical
    ASR and OCR rows point at them); None when nothing will be stored.
    """
    if plan.total == 0:
        return empty(plan)
    keys = object_keys or {}
    out = folder / CANONICAL
    if plan.kind in (ingest_pb2.DATASET_KIND_PAIRS, ingest_pb2.DATASET_KIND_INPUTS):
        text = limits.text
        if plan.context_tokens:
            text = dataclasses.replace(text, context_tokens=plan.context_tokens)
        with local_path(folder, 0).open("rb") as f, out.open("wb") as sink:
            return text_rows.validate_text(
                f, sink, inputs_only=plan.kind == ingest_pb2.DATASET_KIND_INPUTS,
                csv_format=plan.source_format == ingest_pb2.FILE_FORMAT_CSV, limits=text,
            )  # fmt: skip
    if plan.kind == ingest_pb2.DATASET_KIND_TOOL_CALLS:
        if plan.source_format == ingest_pb2.FILE_FORMAT_CSV:
            return tool_rows.csv_refused()
        tool_limits = tool_rows.ToolRowLimits(limits.text.max_line_bytes, limits.text.near_duplicate_rows)
        with local_path(folder, 0).open("rb") as f, out.open("wb") as sink:
            return tool_rows.validate_tool_calls(f, sink, tool_limits)
    names = [spec.name for spec in plan.files]
    manifest_path = local_path(folder, names.index(plan.manifest))
    others = {name: local_path(folder, i) for i, name in enumerate(names) if name != plan.manifest}
    if plan.kind == ingest_pb2.DATASET_KIND_ASR:
        audio_limits = limits.asr
        if plan.max_clip_seconds:
            audio_limits = dataclasses.replace(audio_limits, max_clip_seconds=plan.max_clip_seconds)
        with manifest_path.open("rb") as manifest:
            report, rows = asr.validate_asr(manifest, others, language=plan.language, limits=audio_limits)
        for row in rows:
            row["audio_key"] = keys.get(row["audio"], "")
    elif plan.kind == ingest_pb2.DATASET_KIND_OCR:
        [(archive_name, archive)] = others.items()
        with manifest_path.open("rb") as manifest:
            report, rows = ocr.validate_ocr(manifest, archive, limits=limits.ocr)
        for row in rows:
            row["archive_key"] = keys.get(archive_name, "")
    else:
        raise InvalidArgument(f"unknown dataset kind {plan.kind}", field="header.kind")
    if report.valid:
        with out.open("wb") as sink:
            for row in rows:
                sink.write(orjson.dumps(row) + b"\n")
    return report
