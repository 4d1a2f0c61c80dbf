"""SplitDataset through the real gRPC API: seeded held-out fractions, user eval files,
no row on both sides after whitespace and case normalisation (asr rows: by clip content), and the errors."""

from __future__ import annotations

import json

import grpc
import pytest
from minio.error import S3Error
from rpc_refusals import named_field, raised
from test_asr_ingest import pcm_wav
from test_ocr_ingest import render, write_manifest, write_zip
from test_services import upload

from distillery.ingest.v1 import ingest_pb2
from distillery.uploads import Upload, send
from services.common.objects import ObjectStore


def pairs_file(rows: list[tuple[str, str]]) -> bytes:
    lines = (json.dumps({"system_prompt": "Be brief.", "input": q, "output": a}) + "\n" for q, a in rows)
    return "".join(lines).encode()


def canonical(q: str, a: str) -> str:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": q},
        {"role": "assistant", "content": a},
    ]
    return json.dumps({"messages": messages}, separators=(",", ":"), ensure_ascii=False)  # as ingest writes it


def normalised(line: str) -> str:
    """The test's own reading of the rule: roles and contents, lower case, whitespace collapsed."""
    return " | ".join(f"{m['role']}: {' '.join(m['content'].lower().split())}" for m in json.loads(line)["messages"])


HUNDRED = [(f"question {i}", f"answer {i}") for i in range(100)]


def read_side(services, key: str) -> list[str]:
    return ObjectStore(services.s3).get_bytes(key).decode().splitlines()


def split(client, **fields) -> ingest_pb2.Split:
    return client.ingest.SplitDataset(ingest_pb2.SplitDatasetRequest(**fields))


def refused(client, **fields) -> tuple[grpc.StatusCode, str, str]:
    """The status code, message and BadRequest field of a refused SplitDataset."""
    err = raised(lambda: split(client, **fields))
    return err.code(), err.details(), named_field(err)


def test_default_holdout_is_ten_percent_of_the_rows(services, client_for, make_tenant):
    tenant = make_tenant()
    client = client_for(tenant)
    dataset = upload(client, pairs_file(HUNDRED)).dataset
    made = split(client, dataset_id=dataset.id)
    assert (made.train_rows, made.eval_rows, made.overlap_removed) == (90, 10, 0)
    assert (made.dataset_id, made.eval_dataset_id, made.eval_fraction, made.seed) == (dataset.id, "", 0.1, 0)
    assert made.id.startswith("sp_") and len(made.id) == 27
    assert made.train_key == f"tenants/{tenant.tenant_id}/splits/{made.id}/train.jsonl"
    assert made.eval_key == f"tenants/{tenant.tenant_id}/splits/{made.id}/eval.jsonl"

    train, held = read_side(services, made.train_key), read_side(services, made.eval_key)
    assert (len(train), len(held)) == (90, 10)
    assert sorted(train + held) == sorted(canonical(q, a) for q, a in HUNDRED)

    quarter = split(client, dataset_id=dataset.id, eval_fraction=0.25)
    assert (quarter.train_rows, quarter.eval_rows, quarter.eval_fraction) == (75, 25, 0.25)


def test_the_holdout_is_seeded_and_asking_again_answers_the_stored_split(services, client_for, make_tenant):
    alice, bob = client_for(make_tenant()), client_for(make_tenant())
    data = pairs_file(HUNDRED)
    dataset = upload(alice, data).dataset
    first = split(alice, dataset_id=dataset.id, seed=3)
    held = read_side(services, first.eval_key)

    # Another tenant with the same rows, fraction and seed draws the very same rows afresh.
    again = split(bob, dataset_id=upload(bob, data).dataset.id, seed=3)
    assert again.id == first.id and again.train_key != first.train_key
    assert read_side(services, again.eval_key) == held
    assert read_side(services, again.train_key) == read_side(services, first.train_key)

    # Another seed holds out other rows.
    other = split(alice, dataset_id=dataset.id, seed=4)
    assert other.id != first.id and other.eval_rows == 10
    assert set(read_side(services, other.eval_key)) != set(held)

    # Asking again answers the stored split without writing its objects again.
    ObjectStore(services.s3).delete_prefix(first.eval_key)
    assert split(alice, dataset_id=dataset.id, eval_fraction=0.1, seed=3) == first
    with pytest.raises(S3Error):
        read_side(services, first.eval_key)


