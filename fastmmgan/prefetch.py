"""Drawing the next step's batch in a background thread while the current step runs.

The draws are a pure function of (seed, step) (:func:`fastmmgan.step_inputs.draw_step_inputs`), so a batch
drawn ahead is the batch the step would have drawn itself: prefetching changes when the work happens, never
what the step sees, and a resumed run stays exact. On CUDA the batch is also put in page-locked memory, so
its ``non_blocking`` copy to the device overlaps the step.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from .step_inputs import StepInputs


class BatchPrefetcher:
    """``get(step)`` returns ``draw(step)``; with ``ahead`` it has already started ``draw(step + 1)`` in a thread
    (up to ``stop``). ``pin``: page-lock each batch (for a CUDA copy)."""

    def __init__(self, draw: Callable[[int], StepInputs], stop: int, ahead: bool = True, pin: bool = False) -> None:
        self._draw, self._stop, self._pin = draw, stop, pin
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fastmmgan-prefetch") if ahead else None
        self._pending: tuple[int, Future[StepInputs]] | None = None

    def _make(self, step: int) -> StepInputs:
        batch = self._draw(step)
        return batch.pin_memory() if self._pin else batch

    def get(self, step: int) -> StepInputs:
        """The inputs of ``step`` (drawn ahead when the previous call asked for ``step - 1``)."""
        if self._pending is not None and self._pending[0] == step:
            batch = self._pending[1].result()
        else:
            if self._pending is not None:
                self._pending[1].cancel()
            batch = self._make(step)
        self._pending = None
        if self._pool is not None and step + 1 < self._stop:
            self._pending = (step + 1, self._pool.submit(self._make, step + 1))
        return batch

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BatchPrefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
