"""Tool calls, checked against tool schemas: parsing, rendering, checks, comparison.

Pure functions, no I/O. The teacher verifies trajectories with them, ingest checks
uploaded tool-call datasets, the trainer renders SFT targets and scores GRPO
completions, and evaluation reports rates; so "a valid call" means one thing everywhere.

**Output format** (Hermes/Qwen style): zero or more blocks, text allowed around them::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

``render_call`` writes a block as Qwen2.5's chat template does (``json.dumps`` with
``", "``/``": "`` separators, keys in the order given, non-ASCII kept), except that
``</`` and ``<tool_call>`` inside its strings are written ``<\\/`` and
``\\u003ctool_call>``, so an argument holding the tags still round-trips.
``parse_output`` reads blocks back; ``arguments`` may also be JSON text (the OpenAI
style) and is decoded; a block without ``arguments`` is a call with none. Its error
codes: ``output_too_long`` (over ``MAX_OUTPUT_CHARS``), ``unclosed_tool_call``,
``unopened_tool_call`` (a closing tag with no opening one), ``invalid_json``,
``nested_too_deeply`` (over ``MAX_DEPTH`` levels), ``not_an_object``, ``missing_name``,
``arguments_not_object``. It never raises, whatever the text.

**Checks** (``check_call``): ``unknown_tool``, ``arguments_not_object``,
``nested_too_deeply``, ``missing_required:<path>``, ``wrong_type:<path>``,
``not_in_enum:<path>`` (enum and const), ``unknown_property:<path>``,
``schema_violation:<path>`` (any other keyword), ``invalid_tool_schema``. Paths are
inside the arguments (``location.city``, ``days[0]``; ``$`` is the arguments object).
The validator is jsonschema's ``Draft202012Validator`` on the tool's ``parameters``,
made strict first: every object schema that lists ``properties`` and says nothing of
other properties refuses them (``additionalProperties: false``), except where it is
read together with another schema (an ``allOf`` branch, ``then``/``else``, a
``dependentSchemas`` entry, the branches of a schema that also lists properties)
and under ``not`` and ``if``.
``format`` is an annotation, as 2020-12 says, not asserted.

**Comparison** (``normalise``, ``arguments_match``): object keys sorted, strings
stripped, inner whitespace collapsed to one space and case-folded, floats with an
integer value made ints, lists in their order; ``true`` is not ``1``.

GRPO rewards and eval rates built on these are the trainer's (``services/trainer/recipes/tool_rewards.py``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MAX_OUTPUT_CHARS = 1_000_000
MAX_DEPTH = 64
_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
_VALIDATORS: dict[bytes, Draft202012Validator] = {}
_BY_ID: dict[int, tuple[Any, Draft202012Validator]] = {}
_MAX_VALIDATORS = 1024
# Keywords that let an object hold properties its "properties" do not list.
_OPEN_ENDED = frozenset({"additionalProperties", "patternProperties", "unevaluatedProperties", "allOf", "anyOf",
                         "oneOf", "$ref", "$dynamicRef", "if", "then", "else", "dependentSchemas"})  # fmt: skip


@dataclass(frozen=True)
class Call:
    name: str
    arguments: Any  # parsed JSON; a dict when well formed


@dataclass(frozen=True)
class Parsed:
    calls: list[Call] = field(default_factory=list)
    text: str = ""  # the pieces of text between call blocks, each stripped, one per line
    error: str = ""  # "" or the first problem's code

    @property
    def ok(self) -> bool:
        return not self.error


# -- reading and writing calls -----------------------------------------------------------------


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether lists and objects in ``value`` nest over ``limit`` levels (a flat object is 1), without recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if type(item) is dict else item if type(item) is list else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if type(child) is dict or type(child) is list)
    return False


def load_json(text: str | bytes) -> tuple[Any, str]:
    """(value, "") or (None, "invalid_json" / "nested_too_deeply"), in bounded time and stack."""
    try:
        value = orjson.loads(text)
    except ValueError as err:  # orjson.JSONDecodeError, also for surrogates and NaN
        return None, "nested_too_deeply" if "depth" in str(err) else "invalid_json"
    if too_deep(value):
        return None, "nested_too_deeply"
    return value, ""


def decode_arguments(arguments: Any) -> tuple[Any, str]:
    """Arguments as given (an object) or as JSON text (the OpenAI style): (object, "") or (None, code)."""
    if isinstance(arguments, str):
        arguments, error = load_json(arguments)
        if error:
            return None, error
    if type(arguments) is not dict:
        return None, "arguments_not_object"
    if too_deep(arguments):
        return None, "nested_too_deeply"
    return arguments, ""


def _block(body: str) -> tuple[Call | None, str]:
    value, error = load_json(body.strip())
    if error:
        return None, error
    if type(value) is not dict:
        return None, "not_an_object"
    name = value.get("name")
    if not isinstance(name, str) or not name.strip():
        return None, "missing_name"
    arguments, error = decode_arguments(value.get("arguments", {}))
    if error:
        return None, error
    return Call(name.strip(), arguments), ""


def parse_output(text: str) -> Parsed:
    """The calls in a model's output, the text around them, and the first problem (module docstring)."""
    if not isinstance(text, str):
        return Parsed(error="invalid_json")
    if len(text) > MAX_OUTPUT_CHARS:
        return Parsed(error="output_too_long")
    head, *blocks = text.split(OPEN)
    calls: list[Call] = []
    rest = [head]
    errors = ["unopened_tool_call"] if CLOSE in head else []
    for block in blocks:
        body, closed, after = block.partition(CLOSE)
        if not closed:
            errors.append("unclosed_tool_call")
            continue
        call, error = _block(body)
        if call is not None:
            calls.append(call)
        if error:
            errors.append(error)
        if CLOSE in after:
            errors.append("unopened_tool_call")
        rest.append(after)
    text = "\n".join(piece.strip() for piece in rest if piece and not piece.isspace())
    return Parsed(calls, text, errors[0] if errors else "")