def test_rows_equal_but_for_case_and_whitespace_land_on_one_side(services, client_for, make_tenant):
    client = client_for(make_tenant())
    rows = [(f"question {i}", f"answer {i}") for i in range(30)]
    for i in range(0, 30, 3):  # near-duplicates of every third row
        rows += [(f"  QUESTION   {i} ", f"Answer\t{i}"), (f"question\n{i}", f"ANSWER {i}  ")]
    dataset = upload(client, pairs_file(rows)).dataset
    for seed in range(5):
        made = split(client, dataset_id=dataset.id, eval_fraction=0.3, seed=seed)
        train, held = read_side(services, made.train_key), read_side(services, made.eval_key)
        assert (made.train_rows, made.eval_rows) == (len(train), len(held))
        assert len(train) + len(held) == len(rows) and held and train
        assert not {normalised(line) for line in train} & {normalised(line) for line in held}
        assert len({normalised(line) for line in train + held}) == 30


def test_a_user_eval_file_removes_overlapping_train_rows(services, client_for, make_tenant):
    client = client_for(make_tenant())
    dataset = upload(client, pairs_file(HUNDRED)).dataset
    eval_rows = [("QUESTION 5", "answer  5"), ("question 7 ", "Answer 7"), ("question 200", "answer 200")]
    eval_dataset = upload(client, pairs_file(eval_rows), name="eval.jsonl").dataset

    made = split(client, dataset_id=dataset.id, eval_dataset_id=eval_dataset.id)
    assert (made.train_rows, made.eval_rows, made.overlap_removed) == (98, 3, 2)
    assert (made.eval_dataset_id, made.eval_fraction, made.seed) == (eval_dataset.id, 0, 0)
    train, held = read_side(services, made.train_key), read_side(services, made.eval_key)
    assert held == [canonical(q, a) for q, a in eval_rows]
    assert train == [canonical(q, a) for q, a in HUNDRED if q not in ("question 5", "question 7")]
    assert split(client, dataset_id=dataset.id, eval_dataset_id=eval_dataset.id) == made

    # An eval file holding every training row leaves nothing to train on.
    everything = upload(client, pairs_file([(q.upper(), a) for q, a in HUNDRED]), name="all.jsonl").dataset
    code, message, field = refused(client, dataset_id=dataset.id, eval_dataset_id=everything.id)
    assert (code, field) == (grpc.StatusCode.FAILED_PRECONDITION, "eval_dataset_id")
    assert "nothing is left to train on" in message


def test_bad_requests_and_datasets_are_refused(services, client_for, make_tenant):
    alice, bob = client_for(make_tenant()), client_for(make_tenant())
    dataset = upload(alice, pairs_file(HUNDRED)).dataset

    for fraction in (-0.1, 1.0, 1.5):
        code, message, field = refused(alice, dataset_id=dataset.id, eval_fraction=fraction)
        assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "eval_fraction")
        assert "between 0 and 1" in message

    code, _, field = refused(alice, dataset_id="")
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "dataset_id")

    # Another tenant's dataset, as the dataset or as the eval file, is not found.
    code, _, field = refused(bob, dataset_id=dataset.id)
    assert (code, field) == (grpc.StatusCode.NOT_FOUND, "dataset_id")
    bobs = upload(bob, pairs_file(HUNDRED[:50])).dataset
    code, message, field = refused(bob, dataset_id=bobs.id, eval_dataset_id=dataset.id)
    assert (code, field) == (grpc.StatusCode.NOT_FOUND, "eval_dataset_id")
    assert dataset.id in message

    # A dataset with violations cannot be split, nor serve as an eval file.
    broken = upload(alice, pairs_file(HUNDRED[:5]) + b'{"prompt": "q", "output": "a"}\nnot json\n', name="b.jsonl")
    assert not broken.dataset.valid
    code, message, field = refused(alice, dataset_id=broken.dataset.id)
    assert (code, field) == (grpc.StatusCode.FAILED_PRECONDITION, "dataset_id")
    count = broken.report.violation_count
    assert count > 1 and f"dataset {broken.dataset.id} has {count} violations; fix them and upload again" in message
    code, _, field = refused(alice, dataset_id=dataset.id, eval_dataset_id=broken.dataset.id)
    assert (code, field) == (grpc.StatusCode.FAILED_PRECONDITION, "eval_dataset_id")

    code, _, field = refused(alice, dataset_id=dataset.id, eval_dataset_id=dataset.id)
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "eval_dataset_id")
    eval_dataset = upload(alice, pairs_file(HUNDRED[:3]), name="eval.jsonl").dataset
    code, _, field = refused(alice, dataset_id=dataset.id, eval_dataset_id=eval_dataset.id, eval_fraction=0.2)
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "eval_fraction")

    # Holding out needs two distinct rows.
    same = upload(alice, pairs_file([("Hi", "Hello"), (" hi ", "HELLO"), ("HI", "hello")]), name="same.jsonl")
    code, message, field = refused(alice, dataset_id=same.dataset.id)
    assert (code, field) == (grpc.StatusCode.FAILED_PRECONDITION, "dataset_id")
    assert "at least 2 distinct rows" in message and "eval_dataset_id" in message


