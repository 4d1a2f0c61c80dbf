"""Tool import: a document of tool definitions -> canonical typed tool schemas (pure functions).

``import_document`` reads one JSON or YAML document (told apart by content; the file
name only labels violations) in one of these shapes:

- OpenAI tools: ``{"type": "function", "function": {name, description, parameters}}``,
  a list of them, or ``{"tools": [...]}``; the legacy functions shape
  ``{name, description, parameters}``, a list, or ``{"functions": [...]}``;
- Anthropic tools: ``{name, description, input_schema}``, a list, or ``{"tools": [...]}``;
- bare JSON Schema: an object schema whose ``title`` is the name and ``description``
  the description, or a list of them;
- OpenAPI 3.0.x and 3.1.x: one tool per operation (see below).

Tools described in plain language are turned into a schema by the teacher service
(a later issue) and come in through ``check_tool``, which applies the same checks
(source ``TOOL_SOURCE_PLAIN_LANGUAGE``).

A canonical tool has:

- ``name`` matching ``^[a-zA-Z0-9_-]{1,64}$``: other characters become ``_`` and it is
  cut to 64 (warning ``name_sanitised``); a name taken earlier in the document gets
  ``_2``, ``_3``... (warning ``name_suffixed``);
- a ``description`` (required);
- ``parameters``: ``{"type": "object", "properties", "required", "additionalProperties"}``;
  ``additionalProperties`` is false unless the source sets it: a call with an argument
  the tool does not declare is wrong. Local ``$ref``s (``#/components/...``, ``#/$defs/...``)
  are inlined, their sibling keywords winning; a reference inside itself is
  ``recursive_ref``. The OpenAPI dialect becomes 2020-12 (for every source):
  ``nullable: true`` adds ``"null"`` to the type (and to an ``enum``), ``example`` becomes
  ``examples``, boolean ``exclusiveMinimum``/``exclusiveMaximum`` become numbers, a list
  ``items`` becomes ``prefixItems``; ``discriminator``, ``xml``, ``externalDocs`` and ``x-*``
  are dropped. Every property, at any depth (array items, nested objects, additional
  properties), must say its ``type`` (nothing is inferred: ``untyped_property``); a union
  (``anyOf``/``oneOf``) whose branches all have one gets their types as its own, an
  ``allOf`` whose typed branches agree gets that type; an array needs ``items``.
  Names in ``required`` must be properties. The result must pass the 2020-12
  meta-schema (``invalid_schema``).

OpenAPI operations: the name is the ``operationId``, else method and path
(``GET /pets/{id}`` -> ``get_pets_id``, warning ``name_from_path``); the description is the
summary and the description, joined. Path, query and header parameters become
properties (path ones always required, the others when ``required: true``); cookie
parameters and the Accept, Content-Type and Authorization headers (which OpenAPI
itself ignores) are skipped with ``parameter_skipped``. The request body (JSON, else a
form) merges its object schema's properties in, its ``required`` kept; a body that is
not an object with properties is one property ``body``. An operation whose body has no
JSON or form media type is skipped (``operation_skipped``). A parameter whose name is
also another parameter's or a body property's is renamed ``<in>_<name>``
(``parameter_renamed``).

A document with any violation imports nothing. Safety: documents over
``Limits.max_document_bytes`` are refused; YAML goes through the safe loader; the loaded
tree is copied within a node budget (YAML aliases expanded: an alias bomb is
``document_too_complex``) and a depth limit, and ``$ref`` inlining has its own budget.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any
from urllib.parse import unquote

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from distillery.ingest.v1 import ingest_pb2
from services.ingest.reports import Report

JSON_SCHEMA = ingest_pb2.TOOL_SOURCE_JSON_SCHEMA
OPENAPI = ingest_pb2.TOOL_SOURCE_OPENAPI
PLAIN_LANGUAGE = ingest_pb2.TOOL_SOURCE_PLAIN_LANGUAGE


@dataclass(frozen=True)
class Limits:
    max_document_bytes: int = 4 * 1024 * 1024
    max_nodes: int = 500_000  # values in the loaded document, YAML aliases expanded
    max_depth: int = 100  # nesting of the loaded document
    max_schema_depth: int = 64  # nesting of one tool's parameters, $refs inlined
    max_schema_nodes: int = 500_000  # schema values of the whole document, $refs inlined
    max_tools: int = 1000


LIMITS = Limits()
NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
SHAPES_HINT = (
    "give OpenAI tools or functions, Anthropic tools (input_schema), JSON Schema objects with a title and "
    "description, or an OpenAPI 3.0/3.1 document"
)
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
IGNORED_HEADERS = {"accept", "content-type", "authorization"}
SINGLE = ("items", "additionalProperties", "not", "contains", "if", "then", "else", "propertyNames",
          "unevaluatedItems", "unevaluatedProperties", "contentSchema")  # fmt: skip
LISTS = ("prefixItems", "anyOf", "oneOf", "allOf")
MAPS = ("properties", "patternProperties", "dependentSchemas")
DROPPED = {"$defs", "definitions", "$schema", "$id", "discriminator", "xml", "externalDocs", "nullable", "example"}
_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # yaml.safe_load's loader, in C when built


@dataclass(frozen=True)
class CanonicalTool:
    name: str
    description: str
    parameters: dict[str, Any]
    source: int


class Refused(Exception):
    """The whole document is refused with one violation."""

    def __init__(self, code: str, message: str, hint: str, line: int = 0) -> None:
        super().__init__(message)
        self.code, self.message, self.hint, self.line = code, message, hint, line


@dataclass
class _Draft:
    """One tool as found in the document, before the checks."""

    entry: str  # the tool's own name, or a JSON pointer / "GET /path" to it
    name: Any
    description: Any
    parameters: Any
    root: Any  # what its local $refs point into
    source: int
    name_from_path: bool = False


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
    return _plain(loaded, limits)


def _plain(value: Any, limits: Limits) -> Any:
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


def _types(schema: dict[str, Any]) -> list[Any]:
    found = schema.get("type")
    return found if isinstance(found, list) else [found]


@dataclass
class _Checker:
    """Runs the checks of one document, adding violations and warnings to ``report``."""

    report: Report
    limits: Limits = LIMITS
    budget: int = field(init=False)
    entry: str = ""

    def __post_init__(self) -> None:
        self.budget = self.limits.max_schema_nodes

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
        """``node`` with local $refs inlined and the OpenAPI dialect rewritten; raises _Broken."""
        self.budget -= 1
        if self.budget < 0:
            raise Refused("schema_too_large", f"the schemas expand to over {self.limits.max_schema_nodes} values "
                          "with $refs inlined", "reference fewer or smaller schemas")  # fmt: skip
        if depth > self.limits.max_schema_depth:
            self.add(where, "nested_too_deeply", f"the schema nests over {self.limits.max_schema_depth} levels",
                     "flatten the arguments")  # fmt: skip
            raise _Broken
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            followed = self.follow(node, root, where, refs)
            if followed is None:
                raise _Broken
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
                self.budget -= len(json.dumps(value)) // 16  # data values count too: $refs may repeat them
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
        for i, sub in enumerate(schema.get("prefixItems") or []):
            self.typed(sub, f"{where}.prefixItems.{i}")
        if isinstance(schema.get("additionalProperties"), dict):
            self.typed(schema["additionalProperties"], f"{where}.additionalProperties")
        for key in ("anyOf", "oneOf", "allOf"):
            for i, branch in enumerate(schema.get(key) or []):
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
        except _Broken:
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
        try:
            Draft202012Validator.check_schema(canonical)
        except SchemaError as err:
            where = ".".join(["parameters", *(str(p) for p in err.path)])
            self.add(where, "invalid_schema", f"not a valid JSON Schema 2020-12: {err.message}",
                     "fix the schema keyword named in the message")  # fmt: skip
            return None
        return canonical

    def tool(self, draft: _Draft) -> CanonicalTool | None:
        self.entry = draft.entry
        before = self.report.violation_count
        name = self.name(draft.name, draft.name_from_path)
        description = draft.description
        if not isinstance(description, str) or not description.strip():
            hint = "add a summary or description to the operation" if draft.source == OPENAPI else \
                "add a description saying what the tool does and when to call it"  # fmt: skip
            self.add("description", "missing_description", "the tool has no description", hint)
        parameters = self.parameters(draft.parameters, draft.root)
        if self.report.violation_count > before or name is None or parameters is None:
            return None
        return CanonicalTool(name, description.strip(), parameters, draft.source)

    def name(self, raw: Any, from_path: bool) -> str | None:
        if not isinstance(raw, str) or not raw.strip():
            self.add("name", "missing_name", "the tool has no name", "add a name (letters, digits, _ and -)")
            return None
        clean = re.sub(r"[^a-zA-Z0-9_-]", "_", raw.strip())
        if from_path:
            clean = re.sub(r"_+", "_", clean).strip("_") or "operation"
            self.warn("name", "name_from_path", f"the operation has no operationId; named {clean[:64]!r}",
                      "give the operation an operationId to choose its name")  # fmt: skip
        elif clean != raw:
            self.warn("name", "name_sanitised", f"name {raw!r} became {clean[:64]!r}",
                      "use only letters, digits, _ and -, at most 64")  # fmt: skip
        return clean[:64]


class _Broken(Exception):
    """A schema could not be inlined; its violation is in the report."""


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


def _function_draft(pointer: str, item: Any, checker: _Checker) -> _Draft | None:
    """One OpenAI, Anthropic or bare JSON Schema tool; None (after a violation) for anything else."""
    checker.entry = pointer
    if not isinstance(item, dict):
        checker.add("", "unrecognised_tool", f"{pointer} is a {type(item).__name__}, not a tool object", SHAPES_HINT)
        return None

    def draft(name: Any, description: Any, parameters: Any, root: Any) -> _Draft:
        label = name if isinstance(name, str) and name.strip() else pointer
        return _Draft(label, name, description, parameters, root, JSON_SCHEMA)

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


def _function_drafts(doc: Any, checker: _Checker) -> list[_Draft]:
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


def _openapi_drafts(doc: dict[str, Any], checker: _Checker) -> list[_Draft]:
    version = doc.get("openapi", doc.get("swagger"))
    if not isinstance(version, str) or not re.match(r"^3\.[01]\.\d", version):
        hint = "convert the document to OpenAPI 3.0 or 3.1 (Swagger 2.0 converts with swagger2openapi)"
        raise Refused("unsupported_openapi_version", f"OpenAPI version {version!r} is not supported", hint)
    paths = doc.get("paths")
    if not isinstance(paths, dict):
        raise Refused("no_tools", "the document has no paths", "describe the operations under paths")
    drafts = []
    for path, item in paths.items():
        checker.entry = path
        followed = checker.follow(item, doc, "", ()) if isinstance(item, dict) else None
        resolved = followed[0] if followed else {}
        for method in METHODS:
            if isinstance(resolved.get(method), dict):
                drafts.append(_operation(doc, path, method, resolved, checker))
    return [d for d in drafts if d is not None]


def _operation(doc: dict[str, Any], path: str, method: str, item: dict[str, Any], checker: _Checker) -> _Draft | None:
    """One operation: its parameters and request body merged into one object schema."""
    operation = item[method]
    op_id = operation.get("operationId")
    named = isinstance(op_id, str) and op_id.strip() != ""
    checker.entry = op_id if named else f"{method.upper()} {path}"
    body = _body(doc, operation, checker)
    if body is None:
        return None
    entries = [*_parameters(doc, item, operation, checker), *body]
    counts = Counter(name for name, *_ in entries)
    properties: dict[str, Any] = {}
    required = []
    for name, location, schema, is_required in entries:
        key = name if counts[name] == 1 or location == "body" else f"{location}_{name}"
        if key != name:
            message = f"{location} parameter {name!r} shares its name with another argument; named {key!r}"
            checker.warn(f"parameters.properties.{key}", "parameter_renamed", message, "rename one to choose the names")
        if key in properties:
            checker.add(f"parameters.properties.{key}", "name_clash", f"two arguments are named {key!r}",
                        "rename one of the parameters or body properties")  # fmt: skip
            continue
        properties[key] = schema
        if is_required:
            required.append(key)
    texts = [operation[k].strip() for k in ("summary", "description") if isinstance(operation.get(k), str)]
    description = "\n\n".join(dict.fromkeys(t for t in texts if t))
    name = op_id if named else f"{method} {path}"
    parameters = {"type": "object", "properties": properties, "required": required}
    return _Draft(checker.entry, name, description, parameters, doc, OPENAPI, name_from_path=not named)


Argument = tuple[str, str, Any, bool]  # name, where it goes (path, query, header, body), schema, required


def _parameters(doc: dict[str, Any], item: dict[str, Any], operation: dict[str, Any], c: _Checker) -> list[Argument]:
    """Path-level then operation-level parameters (the latter win), skipping cookies and ignored headers."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for listed in (item.get("parameters"), operation.get("parameters")):
        for i, raw in enumerate(listed if isinstance(listed, list) else []):
            followed = c.follow(raw, doc, f"parameters[{i}]", ()) if isinstance(raw, dict) else None
            param = followed[0] if followed else {}
            if not isinstance(param.get("name"), str) or param.get("in") not in ("path", "query", "header", "cookie"):
                if followed or not isinstance(raw, dict):
                    c.add(f"parameters[{i}]", "invalid_parameter", "a parameter needs a name and an in (path, query, "
                          "header or cookie)", "fix the parameter object")  # fmt: skip
                continue
            found[(param["name"], param["in"])] = param
    arguments = []
    for (name, location), param in found.items():
        where = f"parameters.properties.{name}"
        if location == "cookie" or (location == "header" and name.lower() in IGNORED_HEADERS):
            hint = "nothing to do: cookies and the Accept, Content-Type and Authorization headers are not imported"
            c.warn(where, "parameter_skipped", f"{location} parameter {name!r} is not a tool argument", hint)
            continue
        schema = param.get("schema")
        content = param.get("content")
        if schema is None and isinstance(content, dict) and len(content) == 1:
            media = next(iter(content.values()))
            schema = media.get("schema") if isinstance(media, dict) else None
        if not isinstance(schema, dict):
            c.add(where, "untyped_property", f"{location} parameter {name!r} has no schema",
                  'add a "schema" with a "type"')  # fmt: skip
            continue
        extra: dict[str, Any] = {k: param[k] for k in ("description", "deprecated") if k in param}
        if "example" in param and "examples" not in schema:
            extra["examples"] = [param["example"]]
        arguments.append((name, location, {**schema, **extra}, location == "path" or param.get("required") is True))
    return arguments


