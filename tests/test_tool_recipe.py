"""The tool-calling recipe: GRPO settings, rendering for a student (its own tool template, and the
fallback), loss masks, the reward dry run, and whole runs: ``run`` called directly (full fine-tune,
SFT then GRPO, against the session's S3 server) and ``python -m services.trainer.recipes.tool_calling``
under a local Ray cluster (LoRA), pushing progress to a real gRPC server and keeping SFT checkpoints in S3;
retried attempts: SFT resumed from a checkpoint, GRPO started from the SFT model an earlier attempt kept
(a worker killed mid-run: tests/test_chaos.py).

The students are tiny random models (``tests/tiny_models.py``). Such a model memorises, it does not
generalise: the SFT test trains on six prompts and evaluates on the same six (``small_task``), so
"correct rate above the base" checks the recipe's mechanics (format, masks, evaluation), not the
quality of distillation, which the bench with a real small model measures.
"""

from __future__ import annotations

import ast
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from transformers import TrainerCallback

from distillery.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from services.common import tool_format
from services.common.errors import InvalidArgument
from services.common.objects import ObjectStore
from services.common.settings import S3Settings
from services.common.tool_calls import Call, check_call, parse_output, tools_by_name
from services.trainer.recipes import tool_calling, tool_data, tool_eval, tool_grpo, tool_resume, trl_configs
from services.trainer.recipes.failures import RunFailure
from services.trainer.recipes.grpo_settings import GrpoSettings, resolve_grpo
from services.trainer.recipes.job_spec import JobSpec
from services.trainer.recipes.sft_settings import resolve_sft
from tests.tiny_models import build_llama, build_qwen2

ROOT = Path(__file__).resolve().parents[1]
TOOLS = [
    {
        "name": "get_weather", "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "units": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        }, "required": ["city"]},
    },
    {
        "name": "get_time", "description": "The local time in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
    {
        "name": "convert", "description": "Convert an amount between currencies.",
        "parameters": {"type": "object", "properties": {
            "amount": {"type": "number"}, "to": {"type": "string", "enum": ["EUR", "USD", "JPY"]},
        }, "required": ["amount", "to"]},
    },
]  # fmt: skip
CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Rome"]
SYSTEM = "You call tools when they help; answer directly otherwise."


def call_row(user: str, name: str, arguments: dict[str, Any], result: str, answer: str, n: int) -> dict[str, Any]:
    call = {"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
    return {"messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": user},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"call_{n}", "name": name, "content": result},
        {"role": "assistant", "content": answer},
    ], "tools": TOOLS}  # fmt: skip


def text_row(user: str, answer: str) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user},
                {"role": "assistant", "content": answer}]  # fmt: skip
    return {"messages": messages, "tools": TOOLS}


def tool_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """40 train and 10 eval rows over three tools, 15 of the 50 wanting no call."""
    rows = []
    for i, city in enumerate(CITIES):
        rows.append(call_row(f"Weather in {city}?", "get_weather", {"city": city}, '{"temp": 21}', "It is 21.", i))
        rows.append(call_row(f"What is the weather in {city} in celsius?", "get_weather",
                             {"city": city, "units": "celsius"}, '{"temp": 21}', "21 degrees.", 10 + i))  # fmt: skip
        rows.append(
            call_row(f"Time in {city}?", "get_time", {"city": city}, '{"time": "10:00"}', "It is 10:00.", 20 + i)
        )
        rows.append(
            call_row(f"What time is it in {city}?", "get_time", {"city": city}, '{"time": "9:30"}', "9:30.", 30 + i)
        )
        rows.append(call_row(f"Weather in {city} in fahrenheit?", "get_weather", {"city": city, "units": "fahrenheit"},
                             '{"temp": 70}', "70 degrees.", 50 + i))  # fmt: skip
    pairs = [(5, "EUR"), (12, "USD"), (30, "JPY"), (7, "EUR"), (64, "USD"), (3, "JPY"), (9, "USD"), (100, "EUR"),
             (2.5, "USD"), (48, "JPY")]  # fmt: skip
    for i, (amount, to) in enumerate(pairs):
        rows.append(call_row(f"Convert {amount} to {to}.", "convert", {"amount": amount, "to": to}, '{"value": 3}',
                             "That is 3.", 40 + i))  # fmt: skip
    for user, answer in [("Hello!", "Hello! How can I help?"), ("Thanks.", "You are welcome."),
                         ("Who are you?", "An assistant."), ("Say hi.", "Hi!"), ("Good night.", "Good night!"),
                         ("How are you?", "Fine, thanks."), ("Bye.", "Goodbye!"), ("Tell me a word.", "Apple."),
                         ("Ok.", "Ok."), ("Nice.", "Glad you think so."),
                         ("Good morning.", "Good morning!"), ("What is 2+2?", "4."), ("Cheers.", "Cheers!"),
                         ("Help.", "Sure, ask away."), ("Sorry.", "No problem.")]:  # fmt: skip
        rows.append(text_row(user, answer))
    random.Random(3).shuffle(rows)
    return rows[:40], rows[40:]


