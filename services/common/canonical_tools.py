"""The canonical tool and its check: one definition for the ingest service (tools imported from
a document) and the teacher service (a tool the teacher wrote from a plain-language description).

A canonical tool has:

- ``name`` matching ``^[a-zA-Z0-9_-]{1,64}$``: other characters become ``_`` and it is
  cut to 64 (warning ``name_sanitised``);
- a ``description`` (required);
- ``parameters``: a JSON Schema 2020-12 object schema with a type on every property, made
  and checked by ``tool_schemas.SchemaChecker`` (its docstring has the rules).

``plain`` copies a loaded tree within a node budget and a depth limit; values JSON cannot
carry (YAML binary, NaN) are ``not_json_value``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import date
from typing import Any

from services.common.reports import Report
from services.common.tool_schemas import OPENAPI, Draft, Refused, SchemaChecker


@dataclass(frozen=True)
class Limits:
    """The bounds a tool document (and one tool's schema) is read within."""

    max_document_bytes: int = 4 * 1024 * 1024
    max_nodes: int = 500_000  # values in the loaded document, YAML aliases expanded
    max_depth: int = 100  # nesting of the loaded document
    max_schema_depth: int = 64  # nesting of one tool's parameters, $refs inlined
    max_schema_nodes: int = 250_000  # schema values of the whole document, $refs inlined
    max_schema_checks: int = 8_000  # distinct schema objects given to the meta-schema, the whole document
    max_tools: int = 1000


LIMITS = Limits()
NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True)
class CanonicalTool:
    """A tool as the platform keeps it: a safe name, a description, and a JSON Schema object of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]
    source: int


def plain(value: Any, limits: Limits) -> Any:
    """A fresh copy of the loaded tree (str keys, dates as ISO text), within the node and depth limits."""
    budget = [limits.max_nodes]

    def key(k: Any, where: str) -> str:
        if isinstance(k, str):
            return k
        if isinstance(k, bool) or k is None:
            return json.dumps(k)
        if isinstance(k, int | float | date):
            return k.isoformat() if isinstance(k, date) else str(k)
        raise Refused("not_json_value", f"{where or '/'} has a key of type {type(k).__name__}", "use text keys")

    def copy(v: Any, depth: int, where: str) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise Refused("document_too_complex", f"the document holds over {limits.max_nodes} values (YAML "
                          "aliases expanded)", "write fewer tools per document, without repeated aliases")  # fmt: skip
        if depth > limits.max_depth:
            raise Refused("nested_too_deeply", f"{where} nests over {limits.max_depth} levels", "flatten the document")
        if isinstance(v, dict):
            return {(k2 := key(k, where)): copy(x, depth + 1, f"{where}/{k2}") for k, x in v.items()}
        if isinstance(v, list):
            return [copy(x, depth + 1, f"{where}/{i}") for i, x in enumerate(v)]
        if v is None or isinstance(v, bool | int | str) or (isinstance(v, float) and math.isfinite(v)):
            return v
        if isinstance(v, date):
            return v.isoformat()
        raise Refused("not_json_value", f"{where or '/'} holds a value JSON cannot carry ({v!r:.40})",
                      "use JSON values only: strings, finite numbers, booleans, null, lists and objects")  # fmt: skip

    return copy(value, 0, "")


def canonical(checker: SchemaChecker, draft: Draft) -> CanonicalTool | None:
    checker.entry = draft.entry
    before = checker.report.violation_count
    name = checked_name(checker, draft.name, draft.name_from_path)
    description = draft.description
    if not isinstance(description, str) or not description.strip():
        hint = "add a summary or description to the operation" if draft.source == OPENAPI else \
            "add a description saying what the tool does and when to call it"  # fmt: skip
        checker.add("description", "missing_description", "the tool has no description", hint)
    parameters = checker.parameters(draft.parameters, draft.root)
    if checker.report.violation_count > before or name is None or parameters is None:
        return None
    return CanonicalTool(name, description.strip(), parameters, draft.source)


def checked_name(checker: SchemaChecker, raw: Any, from_path: bool) -> str | None:
    if not isinstance(raw, str) or not raw.strip():
        checker.add("name", "missing_name", "the tool has no name", "add a name (letters, digits, _ and -)")
        return None
    clean = re.sub(r"[^a-zA-Z0-9_-]", "_", raw.strip())
    if from_path:
        clean = re.sub(r"_+", "_", clean).strip("_") or "operation"
        checker.warn("name", "name_from_path", f"the operation has no operationId; named {clean[:64]!r}",
                     "give the operation an operationId to choose its name")  # fmt: skip
    elif clean[:64] != raw:
        checker.warn("name", "name_sanitised", f"name {raw!r} became {clean[:64]!r}",
                     "use only letters, digits, _ and -, at most 64")  # fmt: skip
    return clean[:64]


def check_tool(
    name: str, description: str, parameters: Any, source: int, limits: Limits = LIMITS
) -> tuple[CanonicalTool | None, Report]:
    """One tool from elsewhere (the teacher's reading of a plain-language tool), under the same checks."""
    report = Report(rows=1)
    label = name if isinstance(name, str) and name.strip() else "tool"
    try:
        schema = plain(parameters, limits)
        tool = canonical(
            SchemaChecker(report, limits.max_schema_depth, limits.max_schema_nodes, limits.max_schema_checks),
            Draft(label, name, description, schema, schema, source),
        )
    except Refused as refused:
        report.add(0, "parameters", refused.code, refused.message, refused.hint, entry=label)
        return None, report
    return tool, report
