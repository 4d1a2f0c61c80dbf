"""ReadDatasetRows through the real gRPC API: the eval side of a dataset's newest split (or all of its rows),
the first `limit` of them, only to its own tenant, and the refusals that say what to do; and the stream reader
that stops at the limit or the size cap without holding a long row whole."""

from __future__ import annotations

import json

import grpc
from rpc_refusals import named_field, refused
from test_asr_ingest import pcm_wav
from test_services import upload
from test_splits import asr_dataset, canonical, pairs_file, read_side, split

from distillery.ingest.v1 import ingest_pb2
from services.ingest.dataset_rows import first_lines

ROWS = [(f"question {i}", f"answer {i}") for i in range(40)]


def read(client, **fields) -> ingest_pb2.ReadDatasetRowsResponse:
    return client.ingest.ReadDatasetRows(ingest_pb2.ReadDatasetRowsRequest(**fields))


def test_rows_of_the_eval_side_of_the_newest_split_or_of_the_whole_dataset(services, client_for, make_tenant):
    client = client_for(make_tenant())
    dataset = upload(client, pairs_file(ROWS)).dataset

    err = refused(lambda: read(client, dataset_id=dataset.id), grpc.StatusCode.FAILED_PRECONDITION)
    assert f"distillery runs create --dataset {dataset.id}" in err.details() and named_field(err) == "dataset_id"

    everything = read(client, dataset_id=dataset.id, side="all")
    assert everything.rows_json == [canonical(q, a) for q, a in ROWS]  # 40 rows, under the default 100
    assert (everything.kind, everything.split_id, everything.total_rows, everything.truncated) == (
        ingest_pb2.DATASET_KIND_PAIRS, "", 40, False,
    )  # fmt: skip
    first = read(client, dataset_id=dataset.id, side="all", limit=3)
    assert (first.rows_json, first.truncated, first.total_rows) == (everything.rows_json[:3], True, 40)

    split(client, dataset_id=dataset.id, eval_fraction=0.25)
    newest = split(client, dataset_id=dataset.id, eval_fraction=0.5, seed=7)
    held = read(client, dataset_id=dataset.id, side="eval")
    assert held.rows_json == read_side(services, newest.eval_key) and len(held.rows_json) == 20
    assert (held.split_id, held.total_rows, held.truncated) == (newest.id, 20, False)
    assert read(client, dataset_id=dataset.id, limit=2).rows_json == held.rows_json[:2]  # side "" is eval

    # A user eval file's eval side is itself, through the split it is the eval dataset of.
    eval_file = upload(client, pairs_file([("held out", "kept")]), name="eval.jsonl").dataset
    made = split(client, dataset_id=dataset.id, eval_dataset_id=eval_file.id)
    assert read(client, dataset_id=eval_file.id).rows_json == [canonical("held out", "kept")]
    assert read(client, dataset_id=dataset.id).split_id == made.id  # now the newest of the training dataset


def test_refusals_and_another_tenants_dataset(services, client_for, make_tenant, tmp_path):
    alice, bob = client_for(make_tenant()), client_for(make_tenant())
    dataset = upload(alice, pairs_file(ROWS)).dataset
    nobody = "ds_000000000000000000000000"
    theirs = refused(lambda: read(bob, dataset_id=dataset.id, side="all"), grpc.StatusCode.NOT_FOUND)
    unknown = refused(lambda: read(bob, dataset_id=nobody, side="all"), grpc.StatusCode.NOT_FOUND)
    assert theirs.details() == unknown.details().replace(nobody, dataset.id)

    assert named_field(refused(lambda: read(alice, dataset_id=dataset.id, side="train"))) == "side"
    assert named_field(refused(lambda: read(alice, dataset_id=dataset.id, limit=1001))) == "limit"
    assert named_field(refused(lambda: read(alice, side="all"))) == "dataset_id"

    clips = asr_dataset(alice, tmp_path, {"a.wav": pcm_wav(0.2), "b.wav": pcm_wav(0.3)},
                        [("a.wav", "one"), ("b.wav", "two")], "clips")  # fmt: skip
    err = refused(lambda: read(alice, dataset_id=clips, side="all"))
    assert "is an asr dataset" in err.details() and named_field(err) == "dataset_id"

    inputs = upload(alice, b'{"input": "hello"}\n{"input": "bye"}\n', kind=ingest_pb2.DATASET_KIND_INPUTS).dataset
    assert [json.loads(r)["messages"] for r in read(alice, dataset_id=inputs.id, side="all").rows_json] == [
        [{"role": "user", "content": "hello"}], [{"role": "user", "content": "bye"}],
    ]  # fmt: skip


def test_the_reader_stops_at_the_limit_or_the_size_cap_without_holding_a_long_row():
    data = b"a1\n\nb22\nc333\nd4444"
    for size in (1, 3, 100):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        assert first_lines(chunks, 10) == (["a1", "b22", "c333", "d4444"], False)
        assert first_lines(chunks, 2) == (["a1", "b22"], True)
        assert first_lines(chunks, 4) == (["a1", "b22", "c333", "d4444"], False)
        assert first_lines(chunks, 10, max_bytes=9) == (["a1", "b22", "c333"], True)

    taken: list[bytes] = []

    def endless():  # one row that never ends
        yield b"ok\n"
        while True:
            taken.append(b"x" * 10)
            yield taken[-1]

    assert first_lines(endless(), 10, max_bytes=50) == (["ok"], True)
    assert len(taken) <= 5  # stopped once the row could not fit
