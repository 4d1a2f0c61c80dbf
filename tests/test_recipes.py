"""Recipes (services/trainer/run_recipes.py, docs/recipes.md): the platform's file and an operator's, the
checks of a recipes file, a recipe applied to a run request (explicit fields win), the auto rules; then over
the real services: ListRecipes/GetRecipe and the CLI, a recipe run without settings whose auto values are
sized from its split and recorded on the run (and used by its job), a flag overriding a recipe, refusals."""

from __future__ import annotations

import dataclasses
import json
import math
import time
import tomllib
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from minio import Minio
from rpc_refusals import assert_refused, refused
from test_services import upload
from test_tracing_and_cli import cli_env
from test_training import ROWS, watch
from tiny_models import build_llama

from distillery.cli.main import cli
from distillery.client import Client
from distillery.common.v1 import common_pb2
from distillery.trainer.v1 import trainer_pb2 as pb
from services.common.errors import InvalidArgument
from services.trainer import run_recipes, run_requests
from services.trainer import server as trainer_server
from services.trainer.run_recipes import Deployment, SplitSize, sized
from services.trainer.settings import Settings

FINETUNE_TEXT = common_pb2.TRAINING_PATH_FINETUNE_TEXT
CLASSIFY = run_recipes.defaults()["classify"]
BEFORE_SIZING = {pb.RUN_STATE_QUEUED, pb.RUN_STATE_VALIDATING}

# --- the platform's recipes and an operator's file ---


def test_the_platform_recipes_cover_every_task_and_all_train() -> None:
    raw = tomllib.loads(run_recipes.DEFAULT_FILE.read_text())  # the stdlib reads the file as it is
    recipes = run_recipes.defaults()
    assert set(raw["recipes"]) == set(recipes) >= {"classify", "generate", "tool-calling", "speech", "ocr"}
    assert all(r.available for r in recipes.values())  # an operator's file may still add slots (available = false)
    assert {r.task for r in recipes.values()} == set(run_recipes.TASKS)
    assert {r.task for r in recipes.values()} == set(run_recipes.TASKS)
    for recipe in recipes.values():
        assert "/" in recipe.base_model and recipe.paths and recipe.compute["workers"] >= 1, recipe.name
        message = recipe.to_proto()
        assert list(message.auto_fields) == recipe.auto_fields and "epochs" in message.auto_fields
        assert message.sft.epochs == recipe.limit("epochs") > 0  # an auto field shows the most it may be
    tools = recipes["tool-calling"].to_proto()
    assert list(tools.paths) == [common_pb2.TRAINING_PATH_DISTILL_TOOLS] and tools.grpo.max_completion_length == 256
    assert CLASSIFY.to_proto().sft.max_seq_length == 512 and CLASSIFY.to_proto().sft.batch_size == 8


