"""The training loop: seeded batches, token-weighted loss, validation, best weights, resumable state.

Batches. The training utterances form an endless stream of epochs, each a permutation drawn
from a generator seeded by (seed, epoch); micro-batch i is stream positions [iB, (i+1)B). Step
s uses micro-batches s·G .. s·G+G-1 (G = gradient accumulation), so the data a step sees
depends only on the seed and the step: a resumed run sees exactly what an uninterrupted one
would have.

Loss. The loss of a step is Σ token cross-entropies / number of target tokens, over all its
micro-batches together (not a mean of per-batch means, which would weight tokens of short
batches more). Validation loss is the same token-weighted mean over the whole validation set.

Checkpoints. Every `eval_every` steps (and at the last step) the validation loss is measured;
a better one saves the trainable weights to `best-step<N>.safetensors`; then the whole run
(weights, optimiser, scheduler, RNG: `accelerate`'s `save_state`, plus `run_state.json`) is
written to a temporary folder and swapped in for `state/` whole, so a run killed at any
moment resumes from its last complete checkpoint. Early stopping ends the run after
`patience` validations without improvement.
"""

from __future__ import annotations

import logging
import statistics
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pydantic import BaseModel

from speechmerge.data.manifest import Utterance
from speechmerge.fsutil import atomic_directory, atomic_file
from speechmerge.training.config import TrainingConfig
from speechmerge.training.inputs import EncoderSide
from speechmerge.training.labels import IGNORE, TargetSequence, pad_targets

STATE = "state"
RUN_STATE = "run_state.json"


class Validation(BaseModel):
    """One validation: the step, the mean training loss since the previous one, the validation loss."""

    step: int
    train_loss: Optional[float]
    validation_loss: float
    learning_rate: float


class RunState(BaseModel):
    """Where a run stands; saved with every checkpoint."""

    step: int = 0
    base_validation_loss: Optional[float] = None
    best_step: Optional[int] = None
    best_validation_loss: Optional[float] = None
    validations_since_best: int = 0
    stopped_early: bool = False
    step_seconds: list[float] = []  # wall clock
    step_cpu_seconds: list[float] = []  # CPU time of the process (all threads): less sensitive to a busy machine
    history: list[Validation] = []

    @property
    def best_file(self) -> Optional[str]:
        return None if self.best_step is None else f"best-step{self.best_step}.safetensors"

    @property
    def median_step_seconds(self) -> Optional[float]:
        return statistics.median(self.step_seconds) if self.step_seconds else None

    @property
    def median_step_cpu_seconds(self) -> Optional[float]:
        return statistics.median(self.step_cpu_seconds) if self.step_cpu_seconds else None


@dataclass(frozen=True)
class RunData:
    """Utterances, their target sequences, and how to get the encoder side of a batch."""

    train: list[Utterance]
    train_targets: list[TargetSequence]
    validation: list[Utterance]
    validation_targets: list[TargetSequence]
    encoder_side: EncoderSide
    pad_id: int


