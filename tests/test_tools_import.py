"""Tool import: every accepted shape, every violation code, the active tool list in PostgreSQL, the CLI."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml
from bounded import run_bounded
from click.testing import CliRunner
from test_tracing_and_cli import cli_env

from distillery.cli.main import cli
from services.common import db
from services.common.errors import InvalidArgument, NotFound
from services.ingest import tool_list, tools
from services.ingest.tools import JSON_SCHEMA, NAME, OPENAPI, PLAIN_LANGUAGE, CanonicalTool, Limits

EXAMPLES = Path(__file__).parent.parent / "examples" / "tools"
MIGRATIONS = Path(tools.__file__).parent / "migrations"  # as the ingest server applies them
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "array", "items": {"type": "integer"}}},
    "required": ["city"],
}
CANONICAL_WEATHER = {**WEATHER, "additionalProperties": False}


def imported(document: Any, filename: str = "tools.json") -> tuple[list[CanonicalTool], tools.Report]:
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    return tools.import_document(data, filename)


def ok(document: Any, filename: str = "tools.json") -> list[CanonicalTool]:
    found, report = imported(document, filename)
    assert report.violations == [] and report.valid, report.violations
    assert all(NAME.match(t.name) for t in found)
    return found


def violations(document: Any, limits: Limits = tools.LIMITS) -> list[tuple[str, str, str]]:
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    found, report = tools.import_document(data, "doc.json", limits)
    assert found == [] and not report.valid
    return [(v.entry, v.field, v.code) for v in report.violations]


def function(name: str, parameters: Any = WEATHER, description: str = "Weather for a city") -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


# Accepted shapes


@pytest.mark.parametrize(
    "document",
    [function("get_weather"), [function("get_weather")], {"tools": [function("get_weather")]}],
    ids=["one", "list", "tools"],
)
def test_openai_tools(document):
    assert ok(document) == [CanonicalTool("get_weather", "Weather for a city", CANONICAL_WEATHER, JSON_SCHEMA)]


def test_openai_legacy_functions_and_a_function_without_parameters():
    legacy = {"name": "get_weather", "description": "Weather for a city", "parameters": WEATHER}
    now = {"name": "now", "description": "The current time"}
    for document in ({"functions": [legacy, now]}, [legacy, now]):
        weather, clock = ok(document)
        assert weather.parameters == CANONICAL_WEATHER
        empty = {"type": "object", "properties": {}, "required": [], "additionalProperties": False}
        assert (clock.name, clock.parameters) == ("now", empty)


def test_anthropic_tools():
    tool = {"name": "get_weather", "description": "Weather for a city", "input_schema": WEATHER}
    for document in ({"tools": [tool]}, [tool], tool):
        assert ok(document) == [CanonicalTool("get_weather", "Weather for a city", CANONICAL_WEATHER, JSON_SCHEMA)]


def test_bare_json_schema_title_is_the_name_and_description_leaves_the_schema():
    schema = {"title": "get_weather", "description": "Weather for a city", **WEATHER}
    for document in (schema, [schema, {**schema, "title": "get_forecast"}]):
        found = ok(document)
        assert found[0] == CanonicalTool("get_weather", "Weather for a city", CANONICAL_WEATHER, JSON_SCHEMA)
    assert [t.name for t in found] == ["get_weather", "get_forecast"]


def test_json_and_yaml_are_told_apart_by_content_not_the_extension():
    as_yaml = yaml.safe_dump({"tools": [function("get_weather")]}).encode()
    assert ok(as_yaml, "tools.json")[0].parameters == CANONICAL_WEATHER
    assert ok(json.dumps([function("get_weather")]).encode(), "tools.yaml")[0].name == "get_weather"


def test_pydantic_style_defs_unions_and_all_of_are_inlined_and_typed():
    parameters = {
        "type": "object",
        "$defs": {"Unit": {"type": "string", "enum": ["c", "f"]}},
        "properties": {
            "unit": {"allOf": [{"$ref": "#/$defs/Unit"}], "description": "Temperature unit"},
            "when": {"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}], "default": None},
            "limits": {"type": "object", "additionalProperties": {"type": "number"}},
        },
    }
    (tool,) = ok([function("forecast", parameters)])
    properties = tool.parameters["properties"]
    assert properties["unit"] == {
        "allOf": [{"type": "string", "enum": ["c", "f"]}], "description": "Temperature unit", "type": "string"
    }  # fmt: skip
    assert properties["when"]["type"] == ["string", "null"]
    assert "$defs" not in tool.parameters


OPENAPI_30 = {
    "openapi": "3.0.3",
    "info": {"title": "Pets", "version": "1"},
    "paths": {
        "/pets/{petId}": {
            "parameters": [{"name": "petId", "in": "path", "schema": {"type": "string"}, "description": "The pet"}],
            "patch": {
                "operationId": "updatePet",
                "summary": "Update a pet",
                "description": "Changes only the fields given.",
                "parameters": [
                    {"name": "dryRun", "in": "query", "schema": {"type": "boolean"}, "example": True},
                    {"name": "X-Request-Id", "in": "header", "required": True, "schema": {"type": "string"}},
                    {"name": "Authorization", "in": "header", "schema": {"type": "string"}},
                    {"name": "session", "in": "cookie", "schema": {"type": "string"}},
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string", "nullable": True},
                                    "kind": {"type": "string", "enum": ["cat", "dog"], "nullable": True},
                                    "age": {"type": "integer", "minimum": 0, "exclusiveMinimum": True, "example": 3},
                                },
                            }
                        }
                    },
                },
            },
        }
    },
}


def test_openapi_30_merges_path_query_header_and_body_into_one_typed_schema():
    (tool,), report = imported(OPENAPI_30, "pets.json")
    assert (tool.name, tool.source) == ("updatePet", OPENAPI)
    assert tool.description == "Update a pet\n\nChanges only the fields given."
    assert tool.parameters == {
        "type": "object",
        "properties": {
            "petId": {"type": "string", "description": "The pet"},
            "dryRun": {"type": "boolean", "examples": [True]},
            "X-Request-Id": {"type": "string"},
            "name": {"type": ["string", "null"]},
            "kind": {"type": ["string", "null"], "enum": ["cat", "dog", None]},
            "age": {"type": "integer", "exclusiveMinimum": 0, "examples": [3]},
        },
        "required": ["petId", "X-Request-Id", "name"],
        "additionalProperties": False,
    }
    skipped = [(w.entry, w.field, w.code) for w in report.warnings]
    assert skipped == [
        ("updatePet", "parameters.properties.Authorization", "parameter_skipped"),
        ("updatePet", "parameters.properties.session", "parameter_skipped"),
    ]


OPENAPI_31_YAML = b"""
openapi: 3.1.0
info: {title: Shop, version: "2"}
paths:
  /orders/{id}:
    parameters:
      - $ref: '#/components/parameters/OrderId'
    put:
      summary: Replace an order
      requestBody:
        $ref: '#/components/requestBodies/Order'
    get:
      operationId: get order!
      description: One order
  /orders/{id}/notes:
    post:
      operationId: addNote
      description: Add a note to an order
      parameters:
        - $ref: '#/components/parameters/OrderId'
      requestBody:
        content:
          text/plain; charset=utf-8:
            schema: {type: string}
          application/json:
            schema: {type: array, items: {type: string}}
  /orders/{id}/label:
    get:
      operationId: getLabel
      description: The shipping label as a PDF
      requestBody:
        content:
          application/pdf:
            schema: {type: string, format: binary}