def _body(doc: dict[str, Any], operation: dict[str, Any], c: _Checker) -> list[Argument] | None:
    """The request body's arguments; None when the operation is skipped for want of a JSON or form body."""
    raw = operation.get("requestBody")
    followed = c.follow(raw, doc, "requestBody", ()) if isinstance(raw, dict) else None
    if followed is None:
        return []
    body = followed[0]
    content = body.get("content") if isinstance(body.get("content"), dict) else {}
    types = {str(m).split(";")[0].strip().lower(): m for m in content}
    json_types = [m for t, m in types.items() if t == "application/json" or t.endswith("+json")]
    form_types = [m for t, m in types.items() if t in ("application/x-www-form-urlencoded", "multipart/form-data")]
    if not json_types + form_types:
        c.warn("requestBody", "operation_skipped", f"the request body has no JSON or form media type "
               f"({', '.join(types) or 'none'})", "give the body an application/json schema to import it")  # fmt: skip
        return None
    media = content[(json_types + form_types)[0]]
    schema = media.get("schema") if isinstance(media, dict) else None
    if not isinstance(schema, dict):
        c.add("parameters.properties.body", "untyped_property", "the request body has no schema",
              'add a "schema" with a "type" to the body')  # fmt: skip
        return []
    top = c.follow(schema, doc, "requestBody", ())
    parts = [top[0]] if top else []
    for branch in parts[0].get("allOf", []) if parts and isinstance(parts[0].get("allOf"), list) else []:
        followed_branch = c.follow(branch, doc, "requestBody", ()) if isinstance(branch, dict) else None
        parts += [followed_branch[0]] if followed_branch else []
    properties: dict[str, Any] = {}
    required: set[str] = set()
    for part in parts:
        properties.update(part["properties"] if isinstance(part.get("properties"), dict) else {})
        required.update(r for r in part.get("required", []) if isinstance(r, str))
    if properties:
        return [(name, "body", sub, name in required) for name, sub in properties.items()]
    return [("body", "body", schema, body.get("required") is True)]