def write(tmp_path: Path, text: str, name: str = "ours.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


OPERATOR = """
[recipes.classify]  # replaces the platform's, whole
description = "Our labels."
task = "classification"
paths = ["finetune-text"]
base_model = "our-org/labeller"

[recipes.classify.sft]
epochs = 2

[recipes.legal-extract]
task = "classification"
paths = ["finetune-text", "distill-text"]
base_model = "our-org/extractor"

[recipes.legal-extract.sft]
max_seq_length = "auto"
batch_size = 2

[recipes.legal-extract.limits]
max_seq_length = 8192
"""


def test_an_operator_file_adds_recipes_and_replaces_those_of_the_same_name(tmp_path, monkeypatch) -> None:
    path = write(tmp_path, OPERATOR)
    recipes = run_recipes.load(str(path))
    assert set(recipes) == set(run_recipes.defaults()) | {"legal-extract"}
    classify = recipes["classify"]
    assert (classify.base_model, classify.sft, classify.compute) == ("our-org/labeller", {"epochs": 2}, {})
    assert classify.auto_fields == []
    assert recipes["legal-extract"].auto_fields == ["max_seq_length"]
    assert recipes["legal-extract"].to_proto().sft.max_seq_length == 8192
    assert recipes["generate"] == run_recipes.defaults()["generate"]
    assert run_recipes.defaults()["classify"].base_model == CLASSIFY.base_model  # the platform's own are untouched
    # The trainer reads the file's name from DISTILLERY_RECIPES_FILE.
    environment = {
        "DISTILLERY_DATABASE_URL": "postgresql://x", "DISTILLERY_S3_ENDPOINT": "127.0.0.1:1",
        "DISTILLERY_S3_ACCESS_KEY": "a", "DISTILLERY_S3_SECRET_KEY": "b", "DISTILLERY_REGISTRY_ADDRESS": "127.0.0.1:2",
        "DISTILLERY_INGEST_ADDRESS": "127.0.0.1:3", "DISTILLERY_TEACHER_ADDRESS": "127.0.0.1:4",
        "DISTILLERY_RECIPES_FILE": str(path),
    }  # fmt: skip
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert Settings.from_env().recipes_file == str(path)


BASE = '[recipes.mine]\ntask = "generation"\npaths = ["finetune-text"]\nbase_model = "org/model"\n'


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("[recipes.mine\n", "", "not valid TOML"),
        ('version = 2\n[recipes.mine]\nbase_model = "org/m"\n', "", "[recipes.NAME] tables only"),
        ('[recipes.mine]\ntask = "generation"\npaths = ["finetune-text"]\n', "recipes.mine.base_model", "required"),
        (BASE + 'flavour = "x"\n', "recipes.mine.flavour", "not a recipe key"),
        (BASE.replace('"generation"', '"poetry"'), "recipes.mine.task", "one of classification"),
        (BASE.replace('"finetune-text"', '"fine-tune"'), "recipes.mine.paths", "finetune-text"),
        (BASE + "[recipes.mine.sft]\nwarmup = 3\n", "recipes.mine.sft.warmup", "not an SFT setting"),
        (BASE + '[recipes.mine.sft]\nlearning_rate = "auto"\n', "recipes.mine.sft.learning_rate", "only max_seq"),
        (BASE + "[recipes.mine.sft]\nbatch_size = -4\n", "recipes.mine.sft.batch_size", "at least 1"),
        (BASE + "[recipes.mine.sft]\nepochs = 2.5\n", "recipes.mine.sft.epochs", "whole number"),
        (BASE + "[recipes.mine.sft]\nepochs = 3.0\n", "recipes.mine.sft.epochs", "give a whole number"),
        (BASE + "[recipes.mine.compute]\ngpu_type = 4\n", "recipes.mine.compute.gpu_type", "give a string"),
        (BASE + "[recipes.mine.grpo]\nnum_generations = 1\n", "recipes.mine.grpo.num_generations", "2 to 64"),
        (BASE + "[recipes.mine.limits]\nepochs = 0\n", "recipes.mine.limits.epochs", "from 1 to 100"),
        (BASE + "[recipes.mine.limits]\nlr = 1\n", "recipes.mine.limits.lr", "not a limit"),
        (BASE + "[recipes.mine.compute]\nworkers = -1\n", "recipes.mine.compute.workers", "out of range"),
        (BASE + "[recipes.mine.compute]\nnodes = 2\n", "recipes.mine.compute.nodes", "not a field"),
        (BASE.replace("recipes.mine", "recipes.Mine"), "recipes.Mine.name", "lowercase"),
    ],
)
def test_a_bad_recipes_file_is_refused_naming_the_file_the_recipe_and_the_field(tmp_path, text, field, words):
    path = write(tmp_path, text)
    with pytest.raises(InvalidArgument) as refused_file:
        run_recipes.load(str(path))
    message = refused_file.value.message
    assert str(path) in message and words in message, message
    assert refused_file.value.field == field, message
    if field:
        assert f"recipe {field.split('.')[1]!r}" in message, message


def test_a_recipes_file_that_is_not_there_is_named() -> None:
    with pytest.raises(InvalidArgument, match=r"/nowhere/recipes\.toml: cannot read .*DISTILLERY_RECIPES_FILE"):
        run_recipes.load("/nowhere/recipes.toml")


# --- a recipe applied to a request ---


