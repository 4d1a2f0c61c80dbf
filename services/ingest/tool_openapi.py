"""OpenAPI 3.0 and 3.1 documents: one tool per operation under ``paths``.

- Name: the ``operationId``, else method and path (``GET /pets/{id}`` -> ``get_pets_id``,
  warning ``name_from_path``). Description: the summary and the description, joined.
- Path, query and header parameters (path-level ones too, the operation's winning)
  become properties: path ones always required, the others when ``required: true``;
  the parameter's description and example go on its schema. Cookie parameters and
  the Accept, Content-Type and Authorization headers (which OpenAPI itself ignores)
  are skipped (warning ``parameter_skipped``); a parameter without a schema is
  ``untyped_property``, one without a name or ``in`` ``invalid_parameter``.
- The request body (JSON, else a form): the properties of its object schema (its
  ``allOf`` branches merged) join the parameters, its ``required`` kept; a body that is
  not an object with properties is one property ``body``. An operation whose body has
  no JSON or form media type is skipped (warning ``operation_skipped``).
- A parameter whose name is also another argument's is renamed ``<in>_<name>``
  (``path_id``; warning ``parameter_renamed``); body properties keep their names. Two
  arguments still sharing a name are ``name_clash``.
- ``$ref``s are local (``#/components/...``), for path items, parameters, bodies and
  schemas alike; ``webhooks`` and ``callbacks`` are not tools.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from services.common.tool_schemas import OPENAPI, Draft, Refused, SchemaChecker

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
IGNORED_HEADERS = {"accept", "content-type", "authorization"}


def drafts(doc: dict[str, Any], checker: SchemaChecker) -> list[Draft]:
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


def _operation(
    doc: dict[str, Any], path: str, method: str, item: dict[str, Any], checker: SchemaChecker
) -> Draft | None:
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
    return Draft(checker.entry, name, description, parameters, doc, OPENAPI, name_from_path=not named)


Argument = tuple[str, str, Any, bool]  # name, where it goes (path, query, header, body), schema, required


def _parameters(
    doc: dict[str, Any], item: dict[str, Any], operation: dict[str, Any], c: SchemaChecker
) -> list[Argument]:
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


def _body(doc: dict[str, Any], operation: dict[str, Any], c: SchemaChecker) -> list[Argument] | None:
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
    if top is None:
        return []
    parts = [top[0]]
    for branch in top[0]["allOf"] if isinstance(top[0].get("allOf"), list) else []:
        followed_branch = c.follow(branch, doc, "requestBody", ()) if isinstance(branch, dict) else None
        parts += [followed_branch[0]] if followed_branch else []
    properties: dict[str, Any] = {}
    required: set[str] = set()
    for part in parts:
        properties.update(part["properties"] if isinstance(part.get("properties"), dict) else {})
        required.update(r for r in part.get("required") or [] if isinstance(r, str))
    if properties:
        return [(name, "body", sub, name in required) for name, sub in properties.items()]
    return [("body", "body", schema, body.get("required") is True)]
