"""services/common/tool_calls.py (parsing and rendering calls, schema checks, comparison) and tool_rewards.py (GRPO
rewards, eval rates)."""

from __future__ import annotations

import json
import random
import time

import pytest

from services.common import tool_calls as tc
from services.common.tool_calls import Call, check_call, parse_output, render_call
from services.trainer.recipes import tool_rewards as tr

WEATHER = {
    "name": "get_weather",
    "description": "Current weather and forecast for a city.",
    "parameters": {
        "type": "object",
        "properties": {
            "location": {  # says nothing of other properties: still refused
                "type": "object",
                "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
                "required": ["city"],
            },
            "units": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 14},
            "hours": {"type": "array", "items": {"type": "integer"}},
        },
        "required": ["location"],
        "additionalProperties": False,
    },
}
TIME = {"name": "get_time", "description": "The time now in a timezone.", "parameters": {"type": "object",
        "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}}  # fmt: skip
TOOLS = {"get_weather": WEATHER, "get_time": TIME}
PARIS = {"location": {"city": "Paris"}, "units": "celsius"}


# -- parsing and rendering -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [{}, PARIS, {"q": "naïve café — 東京", "n": 1.5, "ok": True, "none": None, "list": [1, [2, {"x": "y"}]]},
     {"text": "a </tool_call> inside, and <tool_call> too"}, {"z": 1, "a": 2}],
)  # fmt: skip
def test_render_and_parse_round_trip(arguments):
    block = render_call("get_weather", arguments)
    assert block.startswith("<tool_call>\n{") and block.endswith("}\n</tool_call>")
    parsed = parse_output(block)
    assert parsed == tc.Parsed([Call("get_weather", arguments)], "", "")
    assert list(parsed.calls[0].arguments) == list(arguments)  # key order kept


def test_render_writes_the_block_as_the_chat_template_does():
    assert render_call("get_weather", {"city": "Zürich", "days": 2}) == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich", "days": 2}}\n</tool_call>'
    )


def test_text_around_calls_and_several_calls():
    calls = [Call("get_weather", PARIS), Call("get_time", {"timezone": "Europe/Paris"})]
    output = f"Let me check.\n{tc.render_calls(calls)}\nOne moment."
    assert parse_output(output) == tc.Parsed(calls, "Let me check.\nOne moment.", "")
    assert parse_output("  It is sunny.  ") == tc.Parsed([], "It is sunny.", "")


def test_arguments_given_as_json_text_are_decoded():
    output = '<tool_call>{"name": "get_time", "arguments": "{\\"timezone\\": \\"UTC\\"}"}</tool_call>'
    assert parse_output(output).calls == [Call("get_time", {"timezone": "UTC"})]
    assert parse_output('<tool_call>{"name": "get_time"}</tool_call>').calls == [Call("get_time", {})]


@pytest.mark.parametrize(
    ("output", "code"),
    [
        ('<tool_call>{"name": "a", "arguments": {}}', "unclosed_tool_call"),
        ('done</tool_call>', "unopened_tool_call"),
        ('<tool_call>{"name": "a"}</tool_call> then </tool_call>', "unopened_tool_call"),
        ("<tool_call>{name: a}</tool_call>", "invalid_json"),
        ('<tool_call>{"name": "a", "arguments": "{not json"}</tool_call>', "invalid_json"),
        ('<tool_call>{"name": "a", "arguments": {"x": NaN}}</tool_call>', "invalid_json"),
        ('<tool_call>["a", {}]</tool_call>', "not_an_object"),
        ('<tool_call>{"arguments": {}}</tool_call>', "missing_name"),
        ('<tool_call>{"name": "  ", "arguments": {}}</tool_call>', "missing_name"),
        ('<tool_call>{"name": "a", "arguments": [1]}</tool_call>', "arguments_not_object"),
        ('<tool_call>{"name": "a", "arguments": "[1]"}</tool_call>', "arguments_not_object"),
        ('<tool_call>{"name": "a", "arguments": "7"}</tool_call>', "arguments_not_object"),
        ("<tool_call>" + "[" * 100 + "]" * 100 + "</tool_call>", "nested_too_deeply"),
        ('<tool_call>{"name": "a", "arguments": ' + '{"a": ' * 70 + "1" + "}" * 71 + "</tool_call>",
         "nested_too_deeply"),
    ],
)  # fmt: skip
def test_every_parse_error_has_its_code(output, code):
    parsed = parse_output(output)
    assert parsed.error == code and not parsed.ok