def test_a_recipe_fills_what_the_request_leaves_and_the_request_wins() -> None:
    request = pb.CreateRunRequest(
        dataset_id="ds_1", recipe="classify", student_model="org/ours", sft=pb.SftSettings(max_seq_length=256),
        compute=pb.Compute(workers=2),
    )  # fmt: skip
    applied, auto = run_recipes.apply(CLASSIFY, request)
    assert applied.path == FINETUNE_TEXT  # the recipe's first path
    assert applied.student_model == "org/ours" and applied.sft.max_seq_length == 256  # given: kept
    assert (applied.sft.batch_size, applied.sft.learning_rate, applied.sft.early_stopping_patience) == (8, 2e-4, 3)
    assert (applied.compute.workers, applied.compute.cpus_per_worker, applied.compute.gpu_type) == (2, 4, "L4")
    assert auto == ["epochs", "max_steps", "eval_every_steps", "checkpoint_every_steps"]  # not max_seq_length
    assert applied.sft.epochs == 0 and not applied.HasField("grpo")
    assert run_recipes.apply(CLASSIFY, pb.CreateRunRequest())[0].student_model == CLASSIFY.base_model
    # GRPO settings go to SFT + RL runs only; a request's own still win
    tools = run_recipes.defaults()["tool-calling"]
    rl = pb.CreateRunRequest(mode=common_pb2.TRAINING_MODE_SFT_RL, grpo=pb.GrpoSettings(max_steps=5))
    applied_rl = run_recipes.apply(tools, rl)[0]
    assert (applied_rl.grpo.max_steps, applied_rl.grpo.max_completion_length) == (5, 256)
    assert not run_recipes.apply(tools, pb.CreateRunRequest())[0].HasField("grpo")


# A slot an operator's file may list for a path the deployment does not train yet.
SLOT = run_recipes.Recipe(name="ocr-soon", base_model="org/m", task="ocr", paths=["finetune-ocr"], available=False)


def test_a_recipe_for_another_path_or_a_slot_is_refused_naming_recipe() -> None:
    for recipe, request, words in [
        (CLASSIFY, pb.CreateRunRequest(path=common_pb2.TRAINING_PATH_DISTILL_TOOLS), "for finetune-text, distill"),
        (SLOT, pb.CreateRunRequest(), "finetune-ocr path, which arrives in a later"),
    ]:
        with pytest.raises(InvalidArgument, match=words) as err:
            run_recipes.apply(recipe, request)
        assert err.value.field == "recipe"


def test_a_checked_request_records_the_recipe_its_auto_fields_and_its_compute() -> None:
    request = pb.CreateRunRequest(dataset_id="ds_1", recipe="classify", sft=pb.SftSettings(epochs=2))
    request.auto_fields.append("seed")  # output only: a caller's is ignored
    stored = run_requests.checked(request, deployment=Deployment(workers=4))
    assert stored["recipe"] == "classify" and stored["student_model"] == CLASSIFY.base_model
    assert stored["path"] == "TRAINING_PATH_FINETUNE_TEXT" and stored["sft"]["epochs"] == 2
    assert stored["auto_fields"] == ["max_seq_length", "max_steps", "eval_every_steps", "checkpoint_every_steps"]
    assert stored["auto_limits"] == {"max_seq_length": 512, "max_steps": 2000}
    # the recipe's compute is a preference, capped to the deployment's group (which declares no CPUs and no GPU)
    assert stored["compute"] == {"workers": 1}
    on_gpus = run_requests.checked(request, deployment=Deployment(workers=2, use_gpu=True))
    assert on_gpus["compute"] == {"workers": 1, "gpus_per_worker": 1}  # its group names no GPU type: no "L4"
    request.compute.workers = 16  # what the request asks is a requirement: refused, not capped
    with pytest.raises(InvalidArgument, match="default: up to 2 workers") as err:
        run_requests.checked(request, deployment=Deployment(workers=2))
    assert err.value.field == "compute.workers"
    plain = run_requests.checked(pb.CreateRunRequest(path=FINETUNE_TEXT, dataset_id="ds_1", student_model="o/m"))
    assert "auto_fields" not in plain and plain["compute"] == {"workers": 1}  # the deployment's
    assert run_recipes.job_compute(stored, Deployment(workers=8, use_gpu=True)) == (1, False)  # recorded: no GPU
    assert run_recipes.job_compute(on_gpus, Deployment(workers=1, use_gpu=True)) == (1, True)
    assert run_recipes.job_compute({}, Deployment(workers=3)) == (3, False)  # a run from before recipes


