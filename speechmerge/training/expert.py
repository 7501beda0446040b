"""Write what a run made: a Whisper directory the merge engine reads, or a PEFT adapter.

A dense expert holds exactly the base's tensor names, each in the base's stored dtype. A
tensor that did not train (the encoder in decoder mode, the fixed sinusoidal encoder
positions in every mode) is copied from the base file as stored, so its task vector is
exactly zero and a merge leaves it bit-identical to the base. `config.json` and the
processor files are the base's own. A LoRA expert is PEFT's adapter directory (no
`config.json`, so `open_checkpoint(dir, base=...)` reads it as base + B·A·scaling) plus the
processor files. Both carry `speechmerge_training.json`: the base and its hash, the data,
every setting, the losses and the timings.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel

from speechmerge.checkpoints.whisper import PROCESSOR_FILES
from speechmerge.errors import SpeechmergeError
from speechmerge.training.config import TrainingConfig
from speechmerge.training.selection import DataSelection

RECORD = "speechmerge_training.json"
WEIGHTS = "model.safetensors"


class TrainingRecord(BaseModel):
    """What `speechmerge_training.json` holds."""

    kind: Literal["expert", "joint", "sequential"]
    base: str
    base_hash: str
    data: list[DataSelection]
    data_summary: list[dict[str, Any]]
    config: TrainingConfig
    result: dict[str, Any]
    timing: dict[str, Any]
    environment: dict[str, Any]
    baseline: Optional[dict[str, Any]] = None


def read_training_record(directory: Path) -> TrainingRecord:
    """The record of an expert (or baseline) made by `speechmerge finetune`."""
    path = Path(directory) / RECORD
    if not path.is_file():
        raise SpeechmergeError(f"{directory}: no {RECORD}; it was not made by `speechmerge finetune`")
    try:
        return TrainingRecord.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise SpeechmergeError(
            f"{path}: unreadable training record ({error.__class__.__name__}); remake the expert"
        ) from None


def write_dense_expert(model, base_checkpoint, frozen: set[str], target: Path) -> None:
    """The trained model's weights under the base's names and dtypes; frozen tensors copied from the base."""
    from safetensors.torch import save_file

    state = model.state_dict()
    missing = [name for name in base_checkpoint.names() if name not in state]
    if missing:
        raise SpeechmergeError(
            f"{base_checkpoint.path}: tensor {missing[0]} has no counterpart in the trained model; the base is not a Whisper model"
        )
    tensors = {
        name: (base_checkpoint.get(name) if name in frozen else state[name].detach())
        .to("cpu", base_checkpoint.dtype(name))
        .contiguous()
        for name in base_checkpoint.names()
    }
    save_file(tensors, str(target / WEIGHTS), metadata={"format": "pt"})
    shutil.copy2(Path(base_checkpoint.path) / "config.json", target / "config.json")
    copy_processor_files(Path(base_checkpoint.path), target)


def write_lora_expert(peft_model, base: str, base_dir: Path, target: Path) -> None:
    """PEFT's adapter files (naming the base as given) plus the base's processor files."""
    for adapter in peft_model.peft_config.values():
        adapter.base_model_name_or_path = str(base)
    peft_model.save_pretrained(str(target))
    copy_processor_files(base_dir, target)


def copy_processor_files(source: Path, target: Path) -> None:
    for name in PROCESSOR_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)


def write_record(target: Path, record: TrainingRecord) -> None:
    (target / RECORD).write_text(
        json.dumps(record.model_dump(mode="json"), indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
