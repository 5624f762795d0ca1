"""Micro-batching for the HTTP server: concurrent requests' graph inputs merged into one ONNX Runtime run.

Both route sets of :mod:`fastmmgan.export.server` (``/generate`` and the Open Inference Protocol routes of
:mod:`fastmmgan.export.oip`) submit to the same :class:`MicroBatcher`; it knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

Runner = Callable[[np.ndarray, Sequence[np.ndarray], np.ndarray], list[np.ndarray]]


class ServerBusy(Exception):
    """The request queue is full."""


@dataclass
class _Job:
    inputs: list[np.ndarray]
    future: asyncio.Future

    @property
    def rows(self) -> int:
        return len(self.inputs[0])


class MicroBatcher:
    """Merges concurrent requests' inputs ``[z, x_1..x_M, mask]`` into one run of ``runner`` and splits the outputs.

    Jobs are never split: a batch closes when the next job would push it past ``max_batch`` rows (that job
    opens the next batch), when ``max_wait_ms`` has passed since the batch opened, or when the queue is empty
    and the wait is over. Runs happen one at a time on a worker thread, so the event loop keeps accepting.
    """

    def __init__(self, runner: Runner, max_batch: int, max_wait_ms: float, max_queue: int) -> None:
        self.runner = runner
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.requests = self.runs = self.rows = self.largest_batch = 0
        self._queue: asyncio.Queue[_Job] | None = None
        self._carry: _Job | None = None
        self._running: list[_Job] = []
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queue)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="fastmmgan-ort")
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        pending = [*self._running, *([self._carry] if self._carry else [])]
        while self._queue is not None and not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for job in pending:
            if not job.future.done():
                job.future.set_exception(ServerBusy("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @property
    def running(self) -> bool:
        """Whether the worker is taking requests: started, and neither stopped nor crashed."""
        return self._task is not None and not self._task.done()

    def stats(self) -> dict[str, int]:
        queued = self._queue.qsize() if self._queue is not None else 0
        counts = {"requests": self.requests, "runs": self.runs, "rows": self.rows, "largest_batch": self.largest_batch}
        return {"queued": queued, **counts}

    async def submit(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Queue one request's inputs; its outputs (one array per modality) when its batch has run."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if not self.running:  # nobody would ever answer a job queued now
            raise ServerBusy("the server is shutting down")
        job = _Job(inputs, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise ServerBusy(f"server busy: {self.max_queue} requests already queued, retry later") from None
        self.requests += 1
        return await job.future

    async def _next_job(self, timeout: float) -> _Job | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            if timeout <= 0:
                return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _collect(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        first = self._carry if self._carry is not None else await self._queue.get()
        self._carry = None
        jobs, rows = [first], first.rows
        deadline = loop.time() + self.max_wait
        while rows < self.max_batch:
            job = await self._next_job(deadline - loop.time())
            if job is None:
                break
            if rows + job.rows > self.max_batch:
                self._carry = job
                break
            jobs.append(job)
            rows += job.rows
        return [j for j in jobs if not j.future.done()]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            if not jobs:
                continue
            self._running = jobs
            try:
                outputs = await loop.run_in_executor(self._executor, self._run, jobs)
            except Exception as e:  # hand every waiting request the failure; keep serving
                outputs = [e] * len(jobs)
            self._running = []
            for job, out in zip(jobs, outputs, strict=True):
                if job.future.done():
                    continue
                if isinstance(out, Exception):
                    job.future.set_exception(out)
                else:
                    job.future.set_result(out)

    def _run(self, jobs: list[_Job]) -> list[list[np.ndarray]]:
        merged = [np.concatenate(parts) for parts in zip(*(j.inputs for j in jobs), strict=True)]
        z, *xs, mask = merged
        outputs = self.runner(z, xs, mask)
        rows = [j.rows for j in jobs]
        self.runs += 1
        self.rows += sum(rows)
        self.largest_batch = max(self.largest_batch, sum(rows))
        cuts = np.cumsum(rows)[:-1]
        per_output = [np.split(o, cuts) for o in outputs]
        return [list(parts) for parts in zip(*per_output, strict=True)]
