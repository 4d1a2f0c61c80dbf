"""Canonical tool parameters: one JSON Schema 2020-12 object schema with a type on every property.

``SchemaChecker.parameters`` turns a tool's parameters schema, as found in a document,
into ``{"type": "object", "properties", "required", "additionalProperties", ...}``:

- ``additionalProperties`` is false unless the source sets it: a call with an argument
  the tool does not declare is wrong;
- local ``$ref``s (``#/components/...``, ``#/$defs/...``) are inlined, sibling keywords
  winning over the target's; a reference met again inside itself is ``recursive_ref``
  (not followed), one to another document ``external_ref``, one to nothing
  ``unresolved_ref``; the inlined schemas of a document stay within a value budget
  (``schema_too_large``) and a depth (``nested_too_deeply``);
- the OpenAPI dialect becomes 2020-12, whatever the source: ``nullable: true`` adds
  ``"null"`` to the type (and to an ``enum``), ``example`` becomes ``examples``, boolean
  ``exclusiveMinimum``/``exclusiveMaximum`` become numbers, a list ``items`` becomes
  ``prefixItems``; ``discriminator``, ``xml``, ``externalDocs``, ``$defs``/``definitions``
  (once inlined) and ``x-*`` keys are dropped;
- every property at any depth (nested objects, array items, additionalProperties) must
  say its ``type``, nothing is inferred (``untyped_property``): a union (``anyOf``/``oneOf``)
  whose branches all have a type gets their types as its own, an ``allOf`` whose typed
  branches agree gets that type; an array needs ``items``. Names in ``required`` must be
  properties (``unknown_required``). The top level must be an object schema
  (``parameters_not_object``);
- the result passes the 2020-12 meta-schema (``invalid_schema``), checked as
  ``Draft202012Validator.check_schema`` does, one schema object at a time with its
  subschemas left out (they are checked on their own), so that schema objects repeated
  in a document are checked once; a document with more than ``max_checks`` distinct
  ones is ``schema_too_large`` (the meta-schema check costs about 0.3 ms each).

Violations name the path inside the tool, e.g. ``parameters.properties.limit``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from distillery.ingest.v1 import ingest_pb2
from services.common.reports import Report

JSON_SCHEMA = ingest_pb2.TOOL_SOURCE_JSON_SCHEMA
OPENAPI = ingest_pb2.TOOL_SOURCE_OPENAPI
PLAIN_LANGUAGE = ingest_pb2.TOOL_SOURCE_PLAIN_LANGUAGE

SINGLE = ("items", "additionalProperties", "not", "contains", "if", "then", "else", "propertyNames",
          "unevaluatedItems", "unevaluatedProperties", "contentSchema")  # fmt: skip
LISTS = ("prefixItems", "anyOf", "oneOf", "allOf")
MAPS = ("properties", "patternProperties", "dependentSchemas")
_META = Draft202012Validator(Draft202012Validator.META_SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
DROPPED = {"$defs", "definitions", "$schema", "$id", "discriminator", "xml", "externalDocs", "nullable", "example"}


class Refused(Exception):
    """The whole document is refused with one violation."""

    def __init__(self, code: str, message: str, hint: str, line: int = 0) -> None:
        super().__init__(message)
        self.code, self.message, self.hint, self.line = code, message, hint, line


@dataclass
class Draft:
    """One tool as found in the document, before the checks."""

    entry: str  # the tool's own name, or a JSON pointer / "GET /path" to it
    name: Any
    description: Any
    parameters: Any
    root: Any  # what its local $refs point into
    source: int
    name_from_path: bool = False


class Broken(Exception):
    """A schema could not be inlined; its violation is in the report."""


def _pointer(root: Any, ref: str) -> Any:
    """What the local reference ``#/a/b`` points at, or None."""
    node = root
    for part in ref[1:].split("/")[1:] if ref != "#" else []:
        part = unquote(part).replace("~1", "/").replace("~0", "~")
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def _union(types: list[Any]) -> Any:
    flat: list[Any] = []
    for t in types:
        for one in t if isinstance(t, list) else [t]:
            if one not in flat:
                flat.append(one)
    return flat[0] if len(flat) == 1 else flat


def _listed(schema: dict[str, Any], key: str) -> list[Any]:
    found = schema.get(key)
    return found if isinstance(found, list) else []


def _types(schema: dict[str, Any]) -> list[Any]:
    found = schema.get("type")
    return found if isinstance(found, list) else [found]