def test_calls_that_parse_are_kept_when_another_block_does_not():
    output = render_call("get_time", {"timezone": "UTC"}) + "<tool_call>{oops}</tool_call>"
    assert parse_output(output) == tc.Parsed([Call("get_time", {"timezone": "UTC"})], "", "invalid_json")


def test_hostile_outputs_are_bounded_and_never_raise():
    start = time.perf_counter()
    assert parse_output("<tool_call>" + "x" * (10 * 1024 * 1024)).error == "output_too_long"
    assert parse_output("<tool_call>" + "[" * 10_000 + "]" * 10_000 + "</tool_call>").error == "nested_too_deeply"
    deep_text = json.dumps({"name": "a", "arguments": "[" * 10_000 + "]" * 10_000})
    assert parse_output(f"<tool_call>{deep_text}</tool_call>").error == "nested_too_deeply"
    many = "<tool_call>" * 200_000  # 2.2 MB of opening tags
    assert parse_output(many[: tc.MAX_OUTPUT_CHARS]).error == "unclosed_tool_call"
    assert parse_output("<tool_call>\ud800</tool_call>").error == "invalid_json"  # a lone surrogate
    assert time.perf_counter() - start < 2
    pieces = ["<tool_call>", "</tool_call>", "{", "}", "[", "]", '"name"', '"arguments"', ":", ",", '"a"', "1",
              '"{\\"x\\": 1}"', "null", " ", "\n", "\\", '"', "é", "\x00"]  # fmt: skip
    rng = random.Random(7)
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        parsed = parse_output(text)
        assert isinstance(parsed.error, str) and all(isinstance(c, Call) for c in parsed.calls)
    assert parse_output(None).error == "invalid_json"  # type: ignore[arg-type]


# -- checks --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "reasons"),
    [
        (Call("get_weather", PARIS), []),
        (Call("get_weather", {"location": {"city": "Oslo", "country": "NO"}, "days": 3, "hours": [9, 12]}), []),
        (Call("get_forecast", PARIS), ["unknown_tool"]),
        (Call("get_weather", [PARIS]), ["arguments_not_object"]),
        (Call("get_weather", {"units": "celsius"}), ["missing_required:location"]),
        (Call("get_weather", {"location": {"country": "FR"}}), ["missing_required:location.city"]),
        (Call("get_weather", {"location": {"city": 75}}), ["wrong_type:location.city"]),
        (Call("get_weather", {"location": {"city": "Paris"}, "hours": [9, "noon"]}), ["wrong_type:hours[1]"]),
        (Call("get_weather", {**PARIS, "units": "kelvin"}), ["not_in_enum:units"]),
        (Call("get_weather", {**PARIS, "lang": "fr"}), ["unknown_property:lang"]),
        (Call("get_weather", {"location": {"city": "Paris", "zip": "75001"}}), ["unknown_property:location.zip"]),
        (Call("get_time", {"timezone": "UTC", "dst": True}), ["unknown_property:dst"]),
        (Call("get_weather", {**PARIS, "days": 30}), ["schema_violation:days"]),
        (Call("get_weather", {"location": "Paris", "units": "K", "x": 1}),
         ["unknown_property:x", "wrong_type:location", "not_in_enum:units"]),
        (Call("get_weather", {"location": {"city": "a" * 3}, "deep": json.loads("[" * 80 + "]" * 80)}),
         ["nested_too_deeply"]),
    ],
)  # fmt: skip
def test_check_call_reasons(call, reasons):
    assert sorted(check_call(call, TOOLS)) == sorted(reasons)