def test_an_unknown_recipe_is_refused_naming_recipe_and_listing_the_recipes() -> None:
    with pytest.raises(InvalidArgument) as err:
        run_requests.checked(pb.CreateRunRequest(dataset_id="ds_1", recipe="classifyy"))
    assert err.value.field == "recipe" and "classify, generate, ocr, speech, tool-calling" in err.value.message


# --- the auto rules ---


def test_a_small_set_gets_more_epochs_and_short_rows_a_short_max_length() -> None:
    sft = dataclasses.asdict(run_requests.resolve_sft({"batch_size": 8}))
    auto = list(run_recipes.AUTO_FIELDS)
    # 40 rows: 3 epochs would show the model 120 rows, under 320: ceil(320 / 40) = 8 epochs of 5 steps each
    got = sized(sft, auto, {}, SplitSize(train_rows=40, eval_rows=5, longest_bytes=300))
    assert got == {"max_seq_length": 192, "epochs": 8, "max_steps": 40, "eval_every_steps": 4,
                   "checkpoint_every_steps": 4}  # 300 bytes: 150 + 32 tokens, rounded up to 192  # fmt: skip
    # 1,000 rows: 3 epochs; two workers halve the steps of an epoch
    got = sized(sft, auto, {}, SplitSize(1000, 100, 6000), workers=2)
    assert (got["epochs"], got["max_steps"], got["eval_every_steps"]) == (3, 3 * 63, 19)
    assert got["max_seq_length"] == 2048  # 6,000 bytes: 3,032 tokens, 3,072 rounded up, over the default limit
    # 100,000 rows: one epoch (at most 50,000 rows seen), its steps capped at the recipe's limit
    got = sized(sft, auto, {"max_steps": 2000}, SplitSize(100_000, 1000, 100))
    assert (got["epochs"], got["max_steps"], got["eval_every_steps"]) == (1, 2000, 200)
    # 5 rows: 64 epochs capped at the limit; long rows capped at the max_seq_length limit
    got = sized(sft, auto, {"epochs": 12, "max_seq_length": 512}, SplitSize(5, 1, 10_000))
    assert (got["epochs"], got["max_seq_length"], got["max_steps"]) == (12, 512, 12)


def test_only_the_auto_fields_are_sized_and_given_values_are_used() -> None:
    sft = dataclasses.asdict(run_requests.resolve_sft({"batch_size": 4, "epochs": 2, "eval_every_steps": 7}))
    got = sized(sft, ["max_steps", "checkpoint_every_steps"], {}, SplitSize(40, 4, 100))
    assert got == {"max_steps": 20, "checkpoint_every_steps": 7}  # 2 epochs of 10 steps; at the given evals
    assert sized(sft, [], {}, SplitSize(40, 4, 100)) == {}


def test_sizing_a_stored_request_keeps_what_it_was_created_with() -> None:
    stored = run_requests.checked(pb.CreateRunRequest(dataset_id="ds_1", recipe="classify"))
    resized = run_recipes.size_request(stored, SplitSize(40, 5, 300), workers=1)
    assert (resized["sft"]["epochs"], resized["sft"]["max_seq_length"], resized["sft"]["max_steps"]) == (8, 192, 40)
    assert resized["sft"]["learning_rate"] == 2e-4 and resized["sized"]["train_rows"] == 40
    assert resized["sized"]["longest_row_tokens"] == 182
    assert run_recipes.as_created(resized) == stored and run_recipes.as_created(stored) is stored


class FakeResponse:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def stream(self, size: int):
        return iter(self.chunks)

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class FakeStore:
    bucket = "b"

    def __init__(self, objects: dict[str, list[bytes]]) -> None:
        self.client = self
        self.objects = objects

    def get_object(self, bucket: str, key: str) -> FakeResponse:
        return FakeResponse(self.objects[key])


def test_measure_streams_the_split_lines_across_chunks() -> None:
    store = FakeStore({
        "train": [b'{"a": 1}\n{"a": "lo', b"ng", b'er"}\n\n', b'{"b": 22}'],  # a line over three chunks; no last \n
        "eval": [b"", b'{"c": "the longest line"}\n'],
    })  # fmt: skip
    size = run_recipes.measure(store, {"train_key": "train", "eval_key": "eval"})  # type: ignore[arg-type]
    assert size == SplitSize(train_rows=3, eval_rows=1, longest_bytes=len(b'{"c": "the longest line"}'))