def assert_valid(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        for message in row["messages"]:
            for call in message.get("tool_calls") or []:
                arguments = json.loads(call["function"]["arguments"])
                assert not check_call(Call(call["function"]["name"], arguments), tools_by_name(row["tools"]))


def small_task() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Six prompts, four wanting a call, each trained on six times; the eval asks the same prompts."""
    calls = [("Weather in Paris?", "get_weather", {"city": "Paris"}),
             ("What time is it in Lima?", "get_time", {"city": "Lima"}),
             ("Weather in Tokyo in celsius?", "get_weather", {"city": "Tokyo", "units": "celsius"}),
             ("Convert 5 to EUR.", "convert", {"amount": 5, "to": "EUR"})]  # fmt: skip
    texts = [("Hello!", "Hello! How can I help?"), ("Thanks.", "You are welcome.")]
    prompts = [call_row(user, name, args, '{"ok": true}', "Done.", i) for i, (user, name, args) in enumerate(calls)]
    prompts += [text_row(user, answer) for user, answer in texts]
    return prompts * 6, prompts


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def store(s3_settings: S3Settings) -> ObjectStore:
    store = ObjectStore(s3_settings)
    store.ensure_bucket()
    return store


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny tokenizers: with a tool template (native path) and plain ChatML (fallback)."""
    from transformers import AutoTokenizer

    from tests.tiny_models import build_tokenizer

    out = {}
    for name, tools in (("native", True), ("fallback", False)):
        directory = tmp_path_factory.mktemp(f"tokenizer-{name}")
        build_tokenizer(directory, tools=tools)
        out[name] = AutoTokenizer.from_pretrained(directory)
    return out


# --- the skeleton ---


def imported_modules(path: Path) -> set[str]:
    """The modules a source file imports (``from a.b import c`` counts as ``a.b`` and ``a.b.c``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_each_recipe_is_one_module_on_the_shared_skeleton() -> None:
    """No module under recipes/ imports a recipe (the modules the pipeline runs) other than itself, no trainer
    module passes 400 lines, and the trainer's modules import each other one way (no cycle)."""
    from services.trainer import pipeline

    recipes = set(pipeline.RECIPES.values())
    assert recipes == {
        "services.trainer.recipes.sft",
        "services.trainer.recipes.tool_calling",
        "services.trainer.recipes.speech",
        "services.trainer.recipes.ocr",
    }
    trainer = ROOT / "services" / "trainer"
    for path in sorted(trainer.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if path.parent.name == "recipes":
            assert not (imported_modules(path) & recipes) - {module}, f"{module} imports another recipe"
        assert len(path.read_text().splitlines()) <= 400, f"{module} passes 400 lines: split it by what it holds"

    graph = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts): imported_modules(p) for p in trainer.rglob("*.py")
    }  # fmt: skip
    graph = {m: {i for i in imports if i in graph and i != m} for m, imports in graph.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and not seen.add(n) and reaches(n, goal, seen)) for n in graph[start])

    cycles = sorted(m for m in graph if reaches(m, m, set()))
    assert not cycles, f"these trainer modules import each other in a cycle: {cycles}"
    assert "services.trainer.pipeline" not in graph["services.trainer.generation"]


# --- settings ---


def test_resolve_grpo_fills_defaults_and_checks_values() -> None:
    assert resolve_grpo({}) == GrpoSettings(learning_rate=5e-5)
    settings = resolve_grpo({})
    assert (settings.num_generations, settings.max_completion_length, settings.beta, settings.max_steps) == (
        4,
        128,
        0.0,
        30,
    )
    assert settings.temperature == 1.0 and settings.completions_per_step == 8
    assert resolve_grpo({}, full_finetune=True).learning_rate == 5e-6
    assert resolve_grpo({"learning_rate": 1e-4}, full_finetune=True).learning_rate == 1e-4
    settings = resolve_grpo({"num_generations": "8", "beta": 0.04, "max_steps": 12.0, "max_completion_length": 0})
    assert (settings.num_generations, settings.beta, settings.max_steps, settings.max_completion_length) == (
        8,
        0.04,
        12,
        128,
    )
    assert GrpoSettings(**json.loads(json.dumps(settings.__dict__))) == settings  # the spec round-trips
    bad = [
        ({"num_generations": 1}, "grpo.num_generations", "at least 2"),
        ({"num_generations": 65}, "grpo.num_generations", ""),
        ({"beta": -0.1}, "grpo.beta", "e.g. 0"), ({"learning_rate": 2.0}, "grpo.learning_rate", "(0, 1]"),
        ({"max_steps": -3}, "grpo.max_steps", ""), ({"temperature": 3.0}, "grpo.temperature", "(0, 2]"),
        ({"max_completion_length": 100_000}, "grpo.max_completion_length", ""), ({"seed": 3}, "grpo.seed", ""),
        ({"num_generations": "four"}, "grpo.num_generations", "whole number"), ({"beta": True}, "grpo.beta", "number"),
    ]  # fmt: skip
    for request, field, words in bad:
        with pytest.raises(InvalidArgument) as info:
            resolve_grpo(request)
        assert info.value.field == field and words in str(info.value), request


# --- rendering for the student ---


