"""``GetRun`` and ``ListRuns`` under 100 concurrent clients: p50/p99 latency and throughput.

Starts a local stack (``distillery up`` in a temporary home: every service in its own process), gives the dev
tenant ``RUNS`` finished runs (rows as a trained run leaves them: its request, metrics, progress, evals), then,
from a separate client process (grpc.aio, ``CLIENTS`` concurrent callers over ``CHANNELS`` channels, each
call with a 5 s deadline and the tenant's API key), calls for ``--seconds`` each:

- baseline: grpc health ``Check`` of the trainer (the same server, no interceptor, no database)
- ``GetRun`` of a random run of the tenant
- ``ListRuns``, the first page (20 runs)

each saturating (every caller calls again as soon as it is answered: throughput, and latency as queueing makes
it), then ``GetRun`` and ``ListRuns`` paced (each caller ``PACED_RATE`` calls a second on a schedule, latency
timed from when the call was due: what 100 clients see while the server has capacity to spare). It prints each
one's p50/p99 latency and calls/s, the ratio of GetRun's p99 to the baseline's, the CPU seconds of the client
process against the server side's (trainer + registry + PostgreSQL) over the same window (the machine's cores
are shared between them), and each service's health afterwards (SERVING).

    python -m bench.bench_api_latency [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import secrets
import statistics
import subprocess
import sys
import time
from typing import Any

import psutil

CLIENTS = 100
CHANNELS = 10
RUNS = 200
PAGE = 20
PACED_RATE = 2.0  # calls a second per client in the paced phases: 200/s in all, under the server's capacity
TARGET_P99_MS = 20.0


# --- the server side: the stack and its runs ---


def seed_runs(database_url: str, tenant_id: str, count: int = RUNS) -> list[str]:
    """``count`` SUCCEEDED finetune runs of ``tenant_id``, shaped as a trained run leaves its row."""
    import psycopg
    from psycopg.types.json import Jsonb

    from distillery.trainer.v1 import trainer_pb2 as pb

    ids = [f"run_{secrets.token_hex(10)}" for _ in range(count)]
    evals = [{"step": s * 10, "values": {"eval_loss": 2.0 - s / 10}} for s in range(1, 11)]
    metrics = {f"m{i}": float(i) for i in range(20)} | {"eval_loss_before": 2.1, "eval_loss_after": 1.1}
    with psycopg.connect(database_url, options="-c search_path=trainer", autocommit=True) as conn:
        for n, run_id in enumerate(ids):
            request = {
                "path": "TRAINING_PATH_FINETUNE_TEXT", "datasetId": f"ds_{n:020x}", "studentModel": "Qwen/Qwen2.5-0.5B",
                "modelName": f"model-{n}", "sft": {"maxSteps": 100, "learningRate": 0.0002, "batchSize": 4},
            }  # fmt: skip
            conn.execute(
                "INSERT INTO runs (id, tenant_id, path, mode, state, request, progress, metrics, result, model_id)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    run_id, tenant_id, 2, 1, pb.RUN_STATE_SUCCEEDED, Jsonb(request),
                    Jsonb({"step": 100, "totalSteps": 100, "loss": 1.0}), Jsonb(metrics),
                    Jsonb({"evals": evals, "best_step": 100, "stop": {"reason": "max_steps", "step": 100}}),
                    f"mdl_{n:020x}",
                ),
            )  # fmt: skip
    return ids


def process_cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) of these processes and their children."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                with_children = proc.cpu_times()
                total += with_children.user + with_children.system
        except psutil.Error:  # gone, or another user's (PostgreSQL run as its system user)
            continue
    return total


def measure(seconds: float) -> None:
    from bench.local_stack import temporary_stack

    with temporary_stack() as stack:
        ids = seed_runs(stack.database_url(), stack.tenant_id)
        state = stack.state
        server_pids = [stack.pid("trainer"), stack.pid("registry"), stack.pid("postgres")]
        plan = {
            "address": state["parts"]["trainer"]["address"], "key": (stack.home / "credentials.json").read_text(),
            "ids": ids, "seconds": seconds,
        }  # fmt: skip
        server_before = process_cpu_s(server_pids)
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "bench.bench_api_latency", "--client"], input=json.dumps(plan), text=True,
            capture_output=True, check=False, cwd=os.getcwd(),
        )  # fmt: skip
        wall = time.perf_counter() - started
        server_cpu = process_cpu_s(server_pids) - server_before
        if out.returncode != 0:
            raise RuntimeError(f"the client process failed:\n{out.stderr[-3000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        health = stack.health()
    report(result, wall, server_cpu, health, seconds)


def report(result: dict[str, Any], wall: float, server_cpu: float, health: dict[str, str], seconds: float) -> None:
    print(f"{CLIENTS} concurrent clients over {CHANNELS} channels, {seconds:.0f} s per call; {RUNS} runs in the tenant")
    print(f"{'call':<22}{'p50 ms':>9}{'p99 ms':>9}{'calls/s':>10}{'errors':>8}")
    for name in ("health Check", "GetRun", "ListRuns", "GetRun paced", "ListRuns paced"):
        r = result[name]
        print(f"{name:<22}{r['p50_ms']:9.2f}{r['p99_ms']:9.2f}{r['rate']:10.0f}{r['errors']:8d}")
    get, base, paced = result["GetRun"], result["health Check"], result["GetRun paced"]
    print(f"ratio GetRun p99 / health Check p99 (both saturating): {get['p99_ms'] / base['p99_ms']:.2f}")
    print(f"saturating: {CLIENTS} callers each waiting for its answer keep {CLIENTS} calls in flight, so latency is "
          f"{CLIENTS} / throughput (Little's law): GetRun {CLIENTS / get['rate'] * 1e3:.1f} ms expected, p50 "
          f"{get['p50_ms']:.1f} ms measured")  # fmt: skip
    for label, r in (("saturating", get), (f"paced ({CLIENTS} x {PACED_RATE:.0f}/s)", paced)):
        verdict = "below" if r["p99_ms"] < TARGET_P99_MS else "above"
        print(f"GetRun p99 {label}: {r['p99_ms']:.1f} ms, {verdict} the {TARGET_P99_MS:.0f} ms target")
    cores = psutil.cpu_count() or 1
    client_cpu = result["cpu_s"]
    print(
        f"CPU over {wall:.0f} s on {cores} cores: client process {client_cpu:.1f} s, server side (trainer + registry"
        f" + PostgreSQL) {server_cpu:.1f} s; client share {client_cpu / max(client_cpu + server_cpu, 1e-9):.0%}"
    )
    print("health afterwards: " + ", ".join(f"{name} {status}" for name, status in health.items()))


# --- the client process ---


async def load(plan: dict[str, Any]) -> dict[str, Any]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from distillery.common.v1 import common_pb2
    from distillery.trainer.v1 import trainer_pb2 as pb
    from distillery.trainer.v1 import trainer_pb2_grpc

    key = json.loads(plan["key"])["api_key"]
    metadata = (("authorization", f"Bearer {key}"),)
    channels = [
        grpc.aio.insecure_channel(plan["address"], options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CHANNELS)
    ]
    trainers = [trainer_pb2_grpc.TrainerServiceStub(c) for c in channels]
    healths = [health_pb2_grpc.HealthStub(c) for c in channels]
    ids = plan["ids"]

    def calls(n: int) -> dict[str, Any]:
        trainer, health = trainers[n % CHANNELS], healths[n % CHANNELS]
        return {
            "health Check": lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5),
            "GetRun": lambda: trainer.GetRun(pb.GetRunRequest(id=random.choice(ids)), metadata=metadata, timeout=5),
            "ListRuns": lambda: trainer.ListRuns(
                pb.ListRunsRequest(page=common_pb2.PageRequest(page_size=PAGE)), metadata=metadata, timeout=5
            ),
        }

    async def phase(name: str, seconds: float, paced: bool = False) -> dict[str, Any]:
        latencies: list[float] = []
        errors = 0
        deadline = time.perf_counter() + seconds

        async def client(n: int) -> None:
            nonlocal errors
            call = calls(n)[name]
            due = time.perf_counter() + random.random() / PACED_RATE  # paced clients start spread over a period
            while time.perf_counter() < deadline:
                if paced:  # the next call at its time, however long the last one took (no coordinated omission)
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    due += 1 / PACED_RATE
                started = time.perf_counter()
                try:
                    await call()
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - (due - 1 / PACED_RATE if paced else started))

        began = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(CLIENTS)))
        elapsed = time.perf_counter() - began
        q = statistics.quantiles(latencies, n=100, method="inclusive")
        return {"p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3, "rate": len(latencies) / elapsed, "errors": errors}

    try:
        for name in ("health Check", "GetRun", "ListRuns"):  # warm up: channels, the key cache, the pools
            await phase(name, 1.0)
        out = {name: await phase(name, plan["seconds"]) for name in ("health Check", "GetRun", "ListRuns")}
        for name in ("GetRun", "ListRuns"):
            out[f"{name} paced"] = await phase(name, plan["seconds"], paced=True)
    finally:
        for channel in channels:
            await channel.close(None)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {**out, "cpu_s": usage.ru_utime + usage.ru_stime}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_api_latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long each call is measured (default 30)")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)  # the load, in its own process
    args = parser.parse_args(argv if argv is not None else ([] if __name__ != "__main__" else None))
    if args.client:
        print(json.dumps(asyncio.run(load(json.loads(sys.stdin.read())))))
        return
    measure(args.seconds)


if __name__ == "__main__":
    main()
