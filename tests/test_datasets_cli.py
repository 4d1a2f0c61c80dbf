"""`distillery datasets validate|upload` for every kind, on the examples the README shows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import orjson
from click.testing import CliRunner
from minio import Minio
from test_tracing_and_cli import cli_env

from distillery.cli.main import cli

EXAMPLES = Path(__file__).parent.parent / "examples"


def run(services, tenant, *args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, ["datasets", *args, "--json"], env=cli_env(services, tenant.api_key))
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.output)


def canonical_rows(services, tenant, dataset_id: str) -> list[dict]:
    s3 = Minio(services.s3.endpoint, services.s3.access_key, services.s3.secret_key, secure=False)
    key = f"tenants/{tenant.tenant_id}/datasets/{dataset_id}/canonical.jsonl"
    return [orjson.loads(line) for line in s3.get_object(services.s3.bucket, key).read().splitlines()]


def test_every_kind_validates_and_uploads_from_the_examples(services, make_tenant):
    tenant = make_tenant()
    for args, rows in [
        (["examples/support_pairs.jsonl", "--kind", "pairs"], 100),
        (["examples/support_inputs.jsonl", "--kind", "inputs"], 100),
        (["examples/asr", "--kind", "asr"], 3),
        (["examples/ocr/images.zip", "--kind", "ocr", "--manifest", "examples/ocr/manifest.jsonl"], 3),
    ]:
        args[0] = str(EXAMPLES.parent / args[0])
        code, report = run(services, tenant, "validate", *args)
        assert (code, report["valid"], report["rows"], report["violations"]) == (0, True, rows, []), args
        code, uploaded = run(services, tenant, "upload", *args)
        assert (code, uploaded["valid"], uploaded["rows"]) == (0, True, rows), args

    asr = run(services, tenant, "upload", str(EXAMPLES / "asr"), "--kind", "asr")[1]
    languages = {r["audio"]: (r["language"], r["language_source"]) for r in canonical_rows(services, tenant, asr["id"])}
    assert languages == {
        "turn_off_lights.wav": ("en", "manifest"),
        "weather.wav": ("en", "detected"),
        "bonjour.wav": ("fr", "detected"),
    }
    assert asr["reused"] is True
    overridden = run(services, tenant, "upload", str(EXAMPLES / "asr"), "--kind", "asr", "--language", "de")[1]
    assert overridden["id"] != asr["id"] and not overridden["reused"]
    assert {r["language"] for r in canonical_rows(services, tenant, overridden["id"])} == {"de"}

    ocr = run(services, tenant, "upload", str(EXAMPLES / "ocr/images.zip"), "--kind", "ocr",
              "--manifest", str(EXAMPLES / "ocr/manifest.jsonl"))[1]  # fmt: skip
    [first, *_] = canonical_rows(services, tenant, ocr["id"])
    assert first["image"] == "pages/receipt-1.png" and first["format"] == "png" and first["archive_key"]


def test_the_wrong_kind_and_a_broken_bundle_exit_1_with_their_codes(services, make_tenant, tmp_path):
    tenant = make_tenant()
    code, report = run(services, tenant, "validate", str(EXAMPLES / "support_inputs.jsonl"), "--kind", "pairs")
    assert code == 1 and report["counts"] == {"missing_field": 200}  # output and system_prompt, per row
    code, report = run(services, tenant, "validate", str(EXAMPLES / "support_pairs.jsonl"), "--kind", "inputs")
    assert code == 1 and "output_not_allowed" in report["counts"]

    clips = tmp_path / "clips"
    shutil.copytree(EXAMPLES / "asr", clips)
    (clips / "weather.wav").unlink()
    (clips / "extra.wav").write_bytes((EXAMPLES / "asr/bonjour.wav").read_bytes())
    code, report = run(services, tenant, "upload", str(clips), "--kind", "asr")
    assert code == 1 and report["valid"] is False
    found = {(v["code"], v["entry"]) for v in report["violations"]}
    assert found == {("missing_audio", "weather.wav"), ("unreferenced_audio", "extra.wav")}


def test_a_bundle_needs_its_manifest(services, make_tenant, tmp_path):
    result = CliRunner().invoke(
        cli, ["datasets", "validate", str(EXAMPLES / "ocr/images.zip"), "--kind", "ocr"],
        env=cli_env(services, make_tenant().api_key),
    )  # fmt: skip
    assert result.exit_code == 2 and "--manifest" in result.output


def test_an_empty_file_gets_an_empty_file_report_and_exit_1(services, make_tenant, tmp_path):
    tenant = make_tenant()
    for kind, name in [("pairs", "pairs.jsonl"), ("inputs", "inputs.csv"), ("tool-calls", "calls.jsonl")]:
        empty = tmp_path / name
        empty.write_bytes(b"")
        for args in (["validate"], ["upload"], ["upload", "--presigned"]):
            code, report = run(services, tenant, *args, str(empty), "--kind", kind)
            assert (code, report["valid"], report["rows"], report["counts"]) == (1, False, 0, {"empty_file": 1}), args
            [violation] = report["violations"]
            assert violation["code"] == "empty_file" and violation["entry"] == name
            assert f"{name!r} is empty (0 bytes)" in violation["message"], violation
            assert "write the dataset's rows into it and send it again" in violation["message"]
            assert kind.replace("-", "_") in violation["hint"]
            if args[0] == "upload":
                assert report["stored"] is False and "id" not in report
    # Nothing was stored.
    result = CliRunner().invoke(cli, ["datasets", "list", "--json"], env=cli_env(services, tenant.api_key))
    assert result.exit_code == 0 and json.loads(result.output) == []
    # Without --json the report is printed, with what to do.
    empty = tmp_path / "pairs.jsonl"
    result = CliRunner().invoke(
        cli, ["datasets", "validate", str(empty), "--kind", "pairs"], env=cli_env(services, tenant.api_key)
    )
    assert result.exit_code == 1 and "empty_file" in result.output and "invalid" in result.output
