"""Rubrics: parsing (errors naming the criterion and field), every programmatic grader, validation on an
eval set (refusing a criterion that cannot score a row or gives no spread), weighted totals, and judge
criteria scored through the teacher service's JudgeAnswers, with a fake OpenAI-protocol server as the judge.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from functools import partial
from typing import Any

import grpc
import psycopg
import pytest
from provider_servers import Answer
from test_keys import refusal

from distillery.teacher.v1 import teacher_pb2
from services.common.errors import InvalidArgument
from services.teacher.judging import read_score
from services.trainer import graders
from services.trainer import judging as judges
from services.trainer.graders import GradeError, Judged, Row, score
from services.trainer.peers import Peers
from services.trainer.rubric import (
    JUDGE_PROMPT_VERSION,
    JUDGE_USER_TEMPLATE,
    MAX_CRITERIA,
    MAX_PATTERN_CHARS,
    Rubric,
    parse_rubric,
)

CITY_DAYS = {"city": {"type": "string"}, "days": {"type": "integer"}}
WEATHER = {"type": "object", "properties": CITY_DAYS, "required": ["city"]}
TOOLS = [{"name": "get_weather", "description": "The weather in a city.", "parameters": WEATHER}]
PARIS = '[{"name": "get_weather", "arguments": {"city": "Paris"}}]'


def call(name: str, arguments: dict[str, Any]) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def criterion(kind: str, **params: Any):
    return Rubric.from_dict({"name": "r", "criteria": [{"name": "c", "kind": kind, "params": params}]}).criteria[0]


# -- every grader, rows that pass and rows that fail ------------------------------------------------

GRADED = [
    # (kind, params, reference, answer, score)
    ("exact_match", {}, "Paris", "  paris ", 1.0),
    ("exact_match", {}, "Paris", "Paris, France", 0.0),
    ("exact_match", {"ignore_case": False}, "Paris", "paris", 0.0),
    ("exact_match", {"ignore_punctuation": True}, "Hello, world!", "hello world", 1.0),
    ("exact_match", {"collapse_whitespace": False}, "a b", "a  b", 0.0),
    ("regex", {"pattern": r"TICKET-\d+"}, "", "see TICKET-42 please", 1.0),
    ("regex", {"pattern": r"TICKET-\d+"}, "", "see ticket 42", 0.0),
    ("regex", {"pattern": r"ticket-\d+", "ignore_case": True}, "", "TICKET-7", 1.0),
    ("regex", {"pattern": r"\d+", "full_match": True}, "", "42 apples", 0.0),
    ("json_schema", {"schema": {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}},
     "", '{"id": 3}', 1.0),
    ("json_schema", {"schema": {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}},
     "", '{"id": "3"}', 0.0),
    ("json_schema", {"schema": {"type": "object"}}, "", "not json at all", 0.0),
    ("json_schema", {"schema": {"type": "string", "pattern": "^x+$"}}, "", '"xyx"', 0.0),
    ("json_field", {"path": "order.items.0.sku"}, '{"order": {"items": [{"sku": "A1"}]}}',
     '{"order": {"items": [{"sku": "A1", "n": 2}]}, "x": 1}', 1.0),
    ("json_field", {"path": "order.items.0.sku"}, '{"order": {"items": [{"sku": "A1"}]}}',
     '{"order": {"items": [{"sku": "B2"}]}}', 0.0),
    ("json_field", {"path": "total"}, '{"total": 2}', '{"total": 2.0}', 1.0),
    ("json_field", {"path": "total"}, '{"total": 1}', '{"total": true}', 0.0),
    ("json_field", {"path": "city", "ignore_case": True}, '{"city": "Paris"}', '{"city": " PARIS "}', 1.0),
    ("json_field", {"path": "city"}, '{"city": "Paris"}', "Paris", 0.0),
    ("numeric", {}, "The answer is 1,024.", "so 1024", 1.0),
    ("numeric", {}, "42", "41", 0.0),
    ("numeric", {"absolute": 1.5}, "42", "about 43", 1.0),
    ("numeric", {"relative": 0.01}, "1000", "1011", 0.0),
    ("numeric", {"relative": 0.01}, "1000", "1009.5", 1.0),
    ("numeric", {"extract": "first"}, "7", "7 apples, not 8", 1.0),
    ("numeric", {}, "7", "no number here", 0.0),
    ("similarity", {}, "the quick brown fox", "the quick brown fox", 1.0),
    ("similarity", {}, "the quick brown fox", "zzz", 0.0),
    ("similarity", {"metric": "token_sort_ratio"}, "brown fox quick", "quick brown fox", 1.0),
    ("tool_call", {}, PARIS, call("get_weather", {"city": "paris"}), 1.0),
    ("tool_call", {}, PARIS, call("get_weather", {"city": "Rome"}), 0.0),
    ("tool_call", {}, PARIS, "It is sunny in Paris.", 0.0),
    ("tool_call", {}, call("get_weather", {"city": "Paris"}), call("get_weather", {"city": "Paris"}), 1.0),
    ("tool_call", {}, "No tool fits: here is my answer.", "A plain answer.", 1.0),
    ("tool_call", {}, "No tool fits: here is my answer.", call("get_weather", {"city": "Paris"}), 0.0),
]  # fmt: skip


@pytest.mark.parametrize("kind,params,reference,answer,expected", GRADED)
def test_every_grader_scores_rows_that_pass_and_rows_that_fail(kind, params, reference, answer, expected):
    assert score(criterion(kind, **params), Row("q", reference, answer)) == pytest.approx(expected)


def test_similarity_gives_partial_credit_between_zero_and_one():
    got = score(criterion("similarity"), Row("q", "the cat sat on the mat", "the cat sat on a mat"))
    assert 0.8 < got < 1.0


def test_tool_call_checks_the_rows_tools_as_the_recipe_does():
    made = call("get_weather", {"city": "Paris", "days": "two"})  # days is an integer in the schema
    bare = criterion("tool_call")
    assert score(bare, Row("q", PARIS, call("get_weather", {"city": "Paris"}), tools=TOOLS)) == 1.0
    assert score(bare, Row("q", '[{"name": "get_weather", "arguments": {"city": "Paris", "days": "two"}}]', made,
                           tools=TOOLS)) == 0.0  # fmt: skip
    lenient = criterion("tool_call", check_schema=False)
    assert score(lenient, Row("q", '[{"name": "get_weather", "arguments": {"city": "Paris", "days": "two"}}]', made,
                              tools=json.dumps(TOOLS))) == 1.0  # fmt: skip


@pytest.mark.parametrize(
    "kind,params,reference,words",
    [
        ("json_field", {"path": "total"}, "not json", "reference is not JSON"),
        ("json_field", {"path": "total"}, '{"sum": 2}', "has no field 'total'"),
        ("numeric", {}, "about a dozen", "no number"),
        ("exact_match", {}, "   ", "no reference answer"),
        ("tool_call", {}, '[{"arguments": {}}]', "not a list of calls"),
        ("tool_call", {}, "<tool_call>\n{broken\n</tool_call>", "do not parse (invalid_json)"),
        ("json_field", {"path": "a"}, "[" * 5000 + "]" * 5000, "nested too deeply"),
    ],
)
def test_a_row_a_criterion_cannot_score_is_an_error_naming_both(kind, params, reference, words):
    with pytest.raises(GradeError) as err:
        score(criterion(kind, **params), Row("q", reference, "anything"), 7)
    assert (err.value.criterion, err.value.row) == ("c", 7) and words in str(err.value)
    assert "criterion 'c' cannot score row 7" in str(err.value)


def test_hostile_answers_score_zero_or_fail_the_row_in_bounded_time():
    deep = "[" * 100_000 + "]" * 100_000
    assert score(criterion("json_schema", schema={"type": "array"}), Row("q", "", deep)) == 0.0
    assert score(criterion("json_field", path="a"), Row("q", '{"a": 1}', deep)) == 0.0
    assert score(criterion("exact_match"), Row("q", "x", "x" * 1_000_000)) == 0.0
    # A pattern that backtracks without end: the row fails after the timeout, it does not hang the trainer.
    started = time.monotonic()
    with pytest.raises(GradeError, match="ran past"):
        score(criterion("regex", pattern=r"(x+x+)+y"), Row("q", "", "x" * 5000))
    with pytest.raises(GradeError, match="ran past"):
        schema = {"type": "string", "pattern": r"(x+x+)+y"}
        score(criterion("json_schema", schema=schema), Row("q", "", '"' + "x" * 5000 + '"'))
    assert time.monotonic() - started < 5


# -- parsing: YAML and JSON, errors naming the criterion and field ----------------------------------

YAML = """
name: support-replies
description: Replies to support tickets.
criteria:
  - name: cites_ticket
    kind: regex
    params: {pattern: 'TICKET-\\d+'}
  - name: polite
    kind: judge
    weight: 2
    params: {judge: "platform:judge-model", scale: {min: 1, max: 5}, instructions: "The reply is polite."}
