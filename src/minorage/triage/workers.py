"""Worker processes that may die: the scan's readers and detectors, supervised.

Evidence is hostile: a decoder can crash (a segfault), be killed (out of memory) or never
return. Each worker has its own pipe and takes its files in order, so when one dies the file it
was working on is known: that file is retried once in a fresh worker and, if it kills that one
too, gets the status `worker_died` with the signal; the files queued behind it are simply handed
out again. A file that runs past the time limit is `timeout` and its worker is replaced. The
other workers go on throughout, and the run always ends. On Linux, workers are forked from a
server process that has imported their modules once, so that a replacement starts in a few
hundredths of a second instead of importing them and loading the detector anew (about 0.3 s;
`benchmarks/workers.py`): a collection of crafted files that each crash a decoder costs two
replacements a file.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing import forkserver, get_context
from multiprocessing.connection import Connection, wait
from typing import Any

_READY = "ready"


@dataclass(frozen=True)
class Failed:
    """A task no worker could finish: `status` worker_died or timeout, and why."""

    status: str
    message: str


def _serve(conn: Connection, initializer: Callable, initargs: tuple, task: Callable) -> None:
    """A worker's life: set up, say so, then one task at a time until told to stop. Its parent is
    the supervising process, or the fork server, which ends when that process ends."""
    initializer(*initargs)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    conn.send(_READY)
    while (item := conn.recv()) is not None:
        conn.send(task(item))


def _exit_with_parent(parent: int) -> None:
    """A worker whose run was killed (kill -9 leaves no chance to stop it) ends itself."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def describe_exit(code: int | None) -> str:
    """`signal 9 (SIGKILL)` or `exit code 1`."""
    if code is not None and code < 0:
        try:
            return f"signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


@dataclass
class _Worker:
    process: Any
    conn: Connection
    queue: deque = field(default_factory=deque)  # (item, attempts) sent, in order
    since: float = field(default_factory=time.monotonic)  # last word from it: its head's clock
    ready: bool = False


def default_start_method() -> str:
    """The fork server on Linux; elsewhere spawn, since on macOS a process forked after
    PyTorch's import may crash in the system's libraries."""
    return "forkserver" if sys.platform.startswith("linux") else "spawn"


def start_fork_server(preload: tuple[str, ...]) -> None:
    """Start the fork server now, importing `preload`, where workers are forked from one: a
    caller that starts it before importing those modules itself imports them at the same time
    instead of one after the other."""
    if default_start_method() == "forkserver":
        get_context("forkserver").set_forkserver_preload(list(preload))
        forkserver.ensure_running()


class Supervisor:
    """`imap` of `task` over items in `workers` processes, each with at most `in_flight` items
    queued; results come as they finish (item, result or `Failed`). `preload`: modules the fork
    server imports once for every worker. `start_method`: "forkserver" or "spawn" (each worker
    imports what it needs itself); by default `default_start_method()`."""

    def __init__(self, workers: int, initializer: Callable, initargs: tuple, task: Callable,
                 in_flight: int = 4, timeout: float | None = None, retries: int = 1, preload: tuple[str, ...] = (),
                 start_method: str | None = None):
        self.size, self.in_flight, self.timeout, self.retries = workers, in_flight, timeout, retries
        self.target = (initializer, initargs, task)
        self.context = get_context(start_method or default_start_method())
        if self.context.get_start_method() == "forkserver":
            self.context.set_forkserver_preload(list(preload))
        self.workers: list[_Worker] = []
        self.replaced = 0  # workers that died or were stopped and replaced

    def _start(self) -> _Worker:
        mine, theirs = self.context.Pipe()
        process = self.context.Process(target=_serve, args=(theirs, *self.target), daemon=True)
        process.start()
        theirs.close()
        return _Worker(process, mine)

    def imap(self, items: Iterable) -> Iterator[tuple[Any, Any]]:
        source, again = iter(items), deque()  # again: (item, attempts) to hand out first
        exhausted = False
        self.workers = self.workers or [self._start() for _ in range(self.size)]
        try:
            while True:
                for worker in self.workers:
                    while worker.ready and len(worker.queue) < self.in_flight:
                        if again:
                            job = again.popleft()
                        elif not exhausted:
                            try:
                                job = (next(source), 0)
                            except StopIteration:
                                exhausted = True
                                break
                        else:
                            break
                        if not worker.queue:
                            worker.since = time.monotonic()  # its clock starts with its first file
                        worker.conn.send(job[0])
                        worker.queue.append(job)
                if exhausted and not again and not any(w.queue for w in self.workers):
                    return
                yield from self._collect(again)
        finally:
            self.close()

    def _collect(self, again: deque) -> Iterator[tuple[Any, Any]]:
        """Results that have arrived; dead or overdue workers replaced, their files handed out again."""
        by_handle = {w.conn: w for w in self.workers} | {w.process.sentinel: w for w in self.workers}
        for handle in wait(list(by_handle), timeout=1.0):
            worker = by_handle[handle]
            if worker in self.workers and handle is worker.conn:
                yield from self._receive(worker)
        for worker in list(self.workers):
            if not worker.process.is_alive():
                yield from self._receive(worker)  # what it finished before it died
                if not worker.ready:
                    raise RuntimeError(f"a worker process failed to start ({describe_exit(worker.process.exitcode)})")
                yield from self._replace(worker, again, describe_exit(worker.process.exitcode), "worker_died")
            elif self.timeout and worker.queue and time.monotonic() - worker.since > self.timeout:
                worker.process.kill()
                worker.process.join()
                yield from self._replace(worker, again, f"no result after {self.timeout:g} s", "timeout")

    def _receive(self, worker: _Worker) -> Iterator[tuple[Any, Any]]:
        try:
            while worker.conn.poll():
                message = worker.conn.recv()
                worker.since = time.monotonic()
                if message == _READY:
                    worker.ready = True
                else:
                    yield worker.queue.popleft()[0], message
        except (EOFError, OSError):
            return  # it died mid-message; its queue is handed out again

    def _replace(self, worker: _Worker, again: deque, why: str, status: str) -> Iterator[tuple[Any, Any]]:
        """The head of a lost worker's queue is the file it was on: retried, or failed; the
        rest go back out untouched."""
        self.workers[self.workers.index(worker)] = self._start()
        self.replaced += 1
        worker.conn.close()
        if not worker.queue:
            return
        item, attempts = worker.queue.popleft()
        again.extendleft(reversed(worker.queue))
        if status == "timeout" or attempts >= self.retries:
            tries = f" (in {attempts + 1} workers)" if attempts else ""
            yield item, Failed(status, f"the worker process reading this file stopped{tries}: {why}")
        else:
            again.appendleft((item, attempts + 1))

    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers]

    def close(self) -> None:
        for worker in self.workers:
            if worker.process.is_alive():
                try:
                    worker.conn.send(None)
                except OSError:
                    pass
        for worker in self.workers:
            worker.process.join(timeout=2)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self.workers = []