# --- over the real services ---


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_llama(tmp_path_factory.mktemp("recipe-student") / "tiny-llama"))


def cli_run(services, api_key: str, *args: str, trainer: str = "") -> str:
    env = cli_env(services, api_key)
    if trainer:
        env["DISTILLERY_TRAINER_ADDRESS"] = trainer
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.output


def test_recipes_are_listed_and_shown_over_grpc_and_the_cli(services, client_for, make_tenant):
    tenant = make_tenant()
    client = client_for(tenant)
    listed = client.trainer.ListRecipes(pb.ListRecipesRequest()).recipes
    assert [r.name for r in listed] == sorted(run_recipes.defaults())
    classify = client.trainer.GetRecipe(pb.GetRecipeRequest(name="classify"))
    assert classify == CLASSIFY.to_proto() and classify.available and "max_seq_length" in classify.auto_fields
    assert client.trainer.GetRecipe(pb.GetRecipeRequest(name="ocr")).base_model == "deepseek-community/DeepSeek-OCR-2"
    err = assert_refused(lambda: client.trainer.GetRecipe(pb.GetRecipeRequest(name="nope")), "name",
                         grpc.StatusCode.NOT_FOUND)  # fmt: skip
    assert "classify" in err.details()
    refused(lambda: client_for(None).trainer.ListRecipes(pb.ListRecipesRequest()), grpc.StatusCode.UNAUTHENTICATED)

    shown = cli_run(services, tenant.api_key, "recipes", "list")
    assert all(name in shown for name in run_recipes.defaults())
    shown = cli_run(services, tenant.api_key, "recipes", "show", "classify")
    assert CLASSIFY.base_model in shown and "auto (at most 512)" in shown and "1 worker, 4 CPUs and 1 GPU (L4)" in shown
    as_json = json.loads(cli_run(services, tenant.api_key, "recipes", "show", "classify", "--json"))
    assert as_json["auto_fields"][0] == "max_seq_length" and as_json["sft"]["batch_size"] == 8


def split_lines(services, run: pb.Run, tenant_id: str) -> tuple[dict, list[bytes], list[bytes]]:
    """The run's job spec and its train and eval splits' lines, as the job read them."""
    s3 = Minio(services.s3.endpoint, services.s3.access_key, services.s3.secret_key, secure=False)
    spec = json.loads(s3.get_object(services.s3.bucket, f"tenants/{tenant_id}/runs/{run.id}/spec.json").read())
    lines = [[line for line in s3.get_object(services.s3.bucket, spec[key]).read().splitlines() if line]
             for key in ("train_key", "eval_key")]  # fmt: skip
    return spec, lines[0], lines[1]