"""


def test_yaml_and_json_give_the_same_rubric_and_the_judge_prompt_is_recorded():
    from_yaml = parse_rubric(YAML)
    as_dict = from_yaml.to_dict()
    from_json = parse_rubric(json.dumps(as_dict))  # the stored form reads back
    assert from_json.to_dict() == as_dict
    assert [c.name for c in from_yaml.criteria] == ["cites_ticket", "polite"]
    assert [c.weight for c in from_yaml.criteria] == [1.0, 2.0]
    judge = as_dict["criteria"][1]
    assert judge["params"] == {"judge": "platform:judge-model", "instructions": "The reply is polite.",
                               "scale": {"min": 1, "max": 5}}  # fmt: skip
    prompt = judge["judge_prompt"]
    assert prompt["version"] == JUDGE_PROMPT_VERSION and prompt["user_template"] == JUDGE_USER_TEMPLATE
    assert "Criterion: The reply is polite." in prompt["system"] and "from 1 (" in prompt["system"]
    assert '"score": <a whole number from 1 to 5>' in prompt["system"]
    assert "judge_prompt" not in as_dict["criteria"][0]


def rubric_with(*criteria: dict[str, Any]) -> str:
    return json.dumps({"name": "r", "criteria": list(criteria)})


OK = {"name": "ok", "kind": "exact_match"}


@pytest.mark.parametrize(
    "text,field,words",
    [
        (rubric_with(OK, OK, {"name": "bad", "kind": "regex", "params": {"pattern": "(unclosed"}}),
         "criteria[2].params.pattern", "criteria[2] 'bad': params.pattern does not compile"),
        (rubric_with(OK, {"name": "big", "kind": "regex", "params": {"pattern": "a" * (MAX_PATTERN_CHARS + 1)}}),
         "criteria[1].params.pattern", f"is {MAX_PATTERN_CHARS + 1} characters long"),
        (rubric_with({"name": "r", "kind": "regex"}), "criteria[0].params.pattern", "params.pattern is required"),
        (rubric_with({"name": "r", "kind": "regex", "params": {"pattern": ""}}), "criteria[0].params.pattern",
         "0 characters long: give the pattern"),
        (rubric_with({"name": "s", "kind": "json_schema",
                      "params": {"schema": {"type": "string", "pattern": "a" * (MAX_PATTERN_CHARS + 1)}}}),
         "criteria[0].params.schema", "has a pattern of"),
        (rubric_with({"name": "w", "kind": "exact_match", "weight": 0}), "criteria[0].weight", "weight must be"),
        (rubric_with({"name": "w", "kind": "exact_match", "weight": True}), "criteria[0].weight", "weight must be"),
        (rubric_with({"name": "k", "kind": "bleu"}), "criteria[0].kind", "is not one: use exact_match"),
        (rubric_with({"name": "t", "kind": "exact_match", "params": {"ignore_cases": True}}),
         "criteria[0].params.ignore_cases", "not a setting of exact_match"),
        (rubric_with({"name": "t", "kind": "exact_match", "params": {"ignore_case": "yes"}}),
         "criteria[0].params.ignore_case", "must be a bool"),
        (rubric_with({"name": "s", "kind": "json_schema", "params": {"schema": {"type": "objekt"}}}),
         "criteria[0].params.schema", "not a JSON Schema"),
        (rubric_with({"name": "s", "kind": "json_schema",
                      "params": {"schema": {"patternProperties": {"(a+)+": {}}}}}),
         "criteria[0].params.schema", "patternProperties"),
        (rubric_with({"name": "s", "kind": "json_schema",
                      "params": {"schema": {"properties": {f"p{i}": {"type": "string"} for i in range(3000)}}}}),
         "criteria[0].params.schema", "characters as JSON"),
        (rubric_with({"name": "f", "kind": "json_field", "params": {"path": "a..b"}}),
         "criteria[0].params.path", "not a dotted path"),
        (rubric_with({"name": "n", "kind": "numeric", "params": {"absolute": -1}}),
         "criteria[0].params.absolute", "must be >= 0"),
        (rubric_with({"name": "m", "kind": "similarity", "params": {"metric": "bleu"}}),
         "criteria[0].params.metric", "not one of ratio"),
        (rubric_with({"name": "j", "kind": "judge", "params": {"judge": "gpt-4o", "instructions": "x"}}),
         "criteria[0].params.judge", "<provider>:<model>"),
        (rubric_with({"name": "j", "kind": "judge", "params": {"judge": "platform:m", "instructions": "x",
                                                                "scale": {"min": 5, "max": 1}}}),
         "criteria[0].params.scale", "min < max"),
        (rubric_with({"name": "j", "kind": "judge", "params": {"judge": "platform:m"}}),
         "criteria[0].params.instructions", "required"),
        (rubric_with(OK, {"name": "ok", "kind": "numeric"}), "criteria[1].name", "another criterion has this name"),
        (rubric_with({"name": "bad name!", "kind": "numeric"}), "criteria[0].name", "not a criterion name"),
        (rubric_with({"name": "x", "kind": "numeric", "wieght": 2}), "criteria[0].wieght", "not a criterion field"),
        (rubric_with(*[{"name": f"c{i}", "kind": "numeric"} for i in range(MAX_CRITERIA + 1)]), "criteria",
         f"give 1 to {MAX_CRITERIA}"),
        (json.dumps({"name": "r", "criteria": []}), "criteria", "a list of criteria"),
        ("name: r\ncriteria: [\n", "rubric", "neither JSON nor YAML at line"),
        ('{"a": ' * 10_000 + "1" + "}" * 10_000, "rubric", "not JSON (nested too deeply)"),
        ("[" * 10_000 + "]" * 10_000, "rubric", "nests too deeply"),
        ("x: " + "a" * 300_000, "rubric", "characters long"),
        ("name: !!python/object:os.system x\ncriteria: []", "rubric", "neither JSON nor YAML"),
    ],
)  # fmt: skip
def test_a_bad_rubric_is_refused_naming_the_criterion_and_field(text, field, words):
    with pytest.raises(InvalidArgument) as err:
        parse_rubric(text)
    assert err.value.field == field and words in err.value.message, err.value.message


def test_a_yaml_alias_bomb_is_refused_before_it_expands():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    started = time.monotonic()
    with pytest.raises(InvalidArgument, match="holds too much"):
        parse_rubric("\n".join(lines) + "\nname: r\ncriteria: [*a8]\n")
    assert time.monotonic() - started < 5


# -- validation on the eval set and weighted totals -------------------------------------------------

ROWS = [Row("2+2?", "4"), Row("3+3?", "6"), Row("10/2?", "5")]


def rubric(*criteria: dict[str, Any]) -> Rubric:
    return Rubric.from_dict({"name": "math", "criteria": list(criteria)})


def test_validation_shows_means_spread_and_weighted_totals():
    r = rubric({"name": "exact", "kind": "exact_match", "weight": 3},
               {"name": "close", "kind": "numeric", "params": {"absolute": 1}})  # fmt: skip
    validation = graders.validate(r, ROWS, ["4", "7", "nine"])
    assert validation.refusal() is None
    shown = validation.to_dict()
    exact, close = shown["criteria"]
    assert (exact["reference_mean"], exact["base_mean"]) == (1.0, pytest.approx(1 / 3))
    assert (close["reference_mean"], close["base_mean"]) == (1.0, pytest.approx(2 / 3))
    assert exact["spread"] == pytest.approx(2 / 3) and exact["weight"] == 3.0
    assert shown["reference_total"] == 1.0
    assert shown["base_total"] == pytest.approx((3 * (1 / 3) + 2 / 3) / 4)
    assert shown["ok"] is True and shown["warnings"] == []
    assert graders.total(r, [1.0, 0.0]) == 0.75 and graders.total(r, [0.0, 1.0]) == 0.25


def test_a_criterion_with_no_spread_is_refused_naming_it():
    r = rubric({"name": "exact", "kind": "exact_match"}, {"name": "has_digit", "kind": "regex",
                                                          "params": {"pattern": r"\d"}})  # fmt: skip
    validation = graders.validate(r, ROWS, ["4", "7", "9"])  # every answer has a digit, references and base alike
    refused = validation.refusal()
    assert refused is not None and refused.field == "rubric.criteria[1]"
    assert "'has_digit' (regex) gives every row the same score (1)" in refused.message
    assert "exact" not in refused.message.split(":", 1)[1].replace("has_digit", "")
    assert validation.to_dict()["ok"] is False
    with pytest.raises(InvalidArgument):
        validation.check()


def test_a_criterion_that_cannot_score_a_row_is_refused_naming_it_and_the_row():
    rows = [Row("a", '{"total": 4}'), Row("b", '{"total": 6}'), Row("c", "six")]
    r = rubric({"name": "exact", "kind": "exact_match"}, {"name": "total", "kind": "json_field",
                                                          "params": {"path": "total"}})  # fmt: skip
    refused = graders.validate(r, rows, ['{"total": 4}', "{}", "6"]).refusal()
    assert refused is not None and refused.field == "rubric.criteria[1]"
    assert "'total' (json_field) cannot score row 2 of the eval references (2 rows in all)" in refused.message
    assert "reference is not JSON" in refused.message


def test_judge_scores_come_onto_zero_to_one_and_a_missing_score_is_a_row_error():
    r = parse_rubric(YAML)
    judge = r.criteria[1]
    request = judges.judge_request(judge, [Row("q1", "ref", "ans")])
    assert (request.teacher, request.scale_min, request.scale_max) == ("platform:judge-model", 1, 5)
    assert request.system_prompt == judge.to_dict()["judge_prompt"]["system"]
    assert request.user_template == JUDGE_USER_TEMPLATE and request.rows[0].answer == "ans"
    response = teacher_pb2.JudgeAnswersResponse(scores=[
        teacher_pb2.JudgeScore(score=5), teacher_pb2.JudgeScore(score=2),
        teacher_pb2.JudgeScore(error="unparseable_reply", message="no score in the judge's reply: 'hmm'"),
    ])  # fmt: skip
    five, two, missing = judges.judge_scores(judge, response, first=10)
    assert (five, two) == (1.0, 0.25)
    assert isinstance(missing, GradeError) and (missing.criterion, missing.row) == ("polite", 12)
    with pytest.raises(ValueError, match="judge criterion"):
        score(judge, Row("q", "r", "a"))
    validation = graders.validate(r, ROWS, ["TICKET-1", "x", "y"], {"polite": Judged([1.0, 1.0, missing], [0.5] * 3)})
    refused = validation.refusal()
    assert refused is not None and refused.field == "rubric.criteria[1]" and "'polite' (judge)" in refused.message


@pytest.mark.parametrize(
    "reply,expected",
    [
        ('{"reason": "clear", "score": 4}', 4.0),
        ('```json\n{"reason": "ok", "score": 3}\n```', 3.0),
        ('Sure. {"reason": "fine", "score": "5"}', 5.0),
        ("Score: 2", 2.0),
        ("The reply is polite. Rating: **4**", 4.0),
        ("I'd say 3/5.", 3.0),
        ("4", 4.0),
        ('{"reason": "it lists 3 steps", "verdict": "good"}', None),  # JSON without a score: not the stray 3
        ("The first reply scores 2 and the second 4 out of 5.", None),
        ("Score: 2. On reflection, score: 4.", None),
        ("a nice answer", None),
        ('{"score": 9}', "out_of_scale"),
        ('{"score": true}', None),
    ],
)
def test_the_teacher_reads_a_score_from_the_judges_reply(reply, expected):
    got, code, message = read_score(reply, 1, 5)
    if expected == "out_of_scale":
        assert (got, code) == (None, "out_of_scale") and "off the scale 1 to 5" in message
    elif expected is None:
        assert (got, code) == (None, "unparseable_reply") and message
    else:
        assert (got, code) == (expected, "")


# -- JudgeAnswers over the real teacher service -----------------------------------------------------

ANSWER = re.compile(r"<answer>\n(.*)\n</answer>", re.DOTALL)


def judging(fake, replies: dict[str, str], tokens: tuple[int, int] = (100, 10)) -> None:
    """The fake judge answers ``replies[answer]`` for the answer its user message holds."""
    fake.responder = lambda c: Answer(text=replies[ANSWER.search(c.user_text).group(1)], input_tokens=tokens[0],
                                      output_tokens=tokens[1])  # fmt: skip


def judge_request(teacher: str = "platform:judge-model", answers: tuple[str, ...] = ("good", "poor")):
    judge = parse_rubric(YAML.replace("platform:judge-model", teacher)).criteria[1]
    return judges.judge_request(judge, [Row(f"ticket {i}", "We are sorry.", a) for i, a in enumerate(answers)])


def test_judge_answers_scores_each_row_and_counts_usage(services, make_tenant, client_for, providers, postgres_url):
    platform = providers["platform"]
    judging(platform, {"good": '{"reason": "polite", "score": 5}', "poor": "Score: 2", "rude": "no idea",
                       "odd": '{"score": 11}'})  # fmt: skip
    tenant = make_tenant()
    reply = client_for(tenant).teacher.JudgeAnswers(judge_request(answers=("good", "poor", "rude", "odd")))

    assert [(s.score, s.error) for s in reply.scores] == [
        (5.0, ""), (2.0, ""), (0.0, "unparseable_reply"), (0.0, "out_of_scale")]  # fmt: skip
    assert reply.scores[1].reply == "Score: 2" and "no score in the judge's reply" in reply.scores[2].message
    assert (reply.usage.requests, reply.usage.input_tokens, reply.usage.output_tokens) == (4, 400, 40)
    assert reply.usage.billed  # the deployment's platform endpoint
    calls = sorted(platform.calls, key=lambda c: c.user_text)
    assert len(calls) == 4 and "Criterion: The reply is polite." in calls[0].system_text
    assert calls[0].user_text.startswith("The task:\n<task>\nticket 0\n</task>")
    assert "<reference>\nWe are sorry.\n</reference>" in calls[0].user_text
    assert calls[0].response_schema is not None and calls[0].body["temperature"] == 0.0
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(
            "SELECT teacher, rows_total, rows_failed, requests, input_tokens, output_tokens, billed"
            " FROM teacher.judge_calls WHERE tenant_id = %s",
            (tenant.tenant_id,),
        ).fetchall()
    assert rows == [("platform:judge-model", 4, 2, 4, 400, 40, True)]


def test_the_tenants_own_key_judges_and_a_row_never_reads_as_a_template(services, make_tenant, client_for, providers):
    client = client_for(make_tenant())
    key = "k-" + secrets.token_urlsafe(20)
    client.teacher.SetProviderKey(teacher_pb2.SetProviderKeyRequest(provider=1, api_key=key, skip_check=True))
    judging(providers["openai"], {"{reference}": "4"})
    reply = client.teacher.JudgeAnswers(judge_request("openai:gpt-4o-mini", answers=("{reference}",)))
    [judged] = reply.scores
    assert (judged.score, judged.error) == (4.0, "")
    assert not reply.usage.billed and reply.usage.estimated_cost_usd > 0  # priced, paid by the tenant's key
    [sent] = providers["openai"].calls
    assert sent.api_key == key and "<answer>\n{reference}\n</answer>" in sent.user_text


def test_judge_answers_refusals_name_the_field(services, make_tenant, client_for, providers):
    client = client_for(make_tenant())
    cases = [
        ({"user_template": "no answer here"}, grpc.StatusCode.INVALID_ARGUMENT, "user_template"),
        ({"system_prompt": "  "}, grpc.StatusCode.INVALID_ARGUMENT, "system_prompt"),
        ({"scale_min": 5, "scale_max": 5}, grpc.StatusCode.INVALID_ARGUMENT, "scale_max"),
        ({"scale_max": 101}, grpc.StatusCode.INVALID_ARGUMENT, "scale_max"),
        ({"teacher": "judge-model"}, grpc.StatusCode.INVALID_ARGUMENT, "teacher"),
        ({"teacher": "anthropic:claude"}, grpc.StatusCode.FAILED_PRECONDITION, "teacher"),  # no key
    ]
    for change, code, field in cases:
        request = judge_request()
        for name, value in change.items():
            setattr(request, name, value)
        got, message, named, _ = refusal(lambda r=request: client.teacher.JudgeAnswers(r))
        assert (got, named) == (code, field), message
    del request.rows[:]
    assert refusal(lambda: client.teacher.JudgeAnswers(request))[2] == "rows"
    request = judge_request(answers=("a",) * 257)
    assert refusal(lambda: client.teacher.JudgeAnswers(request))[:3:2] == (grpc.StatusCode.INVALID_ARGUMENT, "rows")
    assert all(fake.calls == [] for fake in providers.values())


def test_a_judge_that_keeps_failing_is_unavailable_and_a_busy_one_is_retried(
    services, make_tenant, client_for, providers
):
    platform = providers["platform"]
    client = client_for(make_tenant())
    platform.script({"status": 429, "retry_after": 0.05})
    judging(platform, {"good": "5"})
    assert [s.score for s in client.teacher.JudgeAnswers(judge_request(answers=("good",))).scores] == [5.0]
    platform.script(*[{"status": 500}] * 4)  # max_attempts is 4 in tests
    code, message, _, _ = refusal(lambda: client.teacher.JudgeAnswers(judge_request(answers=("good",))))
    assert code == grpc.StatusCode.UNAVAILABLE and "judge did not answer" in message


def test_a_rubric_with_a_programmatic_and_a_judge_criterion_is_validated_through_the_trainers_peer(
    services, make_tenant, providers
):
    """The trainer's path: Peers.judge with the service token for the tenant, judge_all, validate."""
    tenant = make_tenant()
    judging(providers["platform"], {"We are sorry. TICKET-1": '{"reason": "ok", "score": 5}',
                                    "We are sorry. TICKET-2": '{"reason": "ok", "score": 4}',
                                    "go away": '{"reason": "rude", "score": 1}', "TICKET-2 whatever": "3"})  # fmt: skip
    rows = [Row("ticket 1", "We are sorry. TICKET-1"), Row("ticket 2", "We are sorry. TICKET-2")]
    base = ["go away", "TICKET-2 whatever"]

    async def main(r: Rubric) -> graders.Validation:
        peers = Peers(services.address("ingest"), services.address("registry"), services.address("teacher"),
                      services.service_token, 10.0)  # fmt: skip
        try:
            judged = await judges.judge_all(r, rows, base, partial(peers.judge, tenant.tenant_id))
        finally:
            await peers.close()
        return graders.validate(r, rows, base, judged)

    validation = asyncio.run(main(parse_rubric(YAML)))
    assert validation.refusal() is None
    shown = validation.to_dict()
    cites, polite = shown["criteria"]
    assert (cites["reference_mean"], cites["base_mean"]) == (1.0, 0.5)
    assert (polite["reference_mean"], polite["base_mean"]) == (pytest.approx(0.875), pytest.approx(0.25))
    assert shown["reference_total"] == pytest.approx((1.0 + 2 * 0.875) / 3)
    assert shown["judge_usage"]["requests"] == 4

    # A broken rubric: the judge cannot score a base answer ("go away" gets no score now): refused, naming it.
    judging(providers["platform"], {"We are sorry. TICKET-1": "5", "We are sorry. TICKET-2": "4",
                                    "go away": "I will not grade this.", "TICKET-2 whatever": "3"})  # fmt: skip
    refused = asyncio.run(main(parse_rubric(YAML))).refusal()
    assert refused is not None and refused.field == "rubric.criteria[1]"
    assert "'polite' (judge) cannot score row 0 of the base answers" in refused.message
    assert "unparseable_reply" in refused.message