def _json(value: Any) -> str:
    """JSON text as the chat template writes it, with the call tags inside strings escaped."""
    return json.dumps(value, ensure_ascii=False).replace("</", "<\\/").replace(OPEN, "\\u003ctool_call>")


def arguments_text(arguments: Any) -> str:
    """Arguments as JSON text, as ``render_call`` writes them (and canonical datasets store them)."""
    return _json(arguments)


def render_call(name: str, arguments: Any) -> str:
    """One call block: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``."""
    return f'{OPEN}\n{{"name": {_json(name)}, "arguments": {_json(arguments)}}}\n{CLOSE}'


def render_calls(calls: Iterable[Call]) -> str:
    """Several calls, one block after another on their own lines."""
    return "\n".join(render_call(call.name, call.arguments) for call in calls)


# -- checks against the tool's schema ----------------------------------------------------------


def tools_by_name(tools: Any) -> dict[str, dict[str, Any]]:
    """Tools by name from a list (or its JSON text) of canonical tools or OpenAI ``{"type": "function", ...}`` ones."""
    if isinstance(tools, str | bytes):
        return dict(_tools_from_text(tools))
    out: dict[str, dict[str, Any]] = {}
    for tool in tools or []:
        if isinstance(tool, Mapping) and isinstance(tool.get("function"), Mapping):
            tool = tool["function"]
        if isinstance(tool, Mapping) and isinstance(tool.get("name"), str):
            out[tool["name"]] = dict(tool)
    return out


@lru_cache(maxsize=256)
def _tools_from_text(text: str | bytes) -> tuple[tuple[str, dict[str, Any]], ...]:
    value, error = load_json(text)
    return tuple(tools_by_name(value if not error and isinstance(value, list) else []).items())


def _strict(schema: Any, combined: bool = False) -> Any:
    """A copy of ``schema`` whose object schemas refuse properties they do not list (module docstring).

    ``combined``: the schema is read together with its parent's (an ``allOf`` branch, ``then``...),
    so it cannot know every property and stays open; so do a schema's own properties when it
    mixes ``properties`` with a composition."""
    if not isinstance(schema, dict):
        return schema
    mixed = "properties" in schema and not _OPEN_ENDED.isdisjoint(schema)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "$defs", "definitions") and isinstance(value, dict):
            out[key] = {name: _strict(sub) for name, sub in value.items()}
        elif key == "dependentSchemas" and isinstance(value, dict):
            out[key] = {name: _strict(sub, combined=True) for name, sub in value.items()}
        elif key in ("anyOf", "oneOf", "allOf") and isinstance(value, list):
            out[key] = [_strict(sub, combined=mixed or key == "allOf") for sub in value]
        elif key == "prefixItems" and isinstance(value, list):
            out[key] = [_strict(sub) for sub in value]
        elif key in ("items", "additionalProperties", "contains"):
            out[key] = _strict(value)
        elif key in ("then", "else"):
            out[key] = _strict(value, combined=True)
        else:
            out[key] = value  # "not" and "if" stay as written: strictness there would change their meaning
    if "properties" in out and not combined and not mixed:
        out["additionalProperties"] = False
    return out