@dataclass
class SchemaChecker:
    """Checks the schemas of one document, adding violations and warnings for ``entry`` to ``report``."""

    report: Report
    max_depth: int = 64  # nesting of one tool's parameters, $refs inlined
    budget: int = 250_000  # schema values left for the whole document, $refs inlined
    max_checks: int = 8_000  # distinct schema objects the meta-schema checks, the whole document
    entry: str = ""  # the tool the findings are about
    checked: set[str] = field(default_factory=set)  # schema objects found valid, as JSON

    def add(self, where: str, code: str, message: str, hint: str) -> None:
        self.report.add(0, where, code, message, hint, entry=self.entry)

    def warn(self, where: str, code: str, message: str, hint: str) -> None:
        self.report.warn(0, where, code, message, hint, entry=self.entry)

    def follow(self, node: dict[str, Any], root: Any, where: str, refs: tuple[str, ...]) -> Any:
        """``(target, refs)``: the ``$ref`` chain followed, siblings merged over the target; None if broken."""
        siblings: dict[str, Any] = {}
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            siblings = {**{k: v for k, v in node.items() if k != "$ref"}, **siblings}
            if not isinstance(ref, str) or not ref.startswith("#"):
                self.add(where, "external_ref", f"$ref {ref!r} points outside the document",
                         "copy the referenced schema into the document's components or $defs")  # fmt: skip
                return None
            if ref in refs:
                self.add(where, "recursive_ref", f"$ref {ref!r} refers to a schema inside itself",
                         "tool arguments must be finite: write the nesting out to a fixed depth")  # fmt: skip
                return None
            refs += (ref,)
            node = _pointer(root, ref)
            if not isinstance(node, dict):
                self.add(where, "unresolved_ref", f"$ref {ref!r} does not point at an object in the document",
                         "fix the reference or add the schema it names")  # fmt: skip
                return None
        return {**node, **siblings}, refs

    def walk(self, node: Any, root: Any, where: str, refs: tuple[str, ...], depth: int) -> Any:
        """``node`` with local $refs inlined and the OpenAPI dialect rewritten; raises Broken."""
        self.budget -= 1
        if self.budget < 0:
            message = "the schemas expand to too many values with their $refs inlined"
            raise Refused("schema_too_large", message, "reference fewer or smaller schemas")
        if depth > self.max_depth:
            self.add(where, "nested_too_deeply", f"the schema nests over {self.max_depth} levels",
                     "flatten the arguments")  # fmt: skip
            raise Broken
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            followed = self.follow(node, root, where, refs)
            if followed is None:
                raise Broken
            node, refs = followed
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in DROPPED or key.startswith("x-"):
                continue
            if key == "items" and isinstance(value, list):
                key = "prefixItems"
            inner = f"{where}.{key}"
            if key in SINGLE:
                out[key] = self.walk(value, root, inner, refs, depth + 1)
            elif key in LISTS and isinstance(value, list):
                out[key] = [self.walk(v, root, f"{inner}.{i}", refs, depth + 1) for i, v in enumerate(value)]
            elif key in MAPS and isinstance(value, dict):
                out[key] = {k: self.walk(v, root, f"{inner}.{k}", refs, depth + 1) for k, v in value.items()}
            else:
                if isinstance(value, dict | list):  # data values (enum, default) count too: $refs may repeat them
                    self.budget -= len(json.dumps(value)) // 16
                out[key] = value
        if node.get("nullable") is True and "type" in out:
            out["type"] = _union([out["type"], "null"])
            if isinstance(out.get("enum"), list) and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        if "example" in node and "examples" not in out:
            out["examples"] = [node["example"]]
        for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if isinstance(out.get(bound), bool) and out.pop(bound) and limit in out:
                out[bound] = out.pop(limit)
        return out

    def typed(self, schema: Any, where: str) -> None:
        """A property's schema: it must say its type; then everything below it."""
        if not isinstance(schema, dict) or not _fill_type(schema):
            self.add(where, "untyped_property", f"{where} has no type",
                     'add a "type" (string, number, integer, boolean, array, object or null)')  # fmt: skip
            return
        self.below(schema, where)

    def below(self, schema: dict[str, Any], where: str) -> None:
        properties = schema.get("properties")
        if isinstance(properties, dict):
            for name, sub in properties.items():
                self.typed(sub, f"{where}.properties.{name}")
            required = schema.get("required")
            for name in required if isinstance(required, list) else []:
                if name not in properties:
                    self.add(f"{where}.required", "unknown_required", f"{name!r} is required but not a property",
                             f"add a property {name!r} or remove it from required")  # fmt: skip
        if "array" in _types(schema) and "items" not in schema and "prefixItems" not in schema:
            self.add(f"{where}.items", "untyped_property", f"{where} is an array without items",
                     'add "items" with the type of the elements')  # fmt: skip
        if isinstance(schema.get("items"), dict | bool) and schema["items"] is not False:
            self.typed(schema["items"], f"{where}.items")
        for i, sub in enumerate(_listed(schema, "prefixItems")):
            self.typed(sub, f"{where}.prefixItems.{i}")
        if isinstance(schema.get("additionalProperties"), dict):
            self.typed(schema["additionalProperties"], f"{where}.additionalProperties")
        for key in ("anyOf", "oneOf", "allOf"):
            for i, branch in enumerate(_listed(schema, key)):
                if isinstance(branch, dict):
                    self.below(branch, f"{where}.{key}.{i}")

    def parameters(self, raw: Any, root: Any) -> dict[str, Any] | None:
        """The canonical parameters schema of one tool, or None after adding its violations."""
        if raw is None or raw == {}:
            raw = {"type": "object", "properties": {}}
        before = self.report.violation_count
        if not isinstance(raw, dict):
            self.add("parameters", "parameters_not_object", "parameters is not a JSON Schema object",
                     'give {"type": "object", "properties": {...}}')  # fmt: skip
            return None
        try:
            walked = self.walk(raw, root, "parameters", (), 0)
        except Broken:
            return None
        if walked.get("type") != "object":
            self.add("parameters", "parameters_not_object", f"parameters has type {walked.get('type')!r}, not object",
                     'give {"type": "object", "properties": {...}}; wrap other values in a property')  # fmt: skip
            return None
        first = {"type": "object", "properties": walked.get("properties", {}), "required": walked.get("required", [])}
        canonical = {**first, "additionalProperties": False, **{k: v for k, v in walked.items() if k not in first}}
        self.below(canonical, "parameters")
        if self.report.violation_count > before:
            return None
        return canonical if self.meta_valid(canonical, "parameters") else None

    def meta_valid(self, schema: Any, where: str) -> bool:
        """Whether ``schema`` passes the 2020-12 meta-schema; adds ``invalid_schema`` for the first error."""
        pending = [(schema, where)]
        while pending:
            node, at = pending.pop()
            shallow = node
            if isinstance(node, dict):
                shallow = {}
                for key, value in node.items():
                    if key in SINGLE:
                        pending.append((value, f"{at}.{key}"))
                    elif key in LISTS and isinstance(value, list) and value:
                        pending.extend((v, f"{at}.{key}.{i}") for i, v in enumerate(value))
                    elif key in MAPS and isinstance(value, dict):
                        pending.extend((v, f"{at}.{key}.{k}") for k, v in value.items())
                        shallow[key] = dict.fromkeys(value, True) if key == "patternProperties" else {}  # regex keys
                    else:
                        shallow[key] = value
            seen = json.dumps(shallow, sort_keys=True)
            if seen in self.checked:
                continue
            if len(self.checked) >= self.max_checks:
                message = f"the document's tools hold over {self.max_checks} distinct schemas"
                raise Refused("schema_too_large", message, "import fewer or smaller tools per document")
            error = best_match(_META.iter_errors(shallow))
            if error is not None:
                self.add(".".join([at, *(str(p) for p in error.path)]), "invalid_schema",
                         f"not a valid JSON Schema 2020-12: {error.message}",
                         "fix the schema keyword named in the message")  # fmt: skip
                return False
            self.checked.add(seen)
        return True


def _fill_type(schema: dict[str, Any]) -> bool:
    """True when the schema has a type, after giving a union or an allOf its branches' type."""
    if "type" in schema:
        return True
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches and all(isinstance(b, dict) and _fill_type(b) for b in branches):
            schema["type"] = _union([b["type"] for b in branches])
            return True
    branches = schema.get("allOf")
    typed = [b["type"] for b in branches if isinstance(b, dict) and _fill_type(b)] if isinstance(branches, list) else []
    if typed and all(t == typed[0] for t in typed):
        schema["type"] = typed[0]
        return True
    return False
