"""Where a stage's jobs run: in this process, in a local process pool, or as Ray tasks.

Every executor takes a list of `(key, task, spec)` calls and yields `(key, outcome)` as jobs
finish (in any order); the outcome is `speechmerge.study.tasks.run_task`'s dict. After each
outcome is handled, `more(key, outcome)` gives the calls it made ready (jobs that waited for it),
which join the queue: a job starts as soon as its inputs exist, not at a stage boundary. Only the
driver writes to the store, so results from any executor land in one place.

Sizing: one whisper-base evaluation or decoder-mode training holds ~1-2 GB, and torch uses every
core it is given, though not fully: loading, saving, hashing and LAPACK are partly serial (the demo
with one 2-thread worker kept 1.43 of 2 cores busy). `default_workers()` takes
min(max(2, cores // 2), cores, available memory / 2 GB), at least 1, and each worker gets
cores // workers torch threads: two 1-thread workers on a 2-core machine.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterator
from typing import Protocol

from speechmerge.errors import SpeechmergeError
from speechmerge.study.tasks import run_task
from speechmerge.sysinfo import available_memory_bytes, cpu_count

Call = tuple[str, str, dict]
More = Callable[[str, dict], list[Call]]
Handle = Hashable  # a pending job: a Future, or a Ray ObjectRef


def _nothing_more(key: str, outcome: dict) -> list[Call]:
    return []


MEMORY_PER_WORKER = 2 * 2**30


class Executor(Protocol):
    name: str

    def submit_all(self, calls: list[Call], more: More = _nothing_more) -> Iterator[tuple[str, dict]]: ...

    def close(self) -> None: ...


def default_workers() -> int:
    """min(max(2, cores // 2), cores, available memory / 2 GB), at least 1 (memory unknown: no limit)."""
    cores = cpu_count()
    memory = available_memory_bytes()
    by_memory = memory // MEMORY_PER_WORKER if memory else cores
    return max(1, min(max(2, cores // 2), cores, by_memory))


def run_queue(
    calls: list[Call],
    more: More,
    submit: Callable[[str, dict], Handle],
    wait_one: Callable[[list[Handle]], list[Handle]],
    result: Callable[[Handle], dict],
    cancel: Callable[[Handle], None],
) -> Iterator[tuple[str, dict]]:
    """The queue of a parallel executor: submit the calls, yield each outcome as its job finishes,
    submit what it made ready (`more`), and cancel what is still queued if the caller stops early.

    `submit(task, spec)` starts one job and returns its handle, `wait_one(handles)` blocks until
    at least one is done and returns the done ones, `result(handle)` is its outcome."""
    handles: dict[Handle, str] = {}

    def submit_batch(batch: list[Call]) -> None:
        handles.update({submit(task, spec): key for key, task, spec in batch})

    submit_batch(calls)
    try:
        while handles:
            for handle in wait_one(list(handles)):
                key = handles.pop(handle)
                outcome = _outcome(lambda done=handle: result(done))
                yield key, outcome
                submit_batch(more(key, outcome))
    finally:
        for handle in handles:
            cancel(handle)


class LocalExecutor:
    """Jobs one after another in this process (torch keeps its default threads)."""

    name = "local"

    def submit_all(self, calls: list[Call], more: More = _nothing_more) -> Iterator[tuple[str, dict]]:
        queue = list(calls)
        while queue:
            key, task, spec = queue.pop(0)
            outcome = run_task(task, spec)
            yield key, outcome
            queue += more(key, outcome)

    def close(self) -> None:
        pass


class PoolExecutor:
    """Jobs in a pool of `workers` fresh processes (spawned: torch and fork do not mix)."""

    def __init__(self, workers: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.name = f"local pool ({workers} workers)"
        self.threads = max(1, cpu_count() // workers)
        self.pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=exit_with_parent,
            initargs=(os.getpid(),),
        )

    def submit_all(self, calls: list[Call], more: More = _nothing_more) -> Iterator[tuple[str, dict]]:
        from concurrent.futures import FIRST_COMPLETED, wait

        return run_queue(
            calls,
            more,
            submit=lambda task, spec: self.pool.submit(run_task, task, spec, self.threads),
            wait_one=lambda futures: list(wait(futures, return_when=FIRST_COMPLETED).done),
            result=lambda future: future.result(),
            cancel=lambda future: future.cancel(),
        )

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Jobs as Ray tasks on a cluster (`address`) or a local Ray instance; outcomes come back here."""

    def __init__(self, address: str | None, workers: int | None, cpus_per_job: int | None = None):
        try:
            import ray
        except ImportError:
            raise SpeechmergeError(
                "--executor ray: Ray is not installed; pip install 'speechmerge[ray]' (or use --executor local)"
            ) from None
        self.ray = ray
        self.started_here = not ray.is_initialized()
        if self.started_here:
            options = {"address": address} if address else {"num_cpus": workers or cpu_count()}
            try:
                ray.init(**options, include_dashboard=False, log_to_driver=False, configure_logging=False)
            except ConnectionError as error:
                raise SpeechmergeError(
                    f"--address {address}: cannot reach a Ray cluster ({error}); start one with `ray start --head` or leave --address out for a local instance"
                ) from None
        total = int(ray.cluster_resources().get("CPU", 1))
        self.cpus = cpus_per_job or max(1, total // (workers or max(1, total // 2)))
        self.name = f"ray ({address or 'local instance'}, {total} CPUs, {self.cpus} per job)"
        self.remote = ray.remote(run_task)

    def submit_all(self, calls: list[Call], more: More = _nothing_more) -> Iterator[tuple[str, dict]]:
        return run_queue(
            calls,
            more,
            submit=lambda task, spec: self.remote.options(num_cpus=self.cpus).remote(task, spec, self.cpus),
            wait_one=lambda refs: self.ray.wait(refs, num_returns=1)[0],
            result=self.ray.get,
            cancel=lambda ref: self.ray.cancel(ref, force=True),
        )

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()


def exit_with_parent(parent: int, interval: float = 1.0) -> None:
    """In a pool worker: end this process when the study's driver is gone (killed with SIGKILL or
    SIGTERM, which the pool cannot forward), instead of running the rest of its queue as an orphan."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _outcome(get) -> dict:
    """The job's outcome, or a failed one when its worker died (out of memory, killed)."""
    try:
        return get()
    except Exception as error:  # noqa: BLE001 - a lost worker fails its job, not the study
        return {
            "ok": False,
            "error": f"worker lost: {type(error).__name__}: {error}",
            "seconds": 0.0,
            "cpu_seconds": 0.0,
            "worker": "?",
        }


def make_executor(kind: str, workers: int | None, address: str | None) -> Executor:
    """The executor a `speechmerge study` invocation asked for."""
    if workers is not None and workers < 1:
        raise SpeechmergeError(f"--workers {workers}: give at least 1")
    if kind == "local":
        count = workers if workers is not None else default_workers()
        return LocalExecutor() if count == 1 else PoolExecutor(count)
    if kind == "ray":
        return RayExecutor(address, workers)
    raise SpeechmergeError(f"--executor {kind!r}: choose local or ray")
