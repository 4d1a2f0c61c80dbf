"""Tool import: a document of tool definitions -> canonical typed tool schemas (pure functions).

``import_document`` reads one JSON or YAML document (told apart by content; the file
name only labels violations) in one of these shapes:

- OpenAI tools: ``{"type": "function", "function": {name, description, parameters}}``,
  a list of them, or ``{"tools": [...]}``; the legacy functions shape
  ``{name, description, parameters}``, a list, or ``{"functions": [...]}``;
- Anthropic tools: ``{name, description, input_schema}``, a list, or ``{"tools": [...]}``;
- bare JSON Schema: an object schema whose ``title`` is the name and ``description``
  the description, or a list of them;
- OpenAPI 3.0.x and 3.1.x: one tool per operation (``tool_openapi`` has the rules).

Tools described in plain language are turned into a schema by the teacher service
(``services.teacher.tool_descriptions``) and come in through ``check_tool``, which applies the same checks
(source ``TOOL_SOURCE_PLAIN_LANGUAGE``).

A canonical tool has:

- ``name`` matching ``^[a-zA-Z0-9_-]{1,64}$``: other characters become ``_`` and it is
  cut to 64 (warning ``name_sanitised``); a name taken earlier in the document gets
  ``_2``, ``_3``... (warning ``name_suffixed``);
- a ``description`` (required);
- ``parameters``: a JSON Schema 2020-12 object schema with a type on every property, made
  and checked by ``tool_schemas.SchemaChecker`` (its docstring has the rules).

A document with any violation imports nothing. Safety: documents over
``Limits.max_document_bytes`` are refused; YAML goes through the safe loader; the loaded
tree is copied within a node budget (YAML aliases expanded: an alias bomb is
``document_too_complex``) and a depth limit (``nested_too_deeply``); values JSON cannot
carry (YAML binary, NaN) are ``not_json_value``; ``$ref`` inlining has its own budget.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import yaml

from services.common.canonical_tools import (
    LIMITS,
    NAME,
    CanonicalTool,
    Limits,
    canonical,
    check_tool,
    plain,
)
from services.common.reports import Report
from services.common.tool_schemas import JSON_SCHEMA, OPENAPI, PLAIN_LANGUAGE, Draft, Refused, SchemaChecker
from services.ingest import tool_openapi

__all__ = [
    "JSON_SCHEMA",
    "LIMITS",
    "NAME",
    "OPENAPI",
    "PLAIN_LANGUAGE",
    "CanonicalTool",
    "Limits",
    "check_tool",
    "import_document",
]


SHAPES_HINT = (
    "give OpenAI tools or functions, Anthropic tools (input_schema), JSON Schema objects with a title and "
    "description, or an OpenAPI 3.0/3.1 document"
)
_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # yaml.safe_load's loader, in C when built


def load(document: bytes, limits: Limits = LIMITS) -> Any:
    """The document as plain JSON values, or Refused."""
    if len(document) > limits.max_document_bytes:
        raise Refused("document_too_large", f"the document is {len(document)} bytes, over the limit of "
                      f"{limits.max_document_bytes}", "import the tools in several smaller documents")  # fmt: skip
    try:
        text = document.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise Refused("invalid_encoding", f"byte {err.start} is not UTF-8", "save the document as UTF-8") from None
    if not text.strip():
        raise Refused("no_tools", "the document is empty", SHAPES_HINT)
    try:
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as json_err:
            try:
                loaded = yaml.load(text, Loader=_SAFE_LOADER)
            except yaml.YAMLError as err:
                if text.lstrip()[:1] in "{[":
                    raise Refused("invalid_json", f"not valid JSON: {json_err.msg}", "fix the JSON syntax",
                                  json_err.lineno) from None  # fmt: skip
                mark = getattr(err, "problem_mark", None)
                raise Refused("invalid_yaml", f"not valid YAML: {getattr(err, 'problem', None) or err}",
                              "fix the YAML syntax", mark.line + 1 if mark else 0) from None  # fmt: skip
    except RecursionError:
        raise Refused("nested_too_deeply", "the document nests too deeply to read", "flatten the document") from None
    return plain(loaded, limits)


def _function_draft(pointer: str, item: Any, checker: SchemaChecker) -> Draft | None:
    """One OpenAI, Anthropic or bare JSON Schema tool; None (after a violation) for anything else."""
    checker.entry = pointer
    if not isinstance(item, dict):
        checker.add("", "unrecognised_tool", f"{pointer} is a {type(item).__name__}, not a tool object", SHAPES_HINT)
        return None

    def draft(name: Any, description: Any, parameters: Any, root: Any) -> Draft:
        label = name if isinstance(name, str) and name.strip() else pointer
        return Draft(label, name, description, parameters, root, JSON_SCHEMA)

    if item.get("type") == "function" or "function" in item:
        function = item.get("function")
        if not isinstance(function, dict) or item.get("type") != "function":
            checker.add("function", "unrecognised_tool", "an OpenAI tool needs type 'function' and a function object",
                        '{"type": "function", "function": {"name", "description", "parameters"}}')  # fmt: skip
            return None
        parameters = function.get("parameters")
        return draft(function.get("name"), function.get("description"), parameters, parameters)
    if "input_schema" in item:
        return draft(item.get("name"), item.get("description"), item["input_schema"], item["input_schema"])
    if isinstance(item.get("title"), str) and (item.get("type") == "object" or "properties" in item):
        parameters = {k: v for k, v in item.items() if k not in ("title", "description")}
        return draft(item["title"], item.get("description"), parameters, item)
    if "type" in item:
        checker.add("type", "unsupported_tool_type", f"tools of type {item['type']!r} are built into their provider "
                    "and have no schema to import", "import function tools with a JSON Schema")  # fmt: skip
        return None
    if "name" in item:
        return draft(item["name"], item.get("description"), item.get("parameters"), item.get("parameters"))
    checker.add("", "unrecognised_tool", f"{pointer or '/'} is not a tool definition", SHAPES_HINT)
    return None


def _function_drafts(doc: Any, checker: SchemaChecker) -> list[Draft]:
    if isinstance(doc, dict) and not {"tools", "functions"} & doc.keys():
        if not isinstance(doc.get("title"), str) and "name" not in doc and "function" not in doc:
            raise Refused(
                "unrecognised_document", "the document is not a tool, a list of tools or OpenAPI", SHAPES_HINT
            )
        found = _function_draft("/", doc, checker)
        return [found] if found else []
    key = "tools" if isinstance(doc, dict) and "tools" in doc else "functions"
    items = doc.get(key) if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise Refused("unrecognised_document", f"{key} is not a list" if isinstance(doc, dict) else
                      "the document is not a tool, a list of tools or OpenAPI", SHAPES_HINT)  # fmt: skip
    prefix = f"/{key}" if isinstance(doc, dict) else ""
    drafts = [_function_draft(f"{prefix}/{i}", item, checker) for i, item in enumerate(items)]
    return [d for d in drafts if d is not None]


def _unique(tools: list[CanonicalTool], checker: SchemaChecker) -> list[CanonicalTool]:
    """The tools with names made unique within the document: the second ``a`` is ``a_2``."""
    taken: set[str] = set()
    out = []
    for tool in tools:
        name, n = tool.name, 1
        while name in taken:
            n += 1
            name = tool.name[: 64 - len(f"_{n}")] + f"_{n}"
        if name != tool.name:
            checker.entry = tool.name
            checker.warn("name", "name_suffixed", f"a tool named {tool.name!r} comes earlier in the document; "
                         f"this one is named {name!r}", "give each tool its own name")  # fmt: skip
            tool = replace(tool, name=name)
        taken.add(name)
        out.append(tool)
    return out


def import_document(document: bytes, filename: str = "", limits: Limits = LIMITS) -> tuple[list[CanonicalTool], Report]:
    """The document's tools in canonical form, or none and the violations (``report.counts``)."""
    report = Report()
    checker = SchemaChecker(report, limits.max_schema_depth, limits.max_schema_nodes, limits.max_schema_checks)
    try:
        doc = load(document, limits)
        is_openapi = isinstance(doc, dict) and ("openapi" in doc or "swagger" in doc)
        drafts = tool_openapi.drafts(doc, checker) if is_openapi else _function_drafts(doc, checker)
        if not drafts and not report.counts:
            raise Refused("no_tools", "the document holds no tools", SHAPES_HINT)
        if len(drafts) > limits.max_tools:
            raise Refused("too_many_tools", f"the document holds {len(drafts)} tools, over the limit of "
                          f"{limits.max_tools}", "import the tools the model needs, in several documents")  # fmt: skip
        report.rows = len(drafts)
        tools = [canonical(checker, draft) for draft in drafts]
    except Refused as refused:
        report.add(refused.line, "", refused.code, refused.message, refused.hint, entry=filename)
        return [], report
    if report.counts:
        return [], report
    return _unique([t for t in tools if t is not None], checker), report


def codes_of(path: str) -> list[str]:
    """The violation codes of importing the file at ``path`` (for the bounded hostile-input tests)."""
    with open(path, "rb") as f:
        return sorted(import_document(f.read(), path)[1].counts)