REFUSES_TOOL_ROLE = (
    "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tool role') }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
USER_AND_ASSISTANT_ONLY = (  # like Gemma's: no system role, no tool role, turns alternate
    "{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role') }}"
    "{% endif %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('alternate') }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
BARE_JSON_CALLS = (  # renders tools and calls, but as bare JSON (Llama 3.1 style), which parse_output does not read
    "{% if tools %}{{ tools | tojson }}{% endif %}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m.tool_calls %}{{ m.tool_calls[0].function | tojson }}{% else %}{{ m['content'] }}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_detect_takes_the_native_template_only_when_its_calls_parse_back(tokenizers: dict[str, Any]) -> None:
    import copy

    assert tool_format.detect(tokenizers["native"]) == tool_format.ToolFormat(native=True)
    assert tool_format.detect(tokenizers["fallback"]) == tool_format.ToolFormat(native=False, tool_role="tool")
    refusing, bare, strict, broken = (copy.deepcopy(tokenizers["fallback"]) for _ in range(4))
    refusing.chat_template, bare.chat_template = REFUSES_TOOL_ROLE, BARE_JSON_CALLS
    strict.chat_template, broken.chat_template = USER_AND_ASSISTANT_ONLY, "{{ raise_exception('no') }}"
    assert tool_format.detect(refusing) == tool_format.ToolFormat(native=False, tool_role="user")
    assert tool_format.detect(bare).native is False
    assert tool_format.detect(strict) == tool_format.ToolFormat(native=False, tool_role="user", system_role=False)
    assert "native" in tool_format.ToolFormat(native=True).note
    assert "<tool_response>" in tool_format.ToolFormat(native=False, tool_role="user").note
    assert "first user message" in tool_format.detect(strict).note

    # a template that renders nothing: the run stops, naming the student model
    with pytest.raises(tool_format.RenderError):
        tool_format.tokenize(tool_format.detect(broken), broken, tool_rows()[0][0]["messages"], TOOLS)
    with pytest.raises(RunFailure) as info:
        tool_data.eval_examples(tool_rows()[1], tool_format.detect(broken), broken)
    assert (info.value.code, info.value.field) == ("unknown_model", "student_model")
    assert "cannot render tool conversations" in info.value.message


def assistant_turns(tokenizer: Any, ids: list[int], mask: list[int]) -> list[str]:
    """The decoded runs of masked-in tokens: one per assistant turn."""
    runs: list[list[int]] = []
    for i, (token, bit) in enumerate(zip(ids, mask, strict=True)):
        if bit and (i == 0 or not mask[i - 1]):
            runs.append([])
        if bit:
            runs[-1].append(token)
    return [tokenizer.decode(run, skip_special_tokens=True) for run in runs]


@pytest.mark.parametrize("path", ["native", "fallback", "fallback-user", "fallback-strict"])
def test_every_assistant_turn_is_trained_and_its_calls_parse_back(tokenizers: dict[str, Any], path: str) -> None:
    import copy

    tokenizer = tokenizers[path.split("-")[0]]
    if path in ("fallback-user", "fallback-strict"):
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.chat_template = REFUSES_TOOL_ROLE if path == "fallback-user" else USER_AND_ASSISTANT_ONLY
    fmt = tool_format.detect(tokenizer)
    assert fmt.name == path.split("-")[0]
    rows, _ = tool_rows()
    assert_valid(rows)
    parallel = call_row("Weather in Oslo and Rome?", "get_weather", {"city": "Oslo"}, "rain", "Rain in both.", 90)
    second = {"id": "call_91", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}
    parallel["messages"][2]["tool_calls"].append(second)
    parallel["messages"].insert(
        4, {"role": "tool", "tool_call_id": "call_91", "name": "get_weather", "content": "rain"}
    )
    for row in [*rows, parallel]:
        ids, mask = tool_format.tokenize(fmt, tokenizer, row["messages"], row["tools"])
        turns = assistant_turns(tokenizer, ids, mask)
        wanted = [m for m in row["messages"] if m["role"] == "assistant"]
        assert len(turns) == len(wanted)
        for turn, message in zip(turns, wanted, strict=True):
            parsed = parse_output(turn)
            assert parsed.ok, turn
            assert parsed.calls == tool_format.calls_of(message), turn
            if not message.get("tool_calls"):
                assert parsed.text == message["content"]
        # what is not trained: the system prompt with the tools, the user's words, the tool results
        context = tokenizer.decode([t for t, bit in zip(ids, mask, strict=True) if not bit])
        assert row["messages"][1]["content"] in context and "get_time" in context
        assert "<tool_call>" not in "".join(turns) or any(m.get("tool_calls") for m in wanted)
        for message in row["messages"]:
            if message["role"] == "tool":
                assert message["content"] in context
    if path != "native":  # two results in a row: one user message, two wrapped results
        rendered = tool_format.template_messages(fmt, parallel["messages"], TOOLS)
        roles = ["user", "assistant", "user", "assistant"] if fmt.tool_role == "user" else None
        if roles is not None:
            assert [m["role"] for m in rendered] == (["system"] if fmt.system_role else []) + roles
            assert rendered[-2]["content"].count("<tool_response>") == 2
        first_user = next(m for m in rendered if m["role"] == "user")
        assert first_user["content"].endswith("Weather in Oslo and Rome?")
        assert ("<tools>" in first_user["content"]) is not fmt.system_role


def test_the_system_prompt_kept_with_the_model_is_the_one_every_row_shares() -> None:
    train, _ = tool_rows()
    assert tool_data.shared_system_prompt(train) == SYSTEM  # Generate puts it first when a request has none
    other = text_row("Hi.", "Hello.")
    other["messages"][0]["content"] = "Be terse."
    assert tool_data.shared_system_prompt([*train, other]) == ""
    assert tool_data.shared_system_prompt([*train, {**other, "messages": other["messages"][1:]}]) == ""


def test_prompts_stop_before_the_first_assistant_turn(tokenizers: dict[str, Any]) -> None:
    rows, _ = tool_rows()
    call = next(r for r in rows if len(r["messages"]) > 3)
    text = next(r for r in rows if len(r["messages"]) == 3)
    for name, tokenizer in tokenizers.items():
        fmt = tool_format.detect(tokenizer)
        examples = tool_data.eval_examples([call, text], fmt, tokenizer)
        arguments = json.loads(call["messages"][2]["tool_calls"][0]["function"]["arguments"])
        assert examples["expected"] == [
            [{"name": call["messages"][2]["tool_calls"][0]["function"]["name"], "arguments": arguments}],
            [],
        ]
        for prompt, row in zip(examples["prompts"], [call, text], strict=True):
            assert prompt.endswith("<|im_start|>assistant\n"), name
            assert row["messages"][1]["content"] in prompt and "convert" in prompt  # the tools are in the prompt
            assert row["messages"][-1]["content"] not in prompt
        grpo = tool_data.grpo_rows([call], fmt, tokenizer)[0]
        assert grpo["prompt"] == examples["prompts"][0]
        assert json.loads(grpo["expected_calls"]) == examples["expected"][0] and json.loads(grpo["tools"]) == TOOLS


def test_trl_trains_on_the_assistant_turns_only(tokenizers: dict[str, Any], tmp_path: Path) -> None:
    """The pre-tokenized rows reach trl 1.16's SFTTrainer as labels: -100 outside the assistant turns."""
    from transformers import AutoModelForCausalLM

    student = build_llama(tmp_path / "llama", tools=True)
    tokenizer = tokenizers["native"]
    fmt = tool_format.detect(tokenizer)
    rows, _ = tool_rows()
    train_set, left_out = tool_data.sft_rows(rows[:4], fmt, tokenizer, 2048, "train")
    assert left_out == 0
    settings = resolve_sft({"max_steps": 1, "full_finetune": True})
    trainer = tool_calling.sft_trainer(
        AutoModelForCausalLM.from_pretrained(student),
        None,
        tokenizer,
        train_set,
        train_set,
        settings,
        tmp_path,
        False,
        False,
    )
    for prepared, row in zip(trainer.train_dataset, train_set, strict=True):
        assert prepared["input_ids"] == row["input_ids"]
        assert [label != -100 for label in prepared["labels"]] == [bool(bit) for bit in row["assistant_masks"]]
    with pytest.raises(RunFailure) as info:
        tool_data.sft_rows(rows[:4], fmt, tokenizer, 50, "train")
    assert info.value.code == "invalid_dataset" and "sft.max_seq_length=50" in info.value.message


# --- the reward dry run ---


def test_the_reward_dry_run_refuses_rewards_without_variance(tmp_path: Path) -> None:
    """A random student never comes near a call: every completion of a prompt gets the same reward."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student = build_llama(tmp_path / "llama")
    tokenizer = AutoTokenizer.from_pretrained(student)
    model = AutoModelForCausalLM.from_pretrained(student)
    rows = tool_data.grpo_rows(tool_rows()[0], tool_format.detect(tokenizer), tokenizer)
    settings = GrpoSettings(num_generations=3, max_completion_length=12, temperature=0.7)
    with pytest.raises(RunFailure) as info:
        tool_grpo.reward_dry_run(model, tokenizer, rows, settings, seed=0)
    assert (info.value.code, info.value.field) == ("rewards_without_variance", "grpo.temperature")
    for words in (
        "3 completions for each of 4 training prompts",
        "seed prompts",
        "grpo.temperature",
        "grpo.num_generations",
    ):
        assert words in info.value.message

    # the same totals GRPO would see: a right call scores more than a wrong one
    row = next(r for r in rows if json.loads(r["expected_calls"]))
    wanted = json.loads(row["expected_calls"])[0]
    right = f"<tool_call>\n{json.dumps(wanted)}\n</tool_call>"
    assert tool_grpo.total_rewards([row, row, row], [right, "It is sunny.", "<tool_call>{"]) == [5.5, 0.5, 0.5]


# --- GRPO learns ---


def noisy_teacher_task() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One prompt, "Weather in Paris?", from a teacher that calls the wrong tool (get_time) two times in three: six
    SFT rows, four of them wrong, and the right row, whose expected call (get_weather) GRPO's rewards compare with."""
    right = call_row("Weather in Paris?", "get_weather", {"city": "Paris"}, '{"temp": 21}', "It is 21.", 0)
    wrong = call_row("Weather in Paris?", "get_time", {"city": "Paris"}, '{"time": "9:30"}', "It is 9:30.", 1)
    right["tools"] = wrong["tools"] = TOOLS[:2]  # the two tools in question: a shorter prompt
    return [right, wrong, wrong] * 2, [right]


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread: a tiny model gains nothing from two, and on a busy machine two threads wait for each
    other (the test below took 7.5 minutes with two, 1 minute with one, beside another CPU-bound process)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_torch_thread")
def test_grpo_raises_the_reward_where_sft_on_a_noisy_teacher_left_room(tmp_path: Path) -> None:
    """GRPO learns, not only runs: SFT on ``noisy_teacher_task`` gives a student that, like its teacher, often calls
    get_time (its calls parse: the format is learnt), and 40 GRPO steps rewarded against the right call raise the
    mean total reward of its samples (5.5 a right call, 2.5 get_time) from the first quarter of the steps to the
    last. With a near-zero learning rate the rewards stay where SFT left them, and this fails."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    student = build_qwen2(tmp_path / "qwen2", tools=True)
    tokenizer = AutoTokenizer.from_pretrained(student)
    fmt = tool_format.detect(tokenizer)
    train, right = noisy_teacher_task()
    train_set, _ = tool_data.sft_rows(train, fmt, tokenizer, 2048, "train")
    sft = resolve_sft({"max_steps": 200, "learning_rate": 1e-2, "batch_size": 4, "full_finetune": True, "seed": 1})
    model = AutoModelForCausalLM.from_pretrained(student)
    trainer = tool_calling.sft_trainer(model, None, tokenizer, train_set, train_set, sft, tmp_path, False, False)
    trainer.train()
    model = tool_grpo.grpo_start(trainer.model, tmp_path / "sft")

    # 16 samples of the prompt a step at temperature 1. The learning rate is half of what wrecks this tiny model's
    # format in a step or two (1.4e-3 did with one seed in three, 2e-3 with every seed tried), after which every
    # sample gets the same reward and nothing is learnt
    grpo = GrpoSettings(num_generations=16, prompts_per_step=1, max_completion_length=40, learning_rate=7e-4,
                        max_steps=40)  # fmt: skip
    rows = tool_data.grpo_rows(right, fmt, tokenizer)
    _, metrics = tool_grpo.grpo_train(model, tokenizer, rows, grpo, 1, tmp_path, False, False, [])
    first, last = metrics["grpo_reward_first_quarter"], metrics["grpo_reward_last_quarter"]
    print(f"GRPO mean reward: first quarter {first:.2f}, last quarter {last:.2f}; {time.monotonic() - started:.0f} s")
    assert metrics["grpo_steps"] == 40
    assert 2.5 < first < 4.5  # SFT left room: many samples call get_time
    assert last > first + 0.5  # a sixth of the gap between a right and a wrong call: some 17 points more right calls


# --- whole runs ---


def put_spec(
    store: ObjectStore, run_id: str, student: str, train: list[dict[str, Any]], evals: list[dict[str, Any]],
    sft: dict[str, Any], grpo: dict[str, Any] | None,
) -> JobSpec:  # fmt: skip
    prefix = f"tenants/ten_test/runs/{run_id}"
    store.put_bytes(f"tenants/ten_test/splits/{run_id}/train.jsonl", jsonl(train))
    store.put_bytes(f"tenants/ten_test/splits/{run_id}/eval.jsonl", jsonl(evals))
    full = bool(sft.get("full_finetune"))
    spec = JobSpec(
        run_id=run_id, tenant_id="ten_test", student_model=student,
        train_key=f"tenants/ten_test/splits/{run_id}/train.jsonl",
        eval_key=f"tenants/ten_test/splits/{run_id}/eval.jsonl", output_prefix=prefix, sft=resolve_sft(sft),
        grpo=None if grpo is None else resolve_grpo(grpo, full_finetune=full), num_workers=1, use_gpu=False,
    )  # fmt: skip
    store.put_bytes(f"{prefix}/spec.json", spec.to_json().encode(), "application/json")
    return spec


def read(store: ObjectStore, key: str) -> Any:
    return json.loads(store.get_bytes(key))


def objects(store: ObjectStore, prefix: str) -> set[str]:
    found = store.client.list_objects(store.bucket, prefix=prefix, recursive=True)
    return {o.object_name.removeprefix(prefix) for o in found}


@pytest.fixture(scope="module")
def full_run(store: ObjectStore, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``run`` itself (no Ray): a full fine-tune of a tiny Qwen2 with a tool template on ``small_task``, 200 SFT
    steps, then 3 GRPO steps with a KL penalty; returns the spec, the result, the time and the model's directory."""
    root = tmp_path_factory.mktemp("full-run")
    student = build_qwen2(root / "qwen2", tools=True)
    train, evals = small_task()
    sft = {"max_steps": 200, "learning_rate": 5e-3, "batch_size": 4, "full_finetune": True, "seed": 2,
           "eval_every_steps": -1}  # fmt: skip
    grpo = {"max_steps": 3, "num_generations": 4, "prompts_per_step": 2, "max_completion_length": 40, "beta": 0.04}
    spec = put_spec(store, "run_tools_full", str(student), train, evals, sft, grpo)
    started = time.monotonic()
    tool_calling.run(spec, store, root / "work")
    elapsed = time.monotonic() - started
    model_dir = root / "trained"
    prefix = f"{spec.output_prefix}/model/"
    for name in objects(store, prefix):
        store.client.fget_object(store.bucket, prefix + name, str(model_dir / name))
    return {"spec": spec, "result": read(store, f"{spec.output_prefix}/result.json"), "seconds": elapsed,
            "model_dir": model_dir}  # fmt: skip


def test_sft_teaches_the_call_format_and_grpo_runs_after_it(full_run: dict[str, Any]) -> None:
    result, spec = full_run["result"], full_run["spec"]
    metrics = result["metrics"]
    print(f"full run: {full_run['seconds']:.1f} s; {json.dumps(metrics)}")
    assert metrics["train_rows"] == 36 and metrics["eval_prompts"] == 6 and metrics["eval_call_prompts"] == 4
    assert metrics["steps"] == 200 and metrics["eval_loss_after"] < metrics["eval_loss_before"] / 5
    assert metrics["base_args_match_rate"] == 0.0 and metrics["sft_args_match_rate"] >= 0.5
    assert metrics["sft_correct_rate"] > metrics["base_correct_rate"]
    assert metrics["sft_valid_call_rate"] == 1.0
    for stage in ("base", "sft", "grpo"):
        assert {f"{stage}_{rate}" for rate in tool_eval.RATES} <= set(metrics)
    # the reward dry run found groups to learn from; GRPO ran its steps and timed them
    assert metrics["dry_run_prompts"] == 4 and metrics["dry_run_groups_with_variance"] >= 1
    assert metrics["grpo_steps"] == 3
    assert metrics["grpo_generation_s_per_step"] > 0 and metrics["grpo_training_s_per_step"] > 0
    assert result["artifact_kind"] == "full_weights"
    assert result["artifact_uri"] == f"s3://test-bucket/{spec.output_prefix}/model/"
    config = result["training_config"]
    assert config["tool_format"] == "native" and config["grpo"]["beta"] == 0.04 and config["sft"]["full_finetune"]
    names = {p.name for p in full_run["model_dir"].iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "training_config.json"} <= names


def test_the_trained_model_answers_with_calls_that_parse(full_run: dict[str, Any]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(full_run["model_dir"])
    tokenizer = AutoTokenizer.from_pretrained(full_run["model_dir"])
    _, evals = small_task()
    examples = tool_data.eval_examples(evals, tool_format.detect(tokenizer), tokenizer)
    outputs = tool_eval.generate(model, tokenizer, examples["prompts"], max_new_tokens=64)
    parsed = [parse_output(output) for output in outputs]
    assert sum(bool(p.calls) for p in parsed[:4]) >= 3, outputs
    scores = tool_eval.evaluate(model, tokenizer, examples, 64, "again")
    assert scores["again_correct_rate"] == full_run["result"]["metrics"]["grpo_correct_rate"]


def test_a_run_whose_rewards_cannot_vary_ends_in_error_json(store: ObjectStore, tmp_path: Path) -> None:
    """``attempt`` (what the Ray worker runs) writes the dry run's refusal, and no result."""
    student = build_llama(tmp_path / "llama")  # random, ChatML without tools: the fallback format
    train, evals = tool_rows()
    grpo = {"max_steps": 2, "num_generations": 2, "max_completion_length": 8, "temperature": 0.05}
    spec = put_spec(store, "run_tools_flat", str(student), train, evals, {"max_steps": 2}, grpo)
    tool_calling.attempt(spec, store)
    error = read(store, f"{spec.output_prefix}/error.json")
    assert (error["code"], error["field"]) == ("rewards_without_variance", "grpo.temperature")
    assert "raise grpo.temperature" in error["message"]
    assert "result.json" not in objects(store, spec.output_prefix + "/")


def test_an_sft_only_run_keeps_the_adapter_and_reports_no_grpo(store: ObjectStore, tmp_path: Path) -> None:
    student = build_llama(tmp_path / "llama")
    train, evals = tool_rows()
    spec = put_spec(store, "run_tools_sft", str(student), train, evals, {"max_steps": 2, "batch_size": 2}, None)
    tool_calling.attempt(spec, store)
    result = read(store, f"{spec.output_prefix}/result.json")
    metrics = result["metrics"]
    assert result["artifact_kind"] == "lora_adapter" and result["training_config"]["grpo"] is None
    assert result["training_config"]["tool_format"] == "fallback" and metrics["steps"] == 2
    assert metrics["train_rows"] == 40 and metrics["eval_prompts"] == 10
    assert {"base_correct_rate", "sft_correct_rate", "eval_loss_before", "eval_loss_after"} <= set(metrics)
    assert not any(name.startswith(("grpo_", "dry_run_")) for name in metrics)
    assert "adapter_model.safetensors" in objects(store, f"{spec.output_prefix}/model/")


class LogLines:
    """What ``progress.stage_log`` sends, where a ``ProgressPush`` would queue it."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def put(self, event: trainer_pb2.RunEvent) -> None:
        self.lines.append(event.log.text)


class Steps(TrainerCallback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.steps.append(state.global_step)


def test_a_retried_sft_resumes_from_the_last_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``tool_resume.train`` in a retried attempt of a Ray Train job: training goes on from the checkpoint Ray Train
    hands back (here one the first trainer saved, in the layout ``RayTrainReportCallback`` reports), and the run
    event says from which step. The whole path, a worker killed: tests/test_chaos.py."""
    import ray.train
    from ray.train.huggingface.transformers import RayTrainReportCallback
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student = build_llama(tmp_path / "llama")
    tokenizer = AutoTokenizer.from_pretrained(student)
    train_set, _ = tool_data.sft_rows(tool_rows()[0], tool_format.detect(tokenizer), tokenizer, 2048, "train")
    settings = resolve_sft({"max_steps": 6, "batch_size": 2, "checkpoint_every_steps": 4, "eval_every_steps": -1})

    def trainer(workdir: Path) -> Any:
        model = AutoModelForCausalLM.from_pretrained(student)
        return tool_calling.sft_trainer(model, trl_configs.lora_config(settings), tokenizer, train_set, train_set[:2],
                                        settings, workdir, False, False, checkpoints=True)  # fmt: skip

    first = trainer(tmp_path / "first")
    first.train()
    saved = sorted(p.name for p in (tmp_path / "first" / "sft-out").glob("checkpoint-*"))
    assert saved == ["checkpoint-4", "checkpoint-6"]  # at the cadence, and the last step
    reported = tmp_path / "reported"
    shutil.copytree(tmp_path / "first" / "sft-out" / "checkpoint-4", reported / RayTrainReportCallback.CHECKPOINT_NAME)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint.from_directory(str(reported)))
    second, lines, steps = trainer(tmp_path / "second"), LogLines(), Steps()
    second.add_callback(steps)
    tool_resume.train(second, lines, ray_train=True)  # type: ignore[arg-type]
    assert lines.lines == ["resuming from the checkpoint at step 4"]
    assert steps.steps == [5, 6] and second.state.global_step == 6
    lines = LogLines()
    tool_resume.train(trainer(tmp_path / "direct"), lines, ray_train=False)  # no Ray: no checkpoint to look for
    assert lines.lines == []


def test_an_attempt_retried_during_grpo_starts_it_from_the_kept_sft_model(
    store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry after SFT finished (here the first attempt's reward dry run raised) evaluates neither the base nor
    the SFT model again and trains no SFT: GRPO starts from the SFT adapter the first attempt kept."""
    student = build_llama(tmp_path / "llama")
    train, evals = tool_rows()
    sft = {"max_steps": 2, "batch_size": 2, "eval_every_steps": -1}
    grpo = {"max_steps": 1, "num_generations": 2, "max_completion_length": 8}
    spec = put_spec(store, "run_tools_retried", str(student), train, evals, sft, grpo)

    def lost(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the worker was lost")

    monkeypatch.setattr(tool_calling, "reward_dry_run", lost)
    with pytest.raises(RuntimeError, match="the worker was lost"):
        tool_calling.run(spec, store, tmp_path / "first")
    kept = read(store, f"{spec.output_prefix}/sft/sft.json")
    assert kept["steps"] == 2 and {"base_correct_rate", "sft_correct_rate", "eval_loss_after"} <= set(kept["metrics"])
    assert "adapter_model.safetensors" in objects(store, f"{spec.output_prefix}/sft/model/")
    assert "result.json" not in objects(store, spec.output_prefix + "/")

    stages: list[str] = []
    started_from: list[dict[str, Any]] = []
    evaluate, grpo_train = tool_calling.evaluate, tool_calling.grpo_train

    def evaluated(*args: Any, **kwargs: Any) -> dict[str, float]:
        stages.append(kwargs["stage"] if "stage" in kwargs else args[4])
        return evaluate(*args, **kwargs)

    def grpo_from(model: Any, *args: Any) -> Any:
        started_from.append({n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n})
        return grpo_train(model, *args)

    monkeypatch.setattr(tool_calling, "evaluate", evaluated)
    monkeypatch.setattr(tool_calling, "sft_trainer", lambda *args, **kwargs: pytest.fail("SFT trained again"))
    monkeypatch.setattr(tool_calling, "reward_dry_run", lambda *args, **kwargs: {})
    monkeypatch.setattr(tool_calling, "grpo_train", grpo_from)
    tool_calling.run(spec, store, tmp_path / "second")
    result = read(store, f"{spec.output_prefix}/result.json")
    assert "base" not in stages and "sft" not in stages and "grpo" in stages, stages
    metrics = result["metrics"]
    assert metrics["steps"] == 2 and metrics["grpo_steps"] == 1
    assert {k: metrics[k] for k in kept["metrics"]} == kept["metrics"]
    # the adapter SFT trained (LoRA's B matrices start at zero), not a fresh one
    assert started_from and any(float(p.abs().sum()) > 0 for p in started_from[0].values())
    assert result["artifact_kind"] == "lora_adapter"


class Recorder(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self) -> None:
        self.events: list[trainer_pb2.RunEvent] = []
        self.tokens: set[str] = set()

    def ReportRunEvents(self, request: Any, context: Any) -> trainer_pb2.ReportRunEventsResponse:
        self.events.extend(request.events)
        self.tokens.add(dict(context.invocation_metadata()).get("authorization", ""))
        return trainer_pb2.ReportRunEventsResponse(keep_going=True)


@pytest.fixture
def recorder() -> Iterator[tuple[Recorder, str]]:
    recorder = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trainer_pb2_grpc.add_TrainerServiceServicer_to_server(recorder, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield recorder, f"127.0.0.1:{port}"
    server.stop(0)


def test_the_ray_job_trains_a_lora_adapter_through_grpo_and_pushes_progress(
    store: ObjectStore, s3_settings: S3Settings, full_run: dict[str, Any], recorder: tuple[Recorder, str]
) -> None:
    """``python -m services.trainer.recipes.tool_calling`` as the pipeline submits it: a one-worker Ray Train job,
    LoRA on the student trained above (so its samples differ in reward), GRPO with a KL penalty."""
    server, address = recorder
    train, evals = small_task()
    sft = {"max_steps": 6, "learning_rate": 1e-4, "batch_size": 4, "seed": 1, "eval_every_steps": 2,
           "checkpoint_every_steps": 3}  # fmt: skip
    grpo = {"max_steps": 2, "num_generations": 4, "prompts_per_step": 1, "max_completion_length": 40, "beta": 0.04}
    spec = put_spec(store, "run_tools_lora", str(full_run["model_dir"]), train, evals, sft, grpo)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DISTILLERY_"))}
    env.update({
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
        "RAY_JOB_STOP_SIGNAL": "SIGINT",
        "DISTILLERY_S3_ENDPOINT": s3_settings.endpoint, "DISTILLERY_S3_ACCESS_KEY": s3_settings.access_key,
        "DISTILLERY_S3_SECRET_KEY": s3_settings.secret_key, "DISTILLERY_S3_BUCKET": s3_settings.bucket,
        "DISTILLERY_S3_SECURE": "false", "DISTILLERY_TRAINER_ADDRESS": address, "DISTILLERY_RUN_TOKEN": "run-token",
    })  # fmt: skip
    started = time.monotonic()
    command = ["-m", "services.trainer.recipes.tool_calling", "--spec-key", f"{spec.output_prefix}/spec.json"]
    proc = subprocess.run(
        [sys.executable, *command],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    print(f"LoRA + GRPO job: submit to done {time.monotonic() - started:.1f} s")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]

    result = read(store, f"{spec.output_prefix}/result.json")
    metrics = result["metrics"]
    assert result["artifact_kind"] == "lora_adapter" and metrics["steps"] == 6 and metrics["grpo_steps"] == 2
    assert metrics["base_correct_rate"] >= 0.5  # the student was trained on these prompts already
    assert metrics["grpo_generation_s_per_step"] > 0 and metrics["grpo_training_s_per_step"] > 0
    model = objects(store, f"{spec.output_prefix}/model/")
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "training_config.json"} <= model
    assert not any(name.startswith("ref/") for name in model)  # trl's frozen reference copy stays behind
    # Mid-training evals every 2 steps in both stages: generated calls scored (and the eval loss in SFT).
    assert [e["step"] for e in result["evals"]] == [2, 4, 6, 8], result["evals"]
    assert all("eval_correct_rate" in e["values"] for e in result["evals"])
    assert all("eval_loss" in e["values"] for e in result["evals"][:3]) and "eval_loss" not in result["evals"][3]
    assert result["stop"] == {"reason": "max_steps", "step": 8} and result["best_step"] in (2, 4, 6, 8)

    # progress: one step count over both stages, a log line per stage, the eval rates as metrics
    assert server.tokens == {"Bearer run-token"}
    progress = [e.progress for e in server.events if e.HasField("progress")]
    assert [p.step for p in progress] == sorted(p.step for p in progress) and progress[-1].step == 8
    assert {p.total_steps for p in progress} == {8}
    lines = [e.log.text for e in server.events if e.HasField("log")]
    assert any(line.startswith("SFT: 6 steps") for line in lines) and any(
        line.startswith("GRPO: 2 steps") for line in lines
    )
    values = {k for e in server.events if e.HasField("metrics") for k in e.metrics.values}
    assert {"base_correct_rate", "sft_correct_rate", "grpo_correct_rate", "grpo_reward", "loss"} <= values
    assert {"eval_correct_rate", "eval_valid_call_rate", "eval_loss"} <= values

    # SFT checkpoints at their cadence (every 3 steps, and the last) in S3, where Ray Train keeps them (the last
    # two); the SFT model kept for an attempt retried during GRPO; nothing resumed (no attempt failed)
    prefix = f"{spec.output_prefix}/ray/"
    states = sorted(name for name in objects(store, prefix) if name.endswith("/checkpoint/trainer_state.json"))
    assert sorted(read(store, prefix + name)["global_step"] for name in states) == [3, 6], objects(store, prefix)
    assert all(name.startswith(f"{spec.run_id}/checkpoint_") for name in states), states
    assert "adapter_model.safetensors" in objects(store, f"{spec.output_prefix}/sft/model/")
    assert read(store, f"{spec.output_prefix}/sft/sft.json")["steps"] == 6
    assert not any(line.startswith("resuming from the checkpoint") for line in lines)

    # the adapter loads on the student and answers with a call
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = full_run["model_dir"].parent / "adapter"
    for name in model:
        store.client.fget_object(store.bucket, f"{spec.output_prefix}/model/{name}", str(local / name))
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(full_run["model_dir"]), local)
    tokenizer = AutoTokenizer.from_pretrained(local)
    prompt = tool_format.prompt_text(tool_format.detect(tokenizer), tokenizer, evals[0]["messages"], TOOLS)
    output = tool_eval.generate(tuned, tokenizer, [prompt], max_new_tokens=48)[0]
    assert parse_output(output).calls, output

    # The final stage's rates, and the SFT stage's, were not generated again: the evals at their last steps (6 and
    # 8) had measured those very weights. Reused, they are what the saved models answer when asked again.
    output_text = proc.stdout + proc.stderr
    assert "sft eval: the mid-training eval of these same weights, reused" in output_text, output_text[-4000:]
    assert "grpo eval: the mid-training eval of these same weights, reused" in output_text, output_text[-4000:]
    examples = tool_data.eval_examples(evals, tool_format.detect(tokenizer), tokenizer)
    budget = result["training_config"]["decoding"]["max_new_tokens"]
    again = tool_eval.evaluate(tuned, tokenizer, examples, budget, "again")
    assert {rate: again[f"again_{rate}"] for rate in tool_eval.RATES} == {
        rate: metrics[f"grpo_{rate}"] for rate in tool_eval.RATES
    }
    kept_sft = full_run["model_dir"].parent / "sft-adapter"
    for name in objects(store, f"{spec.output_prefix}/sft/model/"):
        store.client.fget_object(store.bucket, f"{spec.output_prefix}/sft/model/{name}", str(kept_sft / name))
    sft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(full_run["model_dir"]), kept_sft)
    again = tool_eval.evaluate(sft_model, tokenizer, examples, budget, "again")
    assert {rate: again[f"again_{rate}"] for rate in tool_eval.RATES} == {
        rate: metrics[f"sft_{rate}"] for rate in tool_eval.RATES
    }