def _validator(schema: Any) -> Draft202012Validator:
    """The strict validator of ``schema``, cached by its canonical JSON, and by identity while the cache holds
    the schema (schemas are never changed in place)."""
    held = _BY_ID.get(id(schema))
    if held is not None and held[0] is schema:
        return held[1]
    try:
        key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # an integer past 64 bits
        key = json.dumps(schema, sort_keys=True).encode()
    validator = _VALIDATORS.get(key)
    if validator is None:
        if len(_VALIDATORS) >= _MAX_VALIDATORS:
            _VALIDATORS.clear()
            _BY_ID.clear()
        validator = _VALIDATORS[key] = Draft202012Validator(_strict(schema))
    if len(_BY_ID) < _MAX_VALIDATORS:
        _BY_ID[id(schema)] = (schema, validator)
    return validator


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "$"


def _reasons(error: ValidationError) -> list[str]:
    path, kind, instance = list(error.absolute_path), error.validator, error.instance
    if kind == "required" and isinstance(instance, dict) and isinstance(error.validator_value, list):
        return [f"missing_required:{_path([*path, name])}" for name in error.validator_value if name not in instance]
    if kind == "type":
        return [f"wrong_type:{_path(path)}"]
    if kind in ("enum", "const"):
        return [f"not_in_enum:{_path(path)}"]
    if kind in ("additionalProperties", "unevaluatedProperties") and isinstance(instance, dict):
        schema = error.schema if isinstance(error.schema, dict) else {}
        known, patterns = schema.get("properties", {}), schema.get("patternProperties", {})
        extra = [k for k in instance if k not in known and not any(re.search(p, k) for p in patterns)]
        return [f"unknown_property:{_path([*path, name])}" for name in extra] or [f"unknown_property:{_path(path)}"]
    return [f"schema_violation:{_path(path)}"]


def check_call(call: Call, tools: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Why ``call`` is wrong for ``tools`` (name -> canonical tool), as reason codes; [] when it is right."""
    tool = tools.get(call.name)
    if tool is None:
        return ["unknown_tool"]
    if type(call.arguments) is not dict:
        return ["arguments_not_object"]
    if too_deep(call.arguments):
        return ["nested_too_deeply"]
    reasons: list[str] = []
    try:
        for error in _validator(tool.get("parameters") or _EMPTY_SCHEMA).iter_errors(call.arguments):
            for reason in _reasons(error):
                if reason not in reasons:
                    reasons.append(reason)
    except Exception:  # a schema jsonschema cannot use (a bad pattern, a broken $ref): data, not our bug
        return ["invalid_tool_schema"]
    return reasons


# -- comparing arguments -----------------------------------------------------------------------


def normalise(value: Any) -> Any:
    """``value`` as compared (module docstring); for values nested up to ``MAX_DEPTH`` levels."""
    if isinstance(value, str):
        return " ".join(value.split()).casefold()
    if type(value) is float and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: normalise(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [normalise(item) for item in value]
    return value


def arguments_match(a: Any, b: Any) -> bool:
    """Whether two arguments are the same once normalised (booleans and numbers stay apart)."""
    if too_deep(a) or too_deep(b):
        return False
    return json.dumps(normalise(a), sort_keys=True) == json.dumps(normalise(b), sort_keys=True)


def matched(made: list[Call], wanted: list[Call], same: Any) -> int:
    """How many made calls pair one to one with wanted ones under ``same`` (an equivalence, so greedy is best)."""
    left, count = list(wanted), 0
    for call in made:
        for i, want in enumerate(left):
            if same(call, want):
                del left[i]
                count += 1
                break
    return count


def same_call(a: Call, b: Call) -> bool:
    return a.name == b.name and arguments_match(a.arguments, b.arguments)


def expected_calls(value: Any) -> list[Call]:
    """Wanted calls from a list (or its JSON text) of ``{"name", "arguments"}``; arguments may be JSON text."""
    if isinstance(value, str | bytes):
        return list(_expected_from_text(value))
    calls = []
    for item in value or []:
        if isinstance(item, Mapping) and isinstance(item.get("function"), Mapping):
            item = item["function"]
        if isinstance(item, Mapping) and isinstance(item.get("name"), str):
            arguments, error = decode_arguments(item.get("arguments", {}))
            calls.append(Call(item["name"], arguments if not error else item.get("arguments")))
    return calls


@lru_cache(maxsize=1024)
def _expected_from_text(text: str | bytes) -> tuple[Call, ...]:
    value, error = load_json(text)
    return tuple(expected_calls(value if not error and isinstance(value, list) else []))