def test_composed_schemas_are_not_made_stricter_than_they_say():
    split = {"name": "book", "parameters": {"type": "object", "allOf": [
        {"properties": {"room": {"type": "string"}}, "required": ["room"]},
        {"properties": {"nights": {"type": "integer"}}}]}}  # fmt: skip
    either = {"name": "find", "parameters": {"type": "object", "properties": {"q": {"type": "string"}},
              "anyOf": [{"properties": {"id": {"type": "integer"}}}, {"required": ["q"]}]}}  # fmt: skip
    tools = {"book": split, "find": either}
    assert check_call(Call("book", {"room": "12", "nights": 2}), tools) == []
    assert check_call(Call("book", {"nights": 2}), tools) == ["missing_required:room"]
    assert check_call(Call("find", {"id": 3}), tools) == []
    alternatives = {"name": "pay", "parameters": {"type": "object", "properties": {"method": {"oneOf": [
        {"type": "object", "properties": {"card": {"type": "string"}}, "required": ["card"]},
        {"type": "object", "properties": {"iban": {"type": "string"}}, "required": ["iban"]}]}}}}  # fmt: skip
    pay = {"pay": alternatives}
    assert check_call(Call("pay", {"method": {"card": "4242"}}), pay) == []
    assert check_call(Call("pay", {"method": {"card": "4242", "cvv": "1"}}), pay) == ["schema_violation:method"]


def test_a_schema_jsonschema_cannot_use_is_its_own_reason():
    broken = {"bad": {"name": "bad", "parameters": {"type": "object", "properties": {"p": {"type": "string",
              "pattern": "(unclosed"}}}}}  # fmt: skip
    assert check_call(Call("bad", {"p": "x"}), broken) == ["invalid_tool_schema"]


def test_tools_by_name_reads_canonical_and_openai_tools_and_json_text():
    openai = [{"type": "function", "function": WEATHER}, TIME]
    assert tc.tools_by_name(openai) == TOOLS == tc.tools_by_name(json.dumps(openai))
    assert tc.tools_by_name("not json") == {} == tc.tools_by_name(None)


# -- comparing arguments -------------------------------------------------------------------------


def test_normalise():
    value = {"b": "  New   York\n", "a": [2.0, 1.5, "ÉTÉ"], "c": {"z": True, "y": None}}
    assert tc.normalise(value) == {"a": [2, 1.5, "été"], "b": "new york", "c": {"y": None, "z": True}}
    assert list(tc.normalise(value)) == ["a", "b", "c"]
    assert type(tc.normalise(3.0)) is int and tc.normalise(True) is True


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ({"city": "Paris", "days": 3}, {"days": 3.0, "city": " paris "}, True),
        ({"q": "New  York"}, {"q": "new york"}, True),
        ({"l": [1, 2]}, {"l": [2, 1]}, False),
        ({"flag": True}, {"flag": 1}, False),
        ({"n": 1.5}, {"n": 1}, False),
        ({"a": "x"}, {"a": "x", "b": None}, False),
        ({"a": {"b": "C"}}, {"a": {"b": "c"}}, True),
        ({"deep": json.loads("[" * 80 + "]" * 80)}, {"deep": json.loads("[" * 80 + "]" * 80)}, False),
    ],
)
def test_arguments_match(a, b, same):
    assert tc.arguments_match(a, b) is same


# -- rewards -------------------------------------------------------------------------------------


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def columns(expected: list[dict], n: int) -> dict:
    return {"expected_calls": [json.dumps(expected)] * n, "tools": [json.dumps([WEATHER, TIME])] * n}


def rewards(completions: list, expected: list[dict]) -> list[list[float]]:
    """Per completion, the five rewards in REWARD_FUNCTIONS order (called as trl calls them)."""
    prompts = [[{"role": "user", "content": "Weather in Paris?"}]] * len(completions)
    extra = {"completion_ids": [[1, 2]] * len(completions), "trainer_state": None, "log_extra": None}
    per_function = [f(prompts=prompts, completions=completions, **columns(expected, len(completions)), **extra)
                    for f in tr.REWARD_FUNCTIONS]  # fmt: skip
    return [list(row) for row in zip(*per_function, strict=True)]


