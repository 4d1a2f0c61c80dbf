"""The Ray Jobs API, as the trainer uses it: submit a run's training job, ask how it
is, stop it, read its logs.

``JobSubmissionClient`` is synchronous (HTTP to the Ray dashboard) and checks the
connection when it is made, so it is made lazily, remade after a failure, and every
call runs in a worker thread. The head's auth token goes in the Authorization header.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass
from typing import Any

from services.common.errors import Unavailable

# Job statuses as Ray names them.
PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED = "PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED"
FINISHED = frozenset({STOPPED, SUCCEEDED, FAILED})


@dataclass(frozen=True)
class JobState:
    status: str
    message: str


class RayJobs:
    def __init__(self, address: str, token: str) -> None:
        self.address = address
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client: Any = None
        self._lock = threading.Lock()

    def _connected(self) -> Any:
        if not self.address:
            raise Unavailable("no Ray cluster is configured for training (set DISTILLERY_RAY_ADDRESS)")
        with self._lock:
            if self._client is None:
                from ray.job_submission import JobSubmissionClient

                try:
                    self._client = JobSubmissionClient(self.address, headers=self._headers)
                except (ConnectionError, RuntimeError, OSError) as err:
                    raise self._unreachable(err) from None
            return self._client

    def _unreachable(self, err: Exception) -> Unavailable:
        self._client = None
        return Unavailable(f"the Ray cluster at {self.address} is unreachable ({type(err).__name__}); is it up?")

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        client = self._connected()
        try:
            return getattr(client, method)(*args, **kwargs)
        except RuntimeError as err:
            if "404" in str(err) or "does not exist" in str(err):
                raise LookupError(str(err)) from None
            raise self._unreachable(err) from None
        except (ConnectionError, OSError) as err:  # requests' errors are OSErrors
            raise self._unreachable(err) from None

    async def submit(self, job_id: str, entrypoint: str, env: dict[str, str]) -> None:
        await asyncio.to_thread(
            self._call, "submit_job", entrypoint=entrypoint, submission_id=job_id, runtime_env={"env_vars": env}
        )

    async def state(self, job_id: str) -> JobState | None:
        """None when Ray has no such job (never submitted, or the cluster was replaced)."""
        try:
            info = await asyncio.to_thread(self._call, "get_job_info", job_id)
        except LookupError:
            return None
        return JobState(str(getattr(info.status, "value", info.status)), info.message or "")

    async def stop(self, job_id: str) -> None:
        with contextlib.suppress(LookupError):
            await asyncio.to_thread(self._call, "stop_job", job_id)

    async def logs(self, job_id: str) -> str:
        try:
            return str(await asyncio.to_thread(self._call, "get_job_logs", job_id))
        except LookupError:
            return ""