def _unique(tools: list[CanonicalTool], checker: _Checker) -> list[CanonicalTool]:
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
    checker = _Checker(report, limits)
    try:
        doc = load(document, limits)
        is_openapi = isinstance(doc, dict) and ("openapi" in doc or "swagger" in doc)
        drafts = _openapi_drafts(doc, checker) if is_openapi else _function_drafts(doc, checker)
        if not drafts and not report.counts:
            raise Refused("no_tools", "the document holds no tools", SHAPES_HINT)
        if len(drafts) > limits.max_tools:
            raise Refused("too_many_tools", f"the document holds {len(drafts)} tools, over the limit of "
                          f"{limits.max_tools}", "import the tools the model needs, in several documents")  # fmt: skip
        report.rows = len(drafts)
        tools = [checker.tool(draft) for draft in drafts]
    except Refused as refused:
        report.add(refused.line, "", refused.code, refused.message, refused.hint, entry=filename)
        return [], report
    if report.counts:
        return [], report
    return _unique([t for t in tools if t is not None], checker), report


def check_tool(
    name: str, description: str, parameters: Any, source: int, limits: Limits = LIMITS
) -> tuple[CanonicalTool | None, Report]:
    """One tool from elsewhere (the teacher's reading of a plain-language tool), under the same checks."""
    report = Report(rows=1)
    label = name if isinstance(name, str) and name.strip() else "tool"
    try:
        schema = _plain(parameters, limits)
        tool = _Checker(report, limits).tool(_Draft(label, name, description, schema, schema, source))
    except Refused as refused:
        report.add(0, "parameters", refused.code, refused.message, refused.hint, entry=label)
        return None, report
    return tool, report


def codes_of(path: str) -> list[str]:
    """The violation codes of importing the file at ``path`` (for the bounded hostile-input tests)."""
    with open(path, "rb") as f:
        return sorted(import_document(f.read(), path)[1].counts)