def micro_batch(index: int, count: int, batch_size: int, seed: int) -> list[int]:
    """The utterance indices of micro-batch `index` of the seeded endless epoch stream."""
    import torch

    positions = range(index * batch_size, (index + 1) * batch_size)
    epochs = {position // count for position in positions}
    orders = {
        epoch: torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
        for epoch in epochs
    }
    return [orders[position // count][position % count] for position in positions]


def token_loss_sum(model, side: dict, inputs, labels):
    """Σ of the target tokens' cross-entropies (labels -100 skipped)."""
    import torch.nn.functional as F

    logits = model(**side, decoder_input_ids=inputs, use_cache=False).logits
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")


def validation_loss(model, data: RunData, batch_size: int, device) -> float:
    """Token-weighted mean cross-entropy over the validation set."""
    import torch

    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data.validation), batch_size):
            targets = data.validation_targets[start : start + batch_size]
            inputs, labels = pad_targets(targets, data.pad_id)
            side = data.encoder_side(data.validation[start : start + batch_size])
            total += token_loss_sum(model, side, inputs.to(device), labels.to(device)).item()
            tokens += sum(t.tokens for t in targets)
    return total / tokens


def train(
    model, data: RunData, config: TrainingConfig, accelerator, workdir: Path, label: str, progress: bool
) -> RunState:
    """Run (or resume) the steps of `config` on `model` in place; leave the best weights loaded."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import get_scheduler

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_scheduler(
        config.schedule, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    device = accelerator.device
    state = RunState()
    state_dir = workdir / STATE
    if (state_dir / RUN_STATE).is_file():
        accelerator.load_state(str(state_dir))
        state = RunState.model_validate_json((state_dir / RUN_STATE).read_text())
    else:
        with accelerator.autocast():
            state.base_validation_loss = validation_loss(model, data, config.batch_size, device)

    def trainable_weights() -> dict:
        unwrapped = accelerator.unwrap_model(model)
        return {
            name: p.detach().float().cpu().contiguous() for name, p in unwrapped.named_parameters() if p.requires_grad
        }

    def checkpoint() -> None:
        with (
            atomic_directory(state_dir, force=True) as tmp,
            _quiet("accelerate.utils.other"),
        ):  # "Removed shared tensor": the tied proj_out
            accelerator.save_state(str(tmp))
            (tmp / RUN_STATE).write_text(state.model_dump_json(indent=1))
        for old in workdir.glob("best-step*.safetensors"):
            if old.name != state.best_file:
                old.unlink()

    bar = _StepProgress(label, config.steps, state.step) if progress else nullcontext()
    recent: list[float] = []
    with bar as show:
        while state.step < config.steps and not state.stopped_early:
            started, started_cpu = time.perf_counter(), time.process_time()
            recent.append(_step(model, optimizer, scheduler, accelerator, data, config, state.step, parameters))
            state.step += 1
            state.step_seconds.append(time.perf_counter() - started)
            state.step_cpu_seconds.append(time.process_time() - started_cpu)
            if show:
                show(state, statistics.fmean(recent))
            if state.step % config.eval_every == 0 or state.step == config.steps:
                _validate(model, data, config, accelerator, state, recent, scheduler.get_last_lr()[0])
                if state.best_step == state.step:
                    with atomic_file(workdir / state.best_file) as tmp:
                        save_file(trainable_weights(), str(tmp))
                recent = []
                checkpoint()
    if state.best_file:
        best = load_file(str(workdir / state.best_file))
        unwrapped = accelerator.unwrap_model(model)
        with torch.no_grad():
            for name, parameter in unwrapped.named_parameters():
                if name in best:
                    parameter.copy_(best[name])
    return state


@contextmanager
def _quiet(logger: str):
    """Silence a library logger's warnings for the duration of a block."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _step(
    model, optimizer, scheduler, accelerator, data: RunData, config: TrainingConfig, step: int, parameters
) -> float:
    """One optimiser step over `gradient_accumulation` micro-batches; returns its token-mean loss."""
    model.train()
    batches = []
    for k in range(config.gradient_accumulation):
        indices = micro_batch(step * config.gradient_accumulation + k, len(data.train), config.batch_size, config.seed)
        batches.append(([data.train[i] for i in indices], [data.train_targets[i] for i in indices]))
    tokens = sum(t.tokens for _, targets in batches for t in targets)
    total = 0.0
    for utterances, targets in batches:
        inputs, labels = pad_targets(targets, data.pad_id)
        with accelerator.autocast():
            loss = (
                token_loss_sum(
                    model, data.encoder_side(utterances), inputs.to(accelerator.device), labels.to(accelerator.device)
                )
                / tokens
            )
        accelerator.backward(loss)
        total += loss.item()
    accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def _validate(
    model,
    data: RunData,
    config: TrainingConfig,
    accelerator,
    state: RunState,
    recent: list[float],
    learning_rate: float,
) -> None:
    with accelerator.autocast():
        loss = validation_loss(model, data, config.batch_size, accelerator.device)
    state.history.append(
        Validation(
            step=state.step,
            train_loss=statistics.fmean(recent) if recent else None,
            validation_loss=loss,
            learning_rate=learning_rate,
        )
    )
    if state.best_validation_loss is None or loss < state.best_validation_loss:
        state.best_step, state.best_validation_loss, state.validations_since_best = state.step, loss, 0
    else:
        state.validations_since_best += 1
        state.stopped_early = 0 < config.patience <= state.validations_since_best


class _StepProgress:
    """A rich progress bar: steps, ETA, the training loss since the last validation, the last validation loss."""

    def __init__(self, label: str, total: int, done: int):
        from rich.progress import TextColumn

        from speechmerge.progress import progress_bar

        self.progress = progress_bar(True, TextColumn("loss {task.fields[loss]}"), TextColumn("val {task.fields[val]}"))
        self.task = self.progress.add_task(label, total=total, completed=done, loss="-", val="-")

    def __enter__(self):
        self.progress.__enter__()
        return self.show

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def show(self, state: RunState, loss: float) -> None:
        val = f"{state.history[-1].validation_loss:.3f}" if state.history else "-"
        self.progress.update(self.task, completed=state.step, loss=f"{loss:.3f}", val=val)
