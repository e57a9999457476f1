"""Runs the guard for the service: one worker thread, micro-batching, and a deadline per call.

Guards are not assumed to be thread-safe (the encoder keeps a cache and torch already uses every
core for one batch), so a single worker thread owns the guard. Requests that arrive while it is
busy queue up; when it is free it takes every queued `assess` job (up to `max_batch`) and scores
them in one `guard.assess_many` call, which for the encoder is one batched forward pass — the
reason throughput grows with concurrency instead of collapsing. Streaming-session turns run as
plain calls on the same thread, in arrival order, so a session's turns are applied in order even
if a caller gave up waiting. A caller waits at most `timeout_s` (queueing included) and then gets
`GuardTimeout`; a stateless job that has not started by then is dropped.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar

from ..conversation import Conversation
from ..guards import Assessment, BaseGuard

T = TypeVar("T")


class GuardFailure(Exception):
    """The guard raised; `kind` is the exception type name (never its message: it may quote text)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class GuardTimeout(Exception):
    """The guard did not answer within the deadline."""


@dataclass
class _AssessJob:
    conversation: Conversation
    indices: list[int]
    future: Future[list[Assessment]]


@dataclass
class _CallJob:
    fn: Callable[[], Any]
    future: Future[Any]


_STOP = object()


def _log_failure(fut: Future[Any]) -> None:
    exc = fut.exception() if not fut.cancelled() else None
    if exc is not None:
        import logging

        logging.getLogger("mindguard.serve").error("guard session update failed with %s", type(exc).__name__)


class GuardRunner:
    """`assess(conversation, indices)` and `call(fn)` on the guard's own thread, with a deadline."""

    def __init__(self, guard: BaseGuard, timeout_s: float, max_batch: int = 16,
                 observe: Callable[[int, float], None] | None = None) -> None:
        self.guard = guard
        self.timeout_s = timeout_s
        self.max_batch = max_batch
        self._observe = observe  # (batch size, seconds) of each guard call, for metrics
        self._q: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="mindguard-guard", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._q.put(_STOP)
        self._thread.join(timeout=10)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def queue_depth(self) -> int:
        return self._q.qsize()

    def assess(self, conversation: Conversation, indices: Sequence[int]) -> list[Assessment]:
        fut: Future[list[Assessment]] = Future()
        self._q.put(_AssessJob(conversation, list(indices), fut))
        return self._wait(fut, cancel=True)

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the guard thread. It is not cancelled on timeout: session state stays whole."""
        fut: Future[T] = Future()
        self._q.put(_CallJob(fn, fut))
        return self._wait(fut, cancel=False)

    def submit(self, fn: Callable[[], Any]) -> None:
        """Queue `fn` on the guard thread without waiting (in order with every other call)."""
        fut: Future[Any] = Future()
        fut.add_done_callback(_log_failure)
        self._q.put(_CallJob(fn, fut))

    def _wait(self, fut: Future[T], cancel: bool) -> T:
        try:
            return fut.result(timeout=self.timeout_s)
        except FutureTimeout:
            if cancel:
                fut.cancel()
            raise GuardTimeout() from None
        except GuardFailure:
            raise
        except Exception as exc:  # noqa: BLE001 - any guard exception becomes a guard failure
            raise GuardFailure(type(exc).__name__) from exc

    # -- worker ----------------------------------------------------------------------------------
    def _work(self) -> None:
        carry: Any = None
        while True:
            job = carry if carry is not None else self._q.get()
            carry = None
            if job is _STOP:
                return
            if isinstance(job, _CallJob):
                self._run_call(job)
                continue
            batch = [job]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if isinstance(nxt, _AssessJob):
                    batch.append(nxt)
                else:  # keep the order of calls relative to each other: run it right after this batch
                    carry = nxt
                    break
            self._run_batch(batch)

    def _run_call(self, job: _CallJob) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        t0 = time.perf_counter()
        try:
            job.future.set_result(job.fn())
        except BaseException as exc:  # noqa: BLE001 - reported to the waiting request
            job.future.set_exception(exc)
        if self._observe:
            self._observe(1, time.perf_counter() - t0)

    def _run_batch(self, batch: list[_AssessJob]) -> None:
        live = [j for j in batch if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        t0 = time.perf_counter()
        try:
            results = self.guard.assess_many([j.conversation for j in live], [j.indices for j in live])
        except Exception:  # noqa: BLE001 - one bad conversation must not fail the others: retry singly
            for j in live:
                try:
                    j.future.set_result(self.guard.assess_many([j.conversation], [j.indices])[0])
                except Exception as exc:  # noqa: BLE001
                    j.future.set_exception(exc)
        else:
            for j, r in zip(live, results):
                j.future.set_result(r)
        if self._observe:
            self._observe(len(live), time.perf_counter() - t0)
