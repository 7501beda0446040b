"""Which job runs when: a batch of jobs, some needing others, run on an executor.

A job already done (or, with `only_new`, already failed) is skipped. Of the rest, a job whose
inputs are all done is *ready*; one that needs a job of this batch *waits* and becomes ready as
soon as those are done; one that needs a job that is neither done nor in the batch, or that
needs a job which failed or was itself blocked, is *lost* (blocked, never started). Blocking
spreads transitively. Besides the names of failed and blocked jobs the scheduler keeps nothing:
it reads statuses from, and hands every start and outcome to, a `Recorder` (the study's store,
or a dict in tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from speechmerge.study.jobs import Job


class Recorder(Protocol):
    """Where the scheduler reads job status and records what happens."""

    def status(self, keys: list[str]) -> dict[str, str]:
        """The known status (pending, running, done, failed) of these jobs."""

    def started(self, job: Job) -> None: ...

    def finished(self, job: Job, outcome: dict) -> None:
        """A job came back; `outcome["ok"]` says whether it succeeded."""


Call = tuple[str, str, dict]
SubmitAll = Callable[[list[Call], Callable[[str, dict], list[Call]]], Iterator[tuple[str, dict]]]


@dataclass
class Batch:
    """The state of one batch: jobs waiting for others of the batch, and the keys finished or lost."""

    keys: set[str]
    waiting: list[Job]
    finished: set[str] = field(default_factory=set)
    lost: set[str] = field(default_factory=set)
    blocked: list[Job] = field(default_factory=list)

    def block(self, job: Job) -> None:
        self.lost.add(job.key)
        self.blocked.append(job)

    def release(self, key: str, ok: bool) -> list[Job]:
        """Record that `key` came back; the waiting jobs now ready (blocking those that need a lost job)."""
        (self.finished if ok else self.lost).add(key)
        ready, changed = [], True
        while changed:  # blocking spreads to the jobs that wait for a blocked one
            changed = False
            for job in list(self.waiting):
                if any(d in self.lost for d in job.depends):
                    self.waiting.remove(job)
                    self.block(job)
                    changed = True
                elif all(d in self.finished for d in job.depends if d in self.keys):
                    self.waiting.remove(job)
                    ready.append(job)
        return ready


def split_batch(jobs: list[Job], status: dict[str, str], only_new: bool) -> tuple[list[Job], Batch]:
    """The jobs to run now, and the batch of those that wait or are lost, from the known statuses
    of the jobs and of their inputs."""
    todo = [j for j in jobs if not (status.get(j.key) == "done" or (status.get(j.key) == "failed" and only_new))]
    batch = Batch({j.key for j in todo}, [])
    ready = []
    for job in todo:
        if any(d not in batch.keys and status.get(d) != "done" for d in job.depends):
            batch.block(job)
        elif any(d in batch.keys for d in job.depends):
            batch.waiting.append(job)
        else:
            ready.append(job)
    return ready, batch


class JobScheduler:
    """Runs batches of jobs on an executor's `submit_all`, each job as soon as its inputs exist;
    collects the names of failed jobs (with their error) and of blocked ones."""

    def __init__(self, submit_all: SubmitAll, recorder: Recorder, only_new: bool = False, progress: bool = False):
        self.submit_all, self.recorder = submit_all, recorder
        self.only_new, self.progress = only_new, progress
        self.failed: dict[str, str] = {}
        self.blocked: list[str] = []

    def run(self, title: str, jobs: list[Job]) -> None:
        """Run the jobs not done yet, with a progress bar titled `title` (when enabled)."""
        from speechmerge.progress import progress_bar

        inputs = sorted({d for j in jobs for d in j.depends} | {j.key for j in jobs})
        ready, batch = split_batch(jobs, self.recorder.status(inputs), self.only_new)
        by_key = {j.key: j for j in [*ready, *batch.waiting]}
        if ready:
            with progress_bar(self.progress) as bar:
                task = bar.add_task(title, total=len(by_key))
                for key, outcome in self.submit_all(self._started(ready), self._released(batch)):
                    job = by_key[key]
                    self.recorder.finished(job, outcome)
                    if not outcome["ok"]:
                        self.failed[job.name] = outcome["error"]
                        if self.progress:
                            bar.console.print(f"[red]failed[/] {job.name}: {outcome['error']}", highlight=False)
                    bar.update(task, advance=1, description=f"{title}: {job.name}")
        for job in batch.waiting:  # waited for jobs that never came back
            batch.block(job)
        self.blocked += [j.name for j in batch.blocked]

    def _released(self, batch: Batch) -> Callable[[str, dict], list[Call]]:
        def more(key: str, outcome: dict) -> list[Call]:
            return self._started(batch.release(key, outcome["ok"]))

        return more

    def _started(self, jobs: list[Job]) -> list[Call]:
        for job in jobs:
            self.recorder.started(job)
        return [(j.key, j.task, j.spec) for j in jobs]
