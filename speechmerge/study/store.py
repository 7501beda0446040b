"""The study store: one SQLite file per study (`<study>/study.sqlite`).

Tables:

| table | one row per | columns |
|---|---|---|
| `meta` | fact about the study | key, value (JSON): name, recipe, recipe_path, command, started (first run), finished, hardware, executor, wall_seconds (summed over runs), runs |
| `jobs` | content-addressed job | key (SHA-256 of what it depends on), kind, name, stage, model_kind, model, method, setting (JSON), spec (JSON), status (pending/running/done/failed), model_path, model_hash, result (JSON), error, seconds, cpu_seconds, started, finished, versions (JSON), executor |
| `executions` | attempt that came back (done or failed) | id, job, started, finished, status, seconds, cpu_seconds, worker, error |
| `scores` | metric of a job's model on one group | job, stage, scope, evaluation, language, task, domain, metric, value, utterances |
| `utterance_statistics` | metric of a job's model on one group | job, evaluation, language, task, domain, metric, statistics (JSON: ids, speakers, per-utterance sufficient statistics, alignments or texts; `speechmerge.evaluation.statistics`) |
| `plan` | job of the current recipe | job, position (jobs of earlier recipes stay, unlisted) |
| `selections` | method | method, job, setting (JSON), score, criterion: the setting chosen on validation |

Write-ahead logging and a busy timeout let several processes write at once (a process pool, Ray
results arriving, `speechmerge results` reading while a study runs); every write is one short
transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from speechmerge.errors import SpeechmergeError

STORE_FILE = "study.sqlite"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 60_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, stage TEXT, model_kind TEXT, model TEXT,
    method TEXT, setting TEXT, spec TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
    model_path TEXT, model_hash TEXT, result TEXT, error TEXT, seconds REAL, cpu_seconds REAL,
    started TEXT, finished TEXT, versions TEXT, executor TEXT
);
CREATE TABLE IF NOT EXISTS executions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL, started TEXT NOT NULL, finished TEXT,
    status TEXT NOT NULL, seconds REAL, cpu_seconds REAL, worker TEXT, error TEXT
);
CREATE TABLE IF NOT EXISTS scores (
    job TEXT NOT NULL, stage TEXT NOT NULL, scope TEXT NOT NULL, evaluation TEXT NOT NULL, language TEXT NOT NULL,
    task TEXT NOT NULL, domain TEXT NOT NULL, metric TEXT NOT NULL, value REAL NOT NULL, utterances INTEGER NOT NULL,
    PRIMARY KEY (job, evaluation, language, task, domain, metric)
);
CREATE TABLE IF NOT EXISTS utterance_statistics (
    job TEXT NOT NULL, evaluation TEXT NOT NULL, language TEXT NOT NULL, task TEXT NOT NULL, domain TEXT NOT NULL,
    metric TEXT NOT NULL, statistics TEXT NOT NULL, PRIMARY KEY (job, evaluation, language, task, domain, metric)
);
CREATE TABLE IF NOT EXISTS plan (job TEXT PRIMARY KEY, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS selections (method TEXT PRIMARY KEY, job TEXT NOT NULL, setting TEXT NOT NULL, score REAL, criterion TEXT);
"""

JOB_FIELDS = ("key", "kind", "name", "stage", "model_kind", "model", "method", "setting", "spec", "versions")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def store_path(target: Path) -> Path:
    """The store of a study folder, or the file itself."""
    target = Path(target)
    return target / STORE_FILE if target.is_dir() or target.suffix != ".sqlite" else target


