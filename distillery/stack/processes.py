"""Process supervision for the local stack: start, recognise, find and stop processes.

Every part of the stack is a child process in a session of its own, with its
output in a log file. A part is recorded as ``(pid, create_time)`` so that a
recycled pid is never taken for the part. Processes the stack spawns itself
carry ``DISTILLERY_STACK_ID`` and ``DISTILLERY_STACK_PART`` in their environment, which their own children
(Ray's workers included) inherit: ``down`` finds them even when they have left
the process tree or sit in process groups of their own.

Stopping is always: find every process first, signal, wait a grace period,
SIGKILL the survivors, and then check that none of the stack's ports listens.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil

STACK_ID_VARIABLE = "DISTILLERY_STACK_ID"
STACK_PART_VARIABLE = "DISTILLERY_STACK_PART"


@dataclass(frozen=True)
class ProcessRef:
    """A process as recorded in stack.json: its pid and when it started."""

    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> ProcessRef:
        return cls(pid, psutil.Process(pid).create_time())

    def process(self) -> psutil.Process | None:
        """The live process, or None if it exited (or the pid now belongs to another)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.01:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.Error:
            return None

    def alive(self) -> bool:
        return self.process() is not None


def spawn(
    args: list[str],
    log: Path,
    env: Mapping[str, str],
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``args`` in a new session, stdout and stderr appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out: IO[bytes] = open(log, "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=dict(env),
            cwd=cwd,
        )
    finally:
        out.close()


def tail(log: Path, lines: int = 15) -> str:
    """The last lines of a log, for error messages."""
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16_384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --- finding the processes of a part -------------------------------------------------


def tree(root: psutil.Process) -> list[psutil.Process]:
    """``root`` and all its descendants (those that exist now)."""
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return [root]


def tagged_processes(stack_id: str) -> dict[str, list[psutil.Process]]:
    """Every process whose environment carries this stack's id, by the part it belongs to."""
    found: dict[str, list[psutil.Process]] = {}
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            env = proc.environ()
            if env.get(STACK_ID_VARIABLE) == stack_id and proc.status() != psutil.STATUS_ZOMBIE:
                found.setdefault(env.get(STACK_PART_VARIABLE, ""), []).append(proc)
        except psutil.Error:
            continue
    return found


def processes_with_argument(argument: str) -> list[psutil.Process]:
    """Processes with ``argument`` on their command line (e.g. a server's data directory), with their trees."""
    found = []
    for proc in psutil.process_iter():
        try:
            if argument in proc.cmdline() and proc.status() != psutil.STATUS_ZOMBIE:
                found.extend(tree(proc))
        except psutil.Error:
            continue
    return found


def unique(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    seen: dict[int, psutil.Process] = {}
    for proc in processes:
        seen.setdefault(proc.pid, proc)
    return list(seen.values())


# --- stopping -------------------------------------------------------------------------


@dataclass(frozen=True)
class StopPlan:
    """How to stop one part: the first signal goes to ``root`` only (it shuts its
    own children down), then SIGTERM to everyone left, then SIGKILL."""

    name: str
    root: psutil.Process | None
    processes: list[psutil.Process]
    first_signal: signal.Signals = signal.SIGTERM
    grace_s: float = 10.0


def _send(proc: psutil.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(psutil.Error):
        proc.send_signal(sig)


def _alive(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in processes:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.Error:
            continue
    return alive


def stop(plans: list[StopPlan], term_grace_s: float = 3.0) -> list[psutil.Process]:
    """Stop every part in ``plans`` together; returns the processes that survived SIGKILL."""
    for plan in plans:
        targets = [plan.root] if plan.root is not None else plan.processes
        for proc in targets:
            _send(proc, plan.first_signal)
    deadline = time.monotonic() + max((plan.grace_s for plan in plans), default=0)
    everyone = unique(proc for plan in plans for proc in plan.processes)
    while _alive(everyone) and time.monotonic() < deadline:
        _reap(everyone)
        time.sleep(0.1)
    survivors = _alive(everyone)
    if survivors:
        for proc in survivors:
            _send(proc, signal.SIGTERM)
        psutil.wait_procs(survivors, timeout=term_grace_s)
        survivors = _alive(survivors)
    if survivors:
        for proc in survivors:
            _send(proc, signal.SIGKILL)
        psutil.wait_procs(survivors, timeout=3)
        survivors = _alive(survivors)
    _reap(everyone)
    return survivors


def _reap(processes: Iterable[psutil.Process]) -> None:
    """Collect those of ``processes`` that are exited children of this process
    (when ``up`` and ``down`` run in one process), so they don't linger as zombies."""
    for proc in processes:
        try:
            os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:
            continue


# --- ports ----------------------------------------------------------------------------


def listening(ports: Iterable[int]) -> dict[int, str]:
    """Which of ``ports`` still accept connections on 127.0.0.1, with the holder if known."""
    from distillery.stack.servers import port_open

    still = {port: "" for port in ports if port and port_open(port)}
    if still:
        try:
            for conn in psutil.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port in still and conn.pid:
                    still[conn.laddr.port] = f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
        except psutil.Error:
            pass
    return still


# --- the lock that keeps two `up`s (or an `up` and a `down`) apart --------------------


class StackLock:
    """An exclusive ``flock`` on ``$DISTILLERY_HOME/stack.lock``; released when the process exits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, timeout_s: float, on_wait: object = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
            if time.monotonic() > deadline:
                os.close(fd)
                raise TimeoutError(f"another distillery command holds {self.path}")
            if not told and callable(on_wait):
                on_wait()
                told = True
            time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StackLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
