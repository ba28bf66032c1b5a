"""One model thread serving every waiting request: concurrent inputs share forward passes."""

from __future__ import annotations

import queue
import threading
from http import HTTPStatus

import numpy as np

from ..backbones.base import Backbone
from .requests import APIError


def take_waiting(items: queue.SimpleQueue, block: bool) -> tuple[list, bool]:
    """Everything waiting in ``items`` (waiting for a first one if ``block``, as a thread
    with nothing else to do does), and whether the stop signal ``None`` was among them."""
    taken = []
    try:
        while (item := items.get(block=block and not taken)) is not None:
            taken.append(item)
    except queue.Empty:
        return taken, False
    return taken, True


class _Job:
    """One request's texts on their way through the :class:`MicroBatcher`, a slice per pass."""

    def __init__(self, texts: list[str]):
        self.texts = texts
        self.next = 0  # first text not yet embedded
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    @property
    def remaining(self) -> int:
        return len(self.texts) - self.next

    def store(self, vectors: np.ndarray) -> None:
        if self.result is None:
            self.result = np.empty((len(self.texts), vectors.shape[1]), dtype=np.float32)
        self.result[self.next : self.next + len(vectors)] = vectors
        self.next += len(vectors)
        if not self.remaining:
            self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


class MicroBatcher:
    """Run one backbone from one thread, coalescing concurrent requests into shared passes.

    Requests that arrive while the model is busy wait in a queue, and each pass serves all
    waiting requests together: at most ``max_batch_inputs`` texts, shared out equally among
    them, sorted by length so that little padding is computed. A big request thus runs in
    several passes and a small one that arrives meanwhile joins the next pass instead of
    waiting for the big one to finish; a lone request waits for nobody. If a shared pass
    fails, each request's share is run alone, so one bad input fails only its own request.

    Parameters
    ----------
    backbone : Backbone
    max_batch_inputs : int
    """

    def __init__(self, backbone: Backbone, max_batch_inputs: int):
        self.backbone = backbone
        self.max_batch_inputs = max_batch_inputs
        self._width: int | None = None  # learned from the first answer, then enforced
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="nmtune-model", daemon=True)
        self._thread.start()

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embeddings of ``texts``, (len(texts), D) float32; raises what the backbone raised."""
        job = _Job(texts)
        self._jobs.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def waiting(self) -> int:
        """Requests queued for the model and not yet taken into a pass."""
        return self._jobs.qsize()

    @property
    def running(self) -> bool:
        """Whether the model thread is alive (it ends after :meth:`stop`)."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 60.0) -> None:
        """Fail what is still waiting and wait for the pass in progress to end: a process that
        exits while the model thread is inside a forward pass dies in C++
        (``terminate called without an active exception``) instead of exiting cleanly."""
        self._jobs.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        active: list[_Job] = []
        while True:
            new, stop = take_waiting(self._jobs, block=not active)
            active += new
            if stop:
                for job in active:
                    job.fail(APIError(HTTPStatus.SERVICE_UNAVAILABLE, "the server is stopping",
                                      kind="server_error", code="stopping"))
                return
            self._run_pass(self._share(active))
            active = [job for job in active if not job.done.is_set()]

    def _share(self, active: list[_Job]) -> list[tuple[_Job, int]]:
        """How many texts each request puts into the next pass: equal shares of the capacity,
        what a request does not need going to the others."""
        capacity, taken = self.max_batch_inputs, dict.fromkeys(active, 0)
        while capacity:
            hungry = [job for job in active if taken[job] < job.remaining]
            if not hungry:
                break
            share = max(1, capacity // len(hungry))
            for job in hungry[:capacity]:
                n = min(share, job.remaining - taken[job])
                taken[job] += n
                capacity -= n
        return [(job, n) for job, n in taken.items() if n]

    def _run_pass(self, shares: list[tuple[_Job, int]]) -> None:
        texts = [t for job, n in shares for t in job.texts[job.next : job.next + n]]
        try:
            vectors = self._forward(texts)
        except Exception as exc:
            if len(shares) == 1:
                shares[0][0].fail(exc)
            else:
                for share in shares:
                    self._run_pass([share])
            return
        row = 0
        for job, n in shares:
            job.store(vectors[row : row + n])
            row += n

    def _forward(self, texts: list[str]) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors = np.asarray(self.backbone.embed([texts[i] for i in order]), dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise RuntimeError(
                f"backbone {self.backbone.name} returned shape {vectors.shape} for {len(texts)} "
                "inputs"
            )
        if self._width is None:
            self._width = vectors.shape[1]
        elif vectors.shape[1] != self._width:
            raise RuntimeError(
                f"backbone {self.backbone.name} returned {vectors.shape[1]}-d embeddings after "
                f"{self._width}-d ones"
            )
        if not np.isfinite(vectors).all():
            raise RuntimeError(f"backbone {self.backbone.name} returned non-finite embeddings")
        out = np.empty_like(vectors)
        out[order] = vectors
        return out