class Store:
    """A study's SQLite file; every method is one short transaction."""

    def __init__(self, path: Path, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise SpeechmergeError(
                f"{self.path}: no study store here; give a study folder (with {STORE_FILE}) or the .sqlite file"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            with self._write() as db:
                for statement in filter(str.strip, SCHEMA.split(";")):
                    db.execute(statement)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (json.dumps(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as error:
            raise SpeechmergeError(
                f"{self.path}: not a readable study store ({error}); move it away to start the study afresh"
            ) from None
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # meta
    def set_meta(self, **values: Any) -> None:
        with self._write() as db:
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()])

    def meta(self) -> dict[str, Any]:
        return {row["key"]: json.loads(row["value"]) for row in self._db.execute("SELECT key, value FROM meta")}

    # jobs
    def add_jobs(self, jobs: list[dict]) -> None:
        """Record planned jobs (known keys keep their status and results) and make them the current plan."""
        with self._write() as db:
            db.executemany(
                f"INSERT OR IGNORE INTO jobs ({', '.join(JOB_FIELDS)}) VALUES ({', '.join('?' * len(JOB_FIELDS))})",
                [tuple(_column(job.get(f)) for f in JOB_FIELDS) for job in jobs],
            )
            # names and labels may change with the plan (a grid that grows relabels its points)
            db.executemany(
                "UPDATE jobs SET name = ?, model = ? WHERE key = ?",
                [(j["name"], j.get("model"), j["key"]) for j in jobs],
            )

    def set_plan(self, keys: list[str]) -> None:
        with self._write() as db:
            db.execute("DELETE FROM plan")
            db.executemany("INSERT OR IGNORE INTO plan VALUES (?, ?)", [(k, i) for i, k in enumerate(keys)])

    def status(self, keys: list[str]) -> dict[str, str]:
        found = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            rows = self._db.execute(f"SELECT key, status FROM jobs WHERE key IN ({', '.join('?' * len(chunk))})", chunk)
            found.update({row["key"]: row["status"] for row in rows})
        return found

    def job(self, key: str) -> dict | None:
        row = self._db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()
        return _decoded(row) if row else None

    def jobs(self, planned_only: bool = True) -> list[dict]:
        query = (
            "SELECT jobs.* FROM jobs JOIN plan ON plan.job = jobs.key ORDER BY plan.position"
            if planned_only
            else "SELECT * FROM jobs ORDER BY started"
        )
        return [_decoded(row) for row in self._db.execute(query)]

    def start(self, key: str, executor: str) -> None:
        """Mark a job running: handed to the executor (a killed study leaves it so; see `mark_interrupted`)."""
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET status = 'running', started = ?, error = NULL, executor = ? WHERE key = ?",
                (now(), executor, key),
            )

    def mark_interrupted(self) -> int:
        """Jobs left `running` by a killed study become pending again (they will be rerun); how many."""
        with self._write() as db:
            return db.execute("UPDATE jobs SET status = 'pending' WHERE status = 'running'").rowcount

    def finish(self, key: str, result: dict, rows: list[dict], outcome: dict) -> None:
        """Record a finished job, its scores and its attempt (`outcome`: started, seconds, cpu_seconds, worker), in one transaction."""
        with self._write() as db:
            db.execute("DELETE FROM scores WHERE job = ?", (key,))
            db.execute("DELETE FROM utterance_statistics WHERE job = ?", (key,))
            db.executemany(
                "INSERT INTO utterance_statistics VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        key,
                        r["evaluation"],
                        r["language"],
                        r["task"],
                        r["domain"],
                        r["metric"],
                        json.dumps(r["statistics"]),
                    )
                    for r in rows
                    if r.get("statistics")
                ],
            )
            db.executemany(
                "INSERT INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        key,
                        r["stage"],
                        r["scope"],
                        r["evaluation"],
                        r["language"],
                        r["task"],
                        r["domain"],
                        r["metric"],
                        r["value"],
                        r["utterances"],
                    )
                    for r in rows
                ],
            )
            db.execute(
                "UPDATE jobs SET status = 'done', finished = ?, result = ?, model_path = ?, model_hash = ?, seconds = ?, cpu_seconds = ? WHERE key = ?",
                (
                    now(),
                    json.dumps(result),
                    result.get("model_path"),
                    result.get("model_hash"),
                    outcome["seconds"],
                    outcome["cpu_seconds"],
                    key,
                ),
            )
            _attempt(db, key, "done", outcome)

    def fail(self, key: str, outcome: dict) -> None:
        """Record a failed attempt (`outcome`: error, started, seconds, cpu_seconds, worker)."""
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET status = 'failed', finished = ?, error = ?, seconds = ?, cpu_seconds = ? WHERE key = ?",
                (now(), outcome["error"], outcome["seconds"], outcome["cpu_seconds"], key),
            )
            _attempt(db, key, "failed", outcome)

    def executions(self, key: str | None = None) -> list[dict]:
        query, args = (
            ("SELECT * FROM executions WHERE job = ? ORDER BY id", (key,))
            if key
            else ("SELECT * FROM executions ORDER BY id", ())
        )
        return [dict(row) for row in self._db.execute(query, args)]

    # scores and selections
    def scores(self, planned_only: bool = True) -> list[dict]:
        """Every score joined with its job's labels (only the current plan's jobs by default)."""
        join = "JOIN plan ON plan.job = jobs.key" if planned_only else ""
        query = f"""SELECT scores.*, jobs.kind, jobs.model_kind, jobs.model, jobs.method, jobs.setting, jobs.name,
                    utterance_statistics.statistics
                    FROM scores JOIN jobs ON jobs.key = scores.job {join}
                    LEFT JOIN utterance_statistics USING (job, evaluation, language, task, domain, metric)
                    WHERE jobs.status = 'done' ORDER BY jobs.rowid, scores.rowid"""
        return [_decoded(row) for row in self._db.execute(query)]

    def set_selections(self, chosen: list[dict]) -> None:
        with self._write() as db:
            db.execute("DELETE FROM selections")
            db.executemany(
                "INSERT INTO selections VALUES (?, ?, ?, ?, ?)",
                [
                    (c["method"], c["job"], json.dumps(c["setting"], sort_keys=True), c["score"], c["criterion"])
                    for c in chosen
                ],
            )

    def selections(self) -> dict[str, dict]:
        return {row["method"]: _decoded(row) for row in self._db.execute("SELECT * FROM selections")}


def _attempt(db: sqlite3.Connection, key: str, status: str, outcome: dict) -> None:
    db.execute(
        "INSERT INTO executions (job, started, finished, status, seconds, cpu_seconds, worker, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            key,
            outcome.get("started") or now(),
            now(),
            status,
            outcome["seconds"],
            outcome["cpu_seconds"],
            outcome.get("worker"),
            outcome.get("error"),
        ),
    )


def _column(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def _decoded(row: sqlite3.Row) -> dict:
    out = dict(row)
    for name in ("setting", "spec", "result", "versions", "statistics"):
        if isinstance(out.get(name), str):
            out[name] = json.loads(out[name])
    return out