components:
  parameters:
    OrderId: {name: id, in: path, required: true, schema: {$ref: '#/components/schemas/Id'}}
  requestBodies:
    Order:
      required: true
      content:
        application/json:
          schema:
            allOf:
              - $ref: '#/components/schemas/Base'
              - type: object
                required: [lines]
                properties:
                  lines: {type: array, items: {$ref: '#/components/schemas/Line'}}
  schemas:
    Id: {type: string, pattern: '^o_[0-9]+$'}
    Base:
      type: object
      required: [id]
      properties:
        id: {$ref: '#/components/schemas/Id'}
        note: {type: [string, 'null']}
    Line:
      type: object
      required: [sku, quantity]
      properties:
        sku: {type: string}
        quantity: {type: integer, minimum: 1}
"""


def test_openapi_31_yaml_with_refs_to_components():
    found, report = imported(OPENAPI_31_YAML, "shop.yaml")
    assert report.violations == []
    by_name = {t.name: t for t in found}
    assert list(by_name) == ["get_order_", "put_orders_id", "addNote"]
    put = by_name["put_orders_id"]
    assert put.description == "Replace an order"
    line = {"type": "object", "required": ["sku", "quantity"],
            "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}}}  # fmt: skip
    assert put.parameters["properties"] == {
        "path_id": {"type": "string", "pattern": "^o_[0-9]+$"},
        "id": {"type": "string", "pattern": "^o_[0-9]+$"},
        "note": {"type": ["string", "null"]},
        "lines": {"type": "array", "items": line},
    }
    assert put.parameters["required"] == ["path_id", "id", "lines"]
    assert by_name["addNote"].parameters["properties"]["body"] == {"type": "array", "items": {"type": "string"}}
    assert by_name["addNote"].parameters["required"] == ["id"]  # the body is not required
    warnings = {(w.entry, w.field, w.code) for w in report.warnings}
    assert warnings == {
        ("PUT /orders/{id}", "parameters.properties.path_id", "parameter_renamed"),
        ("PUT /orders/{id}", "name", "name_from_path"),
        ("get order!", "name", "name_sanitised"),
        ("getLabel", "requestBody", "operation_skipped"),
    }


def test_openapi_31_example_document_and_openai_example_import():
    weather = tools.import_document((EXAMPLES / "weather_openapi.yaml").read_bytes(), "weather_openapi.yaml")[0]
    assert [t.name for t in weather] == ["get_current_weather", "get_forecast", "create_alert"]
    assert weather[1].parameters["required"] == ["city", "days"]
    assert weather[0].parameters["properties"]["units"]["enum"] == ["metric", "imperial"]
    orders = ok((EXAMPLES / "openai_tools.json").read_bytes())
    assert [t.name for t in orders] == ["search_orders", "refund_order"]


# Names


def test_names_are_sanitised_cut_to_64_and_made_unique_with_warnings():
    long = "x" * 70
    found, report = imported([function("get weather!"), function("get_weather_"), function("get_weather_"),
                              function(long), function(long)])  # fmt: skip
    assert [t.name for t in found] == ["get_weather_", "get_weather__2", "get_weather__3", "x" * 64, "x" * 62 + "_2"]
    assert all(NAME.match(t.name) for t in found)
    assert [(w.entry, w.code) for w in report.warnings] == [
        ("get weather!", "name_sanitised"), (long, "name_sanitised"), (long, "name_sanitised"),
        ("get_weather_", "name_suffixed"), ("get_weather_", "name_suffixed"), ("x" * 64, "name_suffixed"),
    ]  # fmt: skip


# Violations: entry (tool or JSON pointer), field inside the tool, code


UNTYPED_CASES = {
    "no type": (
        {"type": "object", "properties": {"limit": {"description": "how many"}}},
        "parameters.properties.limit",
    ),
    "enum without type": ({"type": "object", "properties": {"u": {"enum": ["c", "f"]}}}, "parameters.properties.u"),
    "nested": (
        {"type": "object", "properties": {"filter": {"type": "object", "properties": {"tag": {}}}}},
        "parameters.properties.filter.properties.tag",
    ),
    "array items": (
        {"type": "object", "properties": {"ids": {"type": "array", "items": {"minimum": 1}}}},
        "parameters.properties.ids.items",
    ),
    "array without items": (
        {"type": "object", "properties": {"ids": {"type": "array"}}},
        "parameters.properties.ids.items",
    ),
    "union branch": (
        {"type": "object", "properties": {"v": {"anyOf": [{"type": "string"}, {"format": "date"}]}}},
        "parameters.properties.v",
    ),
}


@pytest.mark.parametrize("case", list(UNTYPED_CASES))
def test_a_property_without_a_type_is_named_by_its_path(case):
    parameters, field = UNTYPED_CASES[case]
    assert violations([function("search", parameters)]) == [("search", field, "untyped_property")]


def test_tool_level_violations():
    no_description = {"name": "a", "parameters": WEATHER}
    no_name = {"type": "function", "function": {"description": "d", "parameters": WEATHER}}
    assert violations([no_description, no_name, function("ok")]) == [
        ("a", "description", "missing_description"),
        ("/1", "name", "missing_name"),
    ]
    assert violations([function("s", {"type": "object", "properties": {"x": {"type": "strng"}}})]) == [
        ("s", "parameters.properties.x.type", "invalid_schema")
    ]
    assert violations(
        [function("s", {"type": "object", "properties": {"x": {"type": "string", "pattern": "(["}}})]
    ) == [("s", "parameters.properties.x.pattern", "invalid_schema")]
    bad_pattern = {"type": "object", "properties": {}, "patternProperties": {"([": {"type": "string"}}}
    assert violations([function("s", bad_pattern)]) == [("s", "parameters.patternProperties", "invalid_schema")]
    assert violations([function("s", {"type": "array", "items": {"type": "string"}})]) == [
        ("s", "parameters", "parameters_not_object")
    ]
    assert violations([function("s", "a string")]) == [("s", "parameters", "parameters_not_object")]
    assert violations([function("s", {**WEATHER, "required": ["city", "country"]})]) == [
        ("s", "parameters.required", "unknown_required")
    ]


def test_ref_violations():
    def ref(target: str, defs: Any = None) -> dict[str, Any]:
        return {"type": "object", "properties": {"a": {"$ref": target}}, "$defs": defs or {}}

    node = {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}
    assert violations([function("s", ref("#/$defs/Node", {"Node": node}))]) == [
        ("s", "parameters.properties.a.properties.next", "recursive_ref")
    ]
    assert violations([function("s", ref("#/$defs/Missing"))]) == [("s", "parameters.properties.a", "unresolved_ref")]
    assert violations([function("s", ref("https://example.com/schema.json"))]) == [
        ("s", "parameters.properties.a", "external_ref")
    ]


def test_openapi_violations():
    def operation(**fields: Any) -> dict[str, Any]:
        return {"openapi": "3.0.0", "info": {}, "paths": {"/p/{id}": {"post": {"operationId": "op", **fields}}}}

    assert violations(operation(summary="s", parameters=[{"in": "query"}])) == [
        ("op", "parameters[0]", "invalid_parameter")
    ]
    assert violations(operation(summary="s", parameters=[{"name": "q", "in": "query"}])) == [
        ("op", "parameters.properties.q", "untyped_property")
    ]
    assert violations(operation(parameters=[])) == [("op", "description", "missing_description")]
    clash = operation(
        summary="s",
        parameters=[{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
        requestBody={"content": {"application/json": {"schema": {"type": "object", "properties": {
            "id": {"type": "string"}, "path_id": {"type": "string"}}}}}},
    )  # fmt: skip
    assert violations(clash) == [("op", "parameters.properties.path_id", "name_clash")]
    assert violations({"swagger": "2.0", "paths": {}}) == [("doc.json", "", "unsupported_openapi_version")]


@pytest.mark.parametrize(
    ("document", "code"),
    [
        (b"", "no_tools"),
        (b"[]", "no_tools"),
        (b'{"tools": [', "invalid_json"),
        (b"tools:\n  - name: a\n   bad: [", "invalid_yaml"),
        (b"\xff\xfe{}", "invalid_encoding"),
        (b'{"hello": "world"}', "unrecognised_document"),
        (b'"just text"', "unrecognised_document"),
        (b"name: a\ndescription: d\nparameters: !!binary aGVsbG8=\n", "not_json_value"),
        (b'{"tools": [{"type": "web_search_20250305", "name": "web_search"}]}', "unsupported_tool_type"),
        (b'{"tools": [3]}', "unrecognised_tool"),
    ],
)
def test_document_level_violations(document, code):
    assert [c for _, _, c in violations(document)] == [code]


def test_a_document_with_one_bad_tool_imports_nothing():
    found, report = imported([function("good"), function("bad", {"type": "object", "properties": {"x": {}}})])
    assert found == [] and report.rows == 2 and report.counts == {"untyped_property": 1}


def test_size_and_count_limits():
    assert violations(b" " * 101, Limits(max_document_bytes=100)) == [("doc.json", "", "document_too_large")]
    three = [function("a"), function("b"), function("c")]
    assert violations(three, Limits(max_tools=2)) == [("doc.json", "", "too_many_tools")]


# Hostile documents answer with their code in bounded time and memory


def _bounded_codes(tmp_path: Path, name: str, data: bytes) -> list[str]:
    path = tmp_path / name
    path.write_bytes(data)
    result = run_bounded("services.ingest.tools:codes_of", str(path))
    assert result.within_bounds(), result
    return result.value


def test_hostile_documents_are_refused_in_bounded_time_and_memory(tmp_path):
    laughs = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]\n"
        for i in range(1, 12)
    )
    assert _bounded_codes(tmp_path, "laughs.yaml", laughs.encode()) == ["document_too_complex"]
    assert _bounded_codes(tmp_path, "deep.json", b"[" * 100_000 + b"]" * 100_000) == ["nested_too_deeply"]
    assert _bounded_codes(tmp_path, "huge.json", b" " * (5 * 1024 * 1024)) == ["document_too_large"]
    # every level refers to the next one 8 times: 8**12 schemas once inlined
    defs = {f"L{i}": {"type": "object", "properties": {f"p{j}": {"$ref": f"#/$defs/L{i + 1}"} for j in range(8)}}
            for i in range(12)}  # fmt: skip
    defs["L12"] = {"type": "string"}
    ref_bomb = [function("bomb", {"type": "object", "properties": {"x": {"$ref": "#/$defs/L0"}}, "$defs": defs})]
    assert _bounded_codes(tmp_path, "refs.json", json.dumps(ref_bomb).encode()) == ["schema_too_large"]
    # 70,000 distinct property schemas, each one the meta-schema would check
    distinct = [function(f"t{k}", {"type": "object", "properties": {
        f"q{j}": {"type": "string", "description": f"{k} {j}"} for j in range(100)}}) for k in range(700)]  # fmt: skip
    assert _bounded_codes(tmp_path, "distinct.json", json.dumps(distinct).encode()) == ["schema_too_large"]


def test_recursive_refs_terminate(tmp_path):
    cycle = {
        "openapi": "3.1.0", "info": {},
        "paths": {"/t": {"post": {"operationId": "tree", "summary": "s", "requestBody": {"content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/A"}}}}}}},
        "components": {"schemas": {
            "A": {"type": "object", "properties": {"b": {"$ref": "#/components/schemas/B"}}},
            "B": {"type": "object", "properties": {"a": {"$ref": "#/components/schemas/A"}}},
            "Self": {"$ref": "#/components/schemas/Self"},
        }},
    }  # fmt: skip
    assert _bounded_codes(tmp_path, "cycle.json", json.dumps(cycle).encode()) == ["recursive_ref"]
    cycle["components"]["schemas"]["A"] = {"$ref": "#/components/schemas/Self"}
    assert _bounded_codes(tmp_path, "self.json", json.dumps(cycle).encode()) == ["recursive_ref"]


# check_tool: one tool from elsewhere (the teacher's reading of a plain-language description)


def test_check_tool_applies_the_same_checks():
    tool, report = tools.check_tool("look up order", "Find an order", WEATHER, PLAIN_LANGUAGE)
    assert tool == CanonicalTool("look_up_order", "Find an order", CANONICAL_WEATHER, PLAIN_LANGUAGE)
    assert [w.code for w in report.warnings] == ["name_sanitised"]
    bad, report = tools.check_tool("t", "", {"type": "object", "properties": {"x": {}}}, PLAIN_LANGUAGE)
    assert bad is None
    assert sorted(report.counts) == ["missing_description", "untyped_property"]


# The active tool list in PostgreSQL


def canonical(name: str, description: str = "d") -> CanonicalTool:
    return CanonicalTool(name, description, CANONICAL_WEATHER, JSON_SCHEMA)


@pytest.fixture
def on_pool(postgres_url):
    """Run ``scenario(pool)`` against the ingest migrations in a schema of its own."""

    def run(scenario: Any) -> Any:
        async def main() -> Any:
            schema = f"tools_{secrets.token_hex(4)}"
            await db.migrate(postgres_url, schema, MIGRATIONS)
            pool = await db.open_pool(postgres_url, schema, max_size=2)
            try:
                return await scenario(pool)
            finally:
                await pool.close()

        return asyncio.run(main())

    return run


def test_tool_list_add_replace_list_and_delete(on_pool):
    async def scenario(pool: Any) -> None:
        first = await tool_list.add(pool, "t1", [canonical("search"), canonical("refund")], replace=False)
        assert [t.name for t in first] == ["search", "refund"]
        assert all(t.id.startswith("tool_") and len(t.id) == 29 for t in first)
        assert first[0].parameters == CANONICAL_WEATHER and first[0].source == JSON_SCHEMA
        assert [t.name for t in await tool_list.list_all(pool, "t1")] == ["refund", "search"]

        again = await tool_list.add(pool, "t1", [canonical("search")], replace=False)  # the same definition
        assert (again[0].id, again[0].created_at) == (first[0].id, first[0].created_at)
        newer = await tool_list.add(pool, "t1", [canonical("search", "newer")], replace=False)
        listed = await tool_list.list_all(pool, "t1")
        assert [(t.name, t.description) for t in listed] == [("refund", "d"), ("search", "newer")]
        assert newer[0].id != first[0].id and first[0].id not in {t.id for t in listed}

        await tool_list.add(pool, "t2", [canonical("other")], replace=False)
        replaced = await tool_list.add(pool, "t1", [canonical("fresh"), canonical("refund")], replace=True)
        assert [t.name for t in await tool_list.list_all(pool, "t1")] == ["fresh", "refund"]
        assert replaced[1].id == first[1].id  # unchanged definitions keep their id
        assert [t.name for t in await tool_list.list_all(pool, "t2")] == ["other"]

        await tool_list.delete(pool, "t1", replaced[0].id)
        assert [t.name for t in await tool_list.list_all(pool, "t1")] == ["refund"]
        with pytest.raises(NotFound):
            await tool_list.delete(pool, "t1", replaced[0].id)
        with pytest.raises(NotFound):  # another tenant's tool
            await tool_list.delete(pool, "t2", first[1].id)
        with pytest.raises(InvalidArgument):
            await tool_list.add(pool, "t1", [canonical("a"), canonical("a", "other")], replace=False)

    on_pool(scenario)


def test_imported_tools_are_stored_as_imported(on_pool):
    found = ok((EXAMPLES / "weather_openapi.yaml").read_bytes())

    async def scenario(pool: Any) -> list[tool_list.StoredTool]:
        await tool_list.add(pool, "t1", found, replace=False)
        return await tool_list.list_all(pool, "t1")

    stored = on_pool(scenario)
    assert {t.name: (t.parameters, t.source) for t in stored} == {t.name: (t.parameters, OPENAPI) for t in found}


# The CLI, through the real services


def test_cli_import_list_and_delete(services, make_tenant, tmp_path):
    env = cli_env(services, make_tenant().api_key)
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> Any:
        result = runner.invoke(cli, ["tools", *args], env=env)
        assert result.exit_code == code, result.output
        return json.loads(result.output) if "--json" in args else result.output

    weather = run("import", str(EXAMPLES / "weather_openapi.yaml"), "--json")
    assert [t["name"] for t in weather["tools"]] == ["get_current_weather", "get_forecast", "create_alert"]
    assert weather["violations"] == [] and all(t["source"] == "TOOL_SOURCE_OPENAPI" for t in weather["tools"])
    orders = run("import", str(EXAMPLES / "openai_tools.json"), "--json")
    listed = run("list", "--json")
    assert [t["name"] for t in listed] == sorted(t["name"] for t in weather["tools"] + orders["tools"])
    refund = next(t for t in listed if t["name"] == "refund_order")
    assert refund["parameters"]["properties"]["amount"]["type"] == ["number", "null"]
    assert refund["parameters"]["required"] == ["order_id", "reason"]

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump([function("search", {"type": "object", "properties": {"limit": {}}})]))
    refused = run("import", str(bad), "--json", code=1)
    assert refused["tools"] == []
    assert [(v["entry"], v["field"], v["code"]) for v in refused["violations"]] == [
        ("search", "parameters.properties.limit", "untyped_property")
    ]
    assert "untyped_property" in run("import", str(bad), code=1)

    renamed = tmp_path / "renamed.json"
    renamed.write_text(json.dumps([function("get weather")]))
    replaced = run("import", str(renamed), "--replace", "--json")
    assert [(w["entry"], w["code"]) for w in replaced["warnings"]] == [("get weather", "name_sanitised")]
    assert [t["name"] for t in run("list", "--json")] == ["get_weather"]

    assert "deleted" in run("delete", replaced["tools"][0]["id"])
    assert run("list", "--json") == []
    missing = runner.invoke(cli, ["tools", "delete", replaced["tools"][0]["id"]], env=env)
    assert missing.exit_code == 1 and "not_found" in missing.output