def test_rewards_rank_the_completions_of_one_prompt_wanting_a_call():
    wanted = [{"name": "get_weather", "arguments": {"location": {"city": "Paris"}, "units": "celsius"}}]
    parsed_by_trl = {"type": "function", "function": {"name": "get_weather", "arguments": json.dumps(PARIS)}}
    completions = [
        assistant(render_call("get_weather", {"units": "celsius", "location": {"city": " PARIS"}})),
        assistant(render_call("get_weather", {"units": "Celsius", "location": {"city": "Paris"}})),
        assistant(render_call("get_weather", {"location": {"city": "Lyon"}})),
        assistant(render_call("get_weather", {"location": {"city": "Paris"}, "units": "kelvin"})),
        assistant(render_call("get_time", {"timezone": "Europe/Paris"})),
        assistant("It is probably sunny in Paris."),
        assistant('<tool_call>{"name": "get_weather", "arguments": {"location"'),
        [{"role": "assistant", "content": None, "tool_calls": [parsed_by_trl]}],
        assistant(render_call("get_weather", wanted[0]["arguments"]) + render_call("get_time", {"timezone": "UTC"})),
    ]
    assert rewards(completions, wanted) == [
        [1.0, 1.0, 1.0, 1.0, 0.5],  # right (case and spaces do not count in a comparison...)
        [1.0, 1.0, 0.0, 1.0, 0.5],  # ... but an enum is exact
        [1.0, 1.0, 1.0, 0.0, 0.5],  # valid call, wrong arguments
        [1.0, 1.0, 0.0, 0.0, 0.5],  # not in the enum
        [1.0, 0.0, 1.0, 0.0, 0.5],  # the wrong tool, called validly
        [0.0, 0.0, 0.0, 0.0, 0.5],  # no call
        [0.0, 0.0, 0.0, 0.0, 0.5],  # broken block
        [1.0, 1.0, 1.0, 1.0, 0.5],  # tool_calls parsed by trl count as calls
        [1.0, 0.5, 1.0, 0.5, 0.5],  # one call too many
    ]


def test_rewards_when_no_call_is_wanted():
    completions = [
        assistant("Paris is the capital of France."),
        assistant(render_call("get_weather", PARIS)),
        assistant(""),
        assistant("Sure </tool_call>"),
        "Plain text completions work too.",
    ]
    assert rewards(completions, []) == [
        [1.0, 1.0, 1.0, 1.0, 1.0],
        [0.0, 0.0, 1.0, 0.0, 0.0],
        [0.0, 1.0, 1.0, 1.0, 1.0],  # no text: a format failure, but no call made
        [0.0, 1.0, 1.0, 1.0, 0.0],
        [1.0, 1.0, 1.0, 1.0, 1.0],
    ]


def test_rewards_need_their_columns_and_weights_match():
    assert len(tr.REWARD_WEIGHTS) == len(tr.REWARD_FUNCTIONS)
    assert [f.__name__ for f in tr.REWARD_FUNCTIONS] == [
        "reward_format", "reward_tool", "reward_schema", "reward_arguments", "reward_no_call"]  # fmt: skip
    with pytest.raises(KeyError, match="expected_calls"):
        tr.reward_format(prompts=["p"], completions=["c"], tools=["[]"])


# -- rates ---------------------------------------------------------------------------------------


def test_score_rates_on_a_hand_made_set():
    tools = [WEATHER, TIME]
    paris = {"name": "get_weather", "arguments": PARIS}
    utc = {"name": "get_time", "arguments": {"timezone": "UTC"}}
    rows = [
        (render_call("get_weather", PARIS), [paris]),  # all right
        (render_call("get_weather", {**PARIS, "units": "kelvin"}), [paris]),  # valid call, right tool, not schema
        (render_call("get_weather", {"location": {"city": "Rome"}}), [paris]),  # schema-valid, args differ
        (render_call("get_time", {"timezone": "UTC"}), [paris]),  # wrong tool
        (render_call("get_weathr", PARIS), [paris]),  # unknown tool
        ("no idea", [utc]),  # no call
        (tc.render_calls([Call("get_time", {"timezone": "utc"}), Call("get_weather", PARIS)]), [paris, utc]),
        ("Hello!", []),  # correctly no call
        (render_call("get_time", {"timezone": "UTC"}), []),  # a call where none is wanted
        ("<tool_call>{", []),  # broken
    ]
    got = tr.score([r[0] for r in rows], [r[1] for r in rows], [tools] * len(rows))
    assert got == {
        "valid_call_rate": 5 / 7,  # rows 1, 2, 3, 4, 7
        "right_tool_rate": 4 / 7,  # rows 1, 2, 3, 7
        "schema_valid_rate": 4 / 7,  # rows 1, 3, 4, 7
        "args_match_rate": 2 / 7,  # rows 1, 7
        "no_call_rate": 1 / 3,  # row 8
        "correct_rate": 3 / 10,  # rows 1, 7, 8
        "rows": 10.0,
        "call_rows": 7.0,
        "no_call_rows": 3.0,
    }
    assert tr.score([], [], [])["correct_rate"] == 0.0
