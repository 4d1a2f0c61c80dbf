"""Live progress from a training loop to the trainer service, without ever slowing the loop.

``ProgressPush`` is a transformers ``TrainerCallback``. On rank 0 it queues a Progress event
at most twice a second (and always for the last step) and a Metrics event for every log;
a daemon thread drains the bounded queue (the oldest events go first when it is full) and
sends them in batches with ``TrainerService.ReportRunEvents``, authenticated by the run's
token. A failed send is logged at most once a minute and never reaches training. When the
service answers ``keep_going=False`` (the run is final, or paused), or refuses the run's token
(UNAUTHENTICATED: the run is final or the token expired, ``services/trainer/job_access.py``),
training saves a checkpoint and stops at the next step, on every rank: the flag is all-reduced when
there is more than one. A paused run's next job goes on from that checkpoint (``services/trainer/pauses.py``).

Without ``DISTILLERY_TRAINER_ADDRESS`` and ``DISTILLERY_RUN_TOKEN`` nothing is sent.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import threading
import time
from typing import Any

import grpc
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from distillery.trainer.v1 import trainer_pb2, trainer_pb2_grpc

log = logging.getLogger(__name__)

# Log keys passed on as metrics (when finite); tokens_per_second is computed here.
METRIC_KEYS = (
    "loss", "learning_rate", "grad_norm", "eval_loss", "mean_token_accuracy", "eval_mean_token_accuracy",
)  # fmt: skip
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


class ProgressPush(TrainerCallback):
    def __init__(
        self,
        run_id: str,
        address: str = "",
        token: str = "",
        *,
        max_queue: int = 1000,
        min_interval_s: float = 0.5,
        timeout_s: float = 2.0,
        max_batch: int = 200,
    ) -> None:
        self.run_id = run_id
        self.token = token
        self.timeout_s = timeout_s
        self.min_interval_s = min_interval_s
        self.max_batch = max_batch
        self.stopped_by_service = False  # the same on every rank once training ends
        self._queue: collections.deque[trainer_pb2.RunEvent] = collections.deque(maxlen=max_queue)
        self._cond = threading.Condition()
        self._closing = False
        self._stop = threading.Event()  # keep_going=False came back (rank 0 only)
        self._last_progress = 0.0
        self._last_error_log = -math.inf
        self._begin = (time.monotonic(), 0)  # (time, step) when this attempt began
        self._tokens: tuple[float, float] | None = None  # (time, trl's num_tokens) at the last log
        self._channel: grpc.Channel | None = None
        self._thread: threading.Thread | None = None
        if address and token:
            self._channel = grpc.insecure_channel(address)
            self._stub = trainer_pb2_grpc.TrainerServiceStub(self._channel)
            self._thread = threading.Thread(target=self._drain, name="progress-push", daemon=True)
            self._thread.start()

    @classmethod
    def from_env(cls, run_id: str, *, rank: int) -> ProgressPush:
        """Sends only on rank 0, and only when the trainer's address and the run's token are set."""
        if rank != 0:
            return cls(run_id)
        return cls(run_id, os.environ.get("DISTILLERY_TRAINER_ADDRESS", ""), os.environ.get("DISTILLERY_RUN_TOKEN", ""))

    @property
    def sending(self) -> bool:
        return self._thread is not None and not self._closing

    # --- the callback ---

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._begin = (time.monotonic(), state.global_step)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        now = time.monotonic()
        last = state.max_steps > 0 and state.global_step >= state.max_steps
        if self.sending and (last or now - self._last_progress >= self.min_interval_s):
            self._last_progress = now
            began, first_step = self._begin
            done = state.global_step - first_step
            eta = (now - began) / done * max(state.max_steps - state.global_step, 0) if done > 0 else 0.0
            progress = trainer_pb2.Progress(
                step=state.global_step, total_steps=state.max_steps, epoch=float(state.epoch or 0.0), eta_seconds=eta
            )
            self.put(trainer_pb2.RunEvent(progress=progress))
        if self._stop_everywhere(args):
            self.stopped_by_service = True
            control.should_training_stop = True
            control.should_save = True  # a checkpoint where it stops: a paused run goes on from this step

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not self.sending or not logs:
            return
        values = {k: float(logs[k]) for k in METRIC_KEYS if isinstance(logs.get(k), int | float)}
        tokens = logs.get("num_tokens")
        if isinstance(tokens, int | float):
            now = time.monotonic()
            since, before = self._tokens or (self._begin[0], 0.0)
            if now > since and tokens >= before:
                values["tokens_per_second"] = (tokens - before) / (now - since)
            self._tokens = (now, float(tokens))
        values = {k: v for k, v in values.items() if math.isfinite(v)}
        if values:
            self.put(trainer_pb2.RunEvent(metrics=trainer_pb2.Metrics(step=state.global_step, values=values)))

    # --- the queue and its sender ---

    def put(self, event: trainer_pb2.RunEvent) -> None:
        """Queue an event; never blocks (a full queue drops its oldest event)."""
        if not self.sending:
            return
        with self._cond:
            self._queue.append(event)
            self._cond.notify()

    def close(self, timeout_s: float = 3.0) -> None:
        """Send what is queued (waiting at most ``timeout_s``), then stop the sender."""
        if self._thread is None:
            return
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout_s)
        if self._channel is not None and not self._thread.is_alive():
            self._channel.close()

    def _drain(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch))]
            if self._send(batch):
                continue
            with self._cond:  # put the batch back in front, still within the bound, and wait a little
                if self._closing:
                    self._queue.clear()
                    return
                kept = (batch + list(self._queue))[-(self._queue.maxlen or len(batch)) :]
                self._queue.clear()
                self._queue.extend(kept)
                self._cond.wait(1.0)

    def _send(self, batch: list[trainer_pb2.RunEvent]) -> bool:
        """True when the batch is done with (sent, or refused for good)."""
        try:
            reply = self._stub.ReportRunEvents(
                trainer_pb2.ReportRunEventsRequest(run_id=self.run_id, events=batch),
                metadata=(("authorization", f"Bearer {self.token}"),),
                timeout=self.timeout_s,
            )
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            self._log_error(f"{code}: {err.details() if isinstance(err, grpc.Call) else err}")
            if code == grpc.StatusCode.UNAUTHENTICATED:  # the run is final, or this job's time is over
                self._stop.set()
            return code not in RETRYABLE
        except Exception as err:  # never into training
            self._log_error(repr(err))
            return True
        if not reply.keep_going:
            self._stop.set()
        return True

    def _log_error(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 60:
            self._last_error_log = now
            log.warning("cannot push progress of run %s to the trainer (%s); training goes on", self.run_id, text)

    def _stop_everywhere(self, args: TrainingArguments) -> bool:
        """Whether the service said to stop, agreed across ranks (a tiny all-reduce when there are several)."""
        stop = self._stop.is_set()
        if args.world_size > 1:
            import torch
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                flag = torch.tensor([1.0 if stop else 0.0], device=args.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop = bool(flag.item() > 0)
        return stop


class StageProgress(TrainerCallback):
    """Hands a stage's steps to ``ProgressPush`` as steps of the whole run: ``offset`` + the stage's, of ``total``
    (a job of several trainers, e.g. SFT then GRPO, shows one step count). A logged ``reward`` goes on as
    ``grpo_reward``."""

    def __init__(self, push: ProgressPush, offset: int, total: int) -> None:
        self.push, self.offset, self.total = push, offset, total

    def _run_state(self, state: Any) -> Any:
        return dataclasses.replace(state, global_step=self.offset + state.global_step, max_steps=self.total)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.push.on_train_begin(args, self._run_state(state), control)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.push.on_step_end(args, self._run_state(state), control)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        logs = dict(logs or {})
        if isinstance(logs.get("reward"), int | float):
            push_metrics(self.push, self.offset + state.global_step, {"grpo_reward": float(logs["reward"])})
        self.push.on_log(args, self._run_state(state), control, logs=logs)


def push_metrics(push: ProgressPush | None, step: int, values: dict[str, float]) -> None:
    """Metrics a recipe computed itself (an evaluation's rates), as one Metrics event at ``step``."""
    if push is not None and push.sending:
        push.put(trainer_pb2.RunEvent(metrics=trainer_pb2.Metrics(step=step, values=values)))


def stage_log(push: ProgressPush, text: str) -> None:
    """A log line for the run's events (and this job's log): which stage begins."""
    log.info("%s", text)
    push.put(trainer_pb2.RunEvent(log=trainer_pb2.LogLine(text=text)))
