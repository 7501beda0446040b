"""The baselines that merging is compared with: multi-lingual multi-task (joint) training and
sequential training, as in LoRS-Merging (Zhao, Sun, Zhang, arXiv 2502.17380), and the model jointly
fine-tuned on every domain ("Full-FT") of Carvalho et al., "Exploring the potential and limitations
of Model Merging for Multi-Domain Adaptation in ASR" (arXiv 2603.05354).

* Joint (multi-task) training: one run on the union of the experts' training data, its
  validation set the union of theirs, for K × N steps where K experts had N steps each, so
  it sees as many examples as all the experts together. The union is shuffled as one stream.
* Sequential training: fine-tune on expert 1's data, then continue from that model on
  expert 2's, and so on, N steps per stage, each stage with its own warm-up, schedule and
  best checkpoint chosen on its own validation set. The order is part of the baseline (it
  is order-dependent by nature) and is recorded. Each finished stage is kept in the work
  folder, so an interrupted baseline resumes at its unfinished stage.

Experts are the distinct (language, task, domain) groups of a selection, ordered by the
order of the --language, --task and --domain values given (unlisted values alphabetically).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from speechmerge.errors import SpeechmergeError
from speechmerge.fsutil import atomic_directory, refuse_existing
from speechmerge.training.api import Base, claim_work_folder, finetune, run_finetuning, work_folder
from speechmerge.training.config import TrainingConfig
from speechmerge.training.expert import RECORD, read_training_record, write_record
from speechmerge.training.selection import DataSelection, TrainingData, selected_utterances, training_data


def expert_groups(selection: DataSelection) -> list[DataSelection]:
    """One selection per distinct (language, task, domain) of the selection's utterances, in order."""

    def rank(value, given: tuple[str, ...]):
        return (given.index(value), "") if value in given else (len(given), str(value))

    keys = {(u.language, u.task, u.domain) for u in selected_utterances(selection)}
    ordered = sorted(
        keys,
        key=lambda k: (rank(k[0], selection.languages), rank(k[1], selection.tasks), rank(k[2], selection.domains)),
    )
    return [
        DataSelection(
            sources=selection.sources, languages=(language,), tasks=(task,), domains=(domain,) if domain else ()
        )
        for language, task, domain in ordered
    ]


def train_joint(
    base: str | Path,
    experts: list[DataSelection],
    output: Path,
    config: Optional[TrainingConfig] = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """The joint baseline: one model on the union of the experts' data, K × `config.steps` steps."""
    config = config or TrainingConfig()
    output = Path(output)
    _check_baseline_request(output, force, experts)
    joint = config.model_copy(update={"steps": config.steps * len(experts)})

    def union() -> TrainingData:
        parts = [training_data(selection, config.validation_fraction, config.seed) for selection in experts]
        return TrainingData(
            [u for part in parts for u in part.train],
            [u for part in parts for u in part.validation],
            "; ".join(sorted({part.validation_source for part in parts})),
        )

    baseline = {
        "kind": "joint",
        "experts": [s.describe() for s in experts],
        "steps_per_expert": config.steps,
        "total_steps": joint.steps,
    }
    return run_finetuning(Base.open(base), experts, union, output, joint, progress, baseline)


def train_sequential(
    base: str | Path,
    stages: list[DataSelection],
    output: Path,
    config: Optional[TrainingConfig] = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """The sequential baseline: one stage per expert's data, each continuing from the last."""
    config = config or TrainingConfig()
    output = Path(output)
    _check_baseline_request(output, force, stages)
    if config.mode == "lora":
        raise SpeechmergeError(
            "sequential baseline: mode lora cannot continue from a previous stage's adapter; use mode full or decoder"
        )
    start = Base.open(base)
    workdir = work_folder(output)
    claim_work_folder(
        workdir,
        {
            "base_hash": start.checkpoint.content_hash(),
            "config": config.model_dump(mode="json"),
            "stages": [s.describe() for s in stages],
        },
    )
    current: str | Path = start.spec
    records = []
    for number, stage in enumerate(stages, start=1):
        stage_dir = workdir / f"stage{number}"
        if not (stage_dir / RECORD).is_file():
            finetune(current, stage, stage_dir, config, progress=progress)
        records.append(read_training_record(stage_dir))
        current = stage_dir
    last = records[-1]
    record = last.model_copy(
        update={
            "kind": "sequential",
            "base": start.spec,
            "base_hash": start.checkpoint.content_hash(),
            "data": stages,
            "data_summary": [summary for r in records for summary in r.data_summary],
            "result": {**last.result, "stages": [{"data": s.describe(), **r.result} for s, r in zip(stages, records)]},
            "timing": {
                key: round(sum(r.timing.get(key) or 0.0 for r in records), 2)
                for key in last.timing
                if not key.startswith("median")
            },
            "baseline": {
                "kind": "sequential",
                "order": [s.describe() for s in stages],
                "steps_per_stage": config.steps,
                "total_steps": config.steps * len(stages),
            },
        }
    )
    with atomic_directory(output, force=True) as tmp:
        for item in Path(current).iterdir():
            shutil.copy2(item, tmp / item.name)
        write_record(tmp, record)
    shutil.rmtree(workdir, ignore_errors=True)
    return output


def _check_baseline_request(output: Path, force: bool, experts: list[DataSelection]) -> None:
    refuse_existing(output, force)
    if len(experts) < 2:
        raise SpeechmergeError(
            f"a baseline needs the data of at least two experts; the selection has {len(experts)} (language, task, domain) group(s)"
        )