def test_a_recipe_run_without_settings_sizes_its_auto_values_and_its_job_uses_them(
    services, make_tenant, student, tmp_path
):
    """An operator's recipe (the tiny student as its base model, steps capped for a quick run) on a trainer that
    reads it; the run names the recipe and its dataset, nothing else."""
    recipes = write(tmp_path, f"""
[recipes.tiny]
task = "classification"
paths = ["finetune-text"]
base_model = "{student}"
[recipes.tiny.sft]
learning_rate = 5e-3
batch_size = 4
lora_r = 8
max_seq_length = "auto"
epochs = "auto"
max_steps = "auto"
eval_every_steps = "auto"
checkpoint_every_steps = "auto"
[recipes.tiny.limits]
max_steps = 20
[recipes.tiny.compute]
workers = 3
""")  # fmt: skip
    settings = dataclasses.replace(services.trainer_settings(), recipes_file=str(recipes))
    trainer = services.loop.run(trainer_server.create(settings))
    tenant = make_tenant()
    client = Client({**services.addresses, "trainer": trainer.address}, tenant.api_key, timeout=20)
    try:
        assert client.trainer.GetRecipe(pb.GetRecipeRequest(name="tiny")).sft.max_steps == 20
        dataset = upload(client, ROWS).dataset
        request = pb.CreateRunRequest(recipe="tiny", dataset_id=dataset.id, idempotency_key="tiny-1")
        run = client.trainer.CreateRun(request)
        assert run.path == FINETUNE_TEXT and run.student_model == student and run.request.sft.max_seq_length == 1024
        assert list(run.request.auto_fields) == list(run_recipes.AUTO_FIELDS)
        assert run.request.compute.workers == 1  # the recipe's 3, capped by this deployment's 1
        watch(client, run.id)
        done = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
        assert done.state == pb.RUN_STATE_SUCCEEDED, done.error
        assert client.trainer.CreateRun(request) == done  # the same request again: the run, sized since, not a refusal
        spec, train, evals = split_lines(services, done, tenant.tenant_id)
    finally:
        client.close()
        services.loop.run(trainer.stop(1.0))
    # What was sized, by the documented rules, from the split the job trained on
    rows, longest = len(train), max(len(line) for line in train + evals)
    epochs = math.ceil(320 / rows)  # a small set: at least 320 rows seen
    steps = min(epochs * math.ceil(rows / 4), 20)
    every = math.ceil(steps / 10)
    expected = {"max_seq_length": math.ceil((math.ceil(longest / 2) + 32) / 64) * 64, "epochs": epochs,
                "max_steps": steps, "eval_every_steps": every, "checkpoint_every_steps": every}  # fmt: skip
    sft = done.request.sft
    assert {name: getattr(sft, name) for name in expected} == expected and epochs > 3 and steps == 20
    assert expected["max_seq_length"] < 1024 and (sft.learning_rate, sft.batch_size, sft.lora_r) == (5e-3, 4, 8)
    assert list(done.request.auto_fields) == list(run_recipes.AUTO_FIELDS) and done.request.recipe == "tiny"
    # the job trained with them, on the workers recorded
    assert {name: spec["sft"][name] for name in expected} == expected and spec["num_workers"] == 1
    assert done.progress.total_steps == steps and len(done.evals) >= 2


def test_a_flag_overrides_the_recipe_and_runs_show_marks_the_auto_values(services, make_tenant, student):
    tenant = make_tenant()
    client = Client(services.addresses, tenant.api_key, timeout=20)
    try:
        dataset = upload(client, ROWS).dataset
        args = ["--recipe", "classify", "--dataset", dataset.id, "--student", student, "--max-seq-length", "256"]
        created = json.loads(cli_run(services, tenant.api_key, "runs", "create", *args, "--json"))
        run_id = created["id"]
        assert created["request"]["recipe"] == "classify" and created["student_model"] == student
        deadline = time.monotonic() + 60
        while (run := client.trainer.GetRun(pb.GetRunRequest(id=run_id))).state in BEFORE_SIZING:
            assert time.monotonic() < deadline, run
            time.sleep(0.3)
        shown = cli_run(services, tenant.api_key, "runs", "show", run_id)
        client.trainer.CancelRun(pb.CancelRunRequest(id=run_id))
    finally:
        client.close()
    sft = run.request.sft
    assert sft.max_seq_length == 256 and "max_seq_length" not in run.request.auto_fields  # the flag won
    assert sft.batch_size == 8 and sft.early_stopping_patience == 3  # the recipe's
    assert sft.epochs > 3 and run.request.auto_fields[0] == "epochs"  # sized: 43 rows are a small set
    lines = {line.split()[1]: line for line in shown.splitlines() if line.startswith("│ ")}
    assert "recipe classify" in shown and "auto: sized from the dataset" in lines["epochs"], shown
    assert "256" in lines["max_seq_length"] and "auto" not in lines["max_seq_length"], shown


def test_an_unknown_or_unavailable_recipe_is_refused_naming_recipe(services, client_for, make_tenant):
    client = client_for(make_tenant())
    for name, words in [("nope", "give one of classify")]:
        request = pb.CreateRunRequest(recipe=name, dataset_id="ds_1")
        err = assert_refused(lambda r=request: client.trainer.CreateRun(r), "recipe")
        assert words in err.details(), err.details()
    request = pb.CreateRunRequest(recipe="classify", dataset_id="ds_1", compute=pb.Compute(workers=-1))
    assert_refused(lambda: client.trainer.CreateRun(request), "compute.workers")