def asr_dataset(client, tmp_path, clips: dict[str, bytes], rows: list[tuple[str, str]], name: str) -> str:
    """An asr dataset of ``clips`` (file name -> WAV bytes) and manifest ``rows`` (file, transcript)."""
    folder = tmp_path / name
    folder.mkdir()
    for file, data in clips.items():
        (folder / file).write_bytes(data)
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"audio": f, "text": t, "language": "en"}) + "\n" for f, t in rows))
    files = [manifest, *(folder / file for file in clips)]
    reply = send(client.ingest, Upload(files, ingest_pb2.DATASET_KIND_ASR, manifest=manifest))
    assert reply.dataset.valid, reply.report
    return reply.dataset.id


def test_asr_rows_are_split_by_clip_content(services, client_for, make_tenant, tmp_path):
    """The same audio under two names (with two transcripts) lands on one side; a user eval set sharing a clip
    with the training set takes that clip out of training, whatever it is called there."""
    client = client_for(make_tenant())
    tones = {f"clip{i}.wav": pcm_wav(0.2 + i / 100) for i in range(20)}
    copies = {"copy_of_3.wav": tones["clip3.wav"], "copy_of_4.wav": tones["clip4.wav"]}
    rows = [(f, f"words {i}") for i, f in enumerate([*tones, *copies])]
    dataset_id = asr_dataset(client, tmp_path, {**tones, **copies}, rows, "train")
    for seed in range(4):
        made = split(client, dataset_id=dataset_id, eval_fraction=0.3, seed=seed)
        train, held = read_side(services, made.train_key), read_side(services, made.eval_key)
        assert len(train) + len(held) == 22 and train and held
        on_train = {json.loads(line)["audio_key"] for line in train}
        on_eval = {json.loads(line)["audio_key"] for line in held}
        assert not on_train & on_eval and len(on_train | on_eval) == 20

    eval_id = asr_dataset(client, tmp_path, {"renamed.wav": tones["clip7.wav"], "new.wav": pcm_wav(0.9)},
                          [("renamed.wav", "other words"), ("new.wav", "new words")], "eval")  # fmt: skip
    made = split(client, dataset_id=dataset_id, eval_dataset_id=eval_id)
    assert (made.train_rows, made.eval_rows, made.overlap_removed) == (21, 2, 1)
    assert "clip7.wav" not in {json.loads(line)["audio"] for line in read_side(services, made.train_key)}


def test_ocr_rows_are_split_by_image_content(services, client_for, make_tenant, tmp_path):
    """The same image under two names lands on one side; an eval set's image leaves training whatever its name."""
    client = client_for(make_tenant())
    pages = {f"page{i}.png": render(f"total {i}.00 EUR", "PNG") for i in range(12)}
    pages["again.png"] = pages["page2.png"]

    def dataset(name: str, files: dict[str, bytes]) -> str:
        folder = tmp_path / name
        folder.mkdir()
        archive = write_zip(folder / "images.zip", files)
        manifest = write_manifest(folder / "manifest.jsonl", [{"image": f, "text": f"text of {f}"} for f in files])
        reply = send(client.ingest, Upload([manifest, archive], ingest_pb2.DATASET_KIND_OCR, manifest=manifest))
        assert reply.dataset.valid, reply.report
        return reply.dataset.id

    dataset_id = dataset("train", pages)
    for seed in range(4):
        made = split(client, dataset_id=dataset_id, eval_fraction=0.3, seed=seed)
        train, held = read_side(services, made.train_key), read_side(services, made.eval_key)
        assert len(train) + len(held) == 13 and train and held
        assert not {json.loads(line)["sha256"] for line in train} & {json.loads(line)["sha256"] for line in held}
    eval_id = dataset("eval", {"renamed.png": pages["page5.png"], "new.png": render("new page", "PNG")})
    made = split(client, dataset_id=dataset_id, eval_dataset_id=eval_id)
    assert (made.train_rows, made.eval_rows, made.overlap_removed) == (12, 2, 1)
