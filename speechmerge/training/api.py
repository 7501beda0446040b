"""`finetune`: make one expert from a base Whisper and a data selection, resumably.

The run works in `<output>.partial/` (its fingerprint, the resumable state, the best
weights); only a finished expert is renamed to `<output>`, and the work folder is then
removed. Running the same call again after an interruption resumes from the last checkpoint;
a call with other settings, data or base is refused rather than mixed into it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from speechmerge.errors import SpeechmergeError
from speechmerge.fsutil import atomic_directory, refuse_existing
from speechmerge.training.config import TrainingConfig
from speechmerge.training.expert import TrainingRecord, write_dense_expert, write_lora_expert, write_record
from speechmerge.training.selection import DataSelection, TrainingData, training_data

FINGERPRINT = "run.json"


@dataclass(frozen=True)
class Base:
    """The model a run starts from: its reference as given, its local directory, its checkpoint."""

    spec: str
    directory: Path
    checkpoint: Any

    @classmethod
    def open(cls, spec: str | Path) -> Base:
        from speechmerge.checkpoints.resolve import open_checkpoint, resolve_model_dir

        directory = resolve_model_dir(spec)
        if (directory / "adapter_config.json").is_file() and not (directory / "config.json").is_file():
            raise SpeechmergeError(
                f"{spec}: a LoRA adapter, not a full model; fine-tune its base, or merge the adapter into it first"
            )
        return cls(str(spec), directory, open_checkpoint(directory))


def work_folder(output: Path) -> Path:
    """Where a run keeps its resumable state until the expert is complete."""
    return output.with_name(output.name + ".partial")


def finetune(
    base: str | Path,
    data: DataSelection,
    output: Path,
    config: Optional[TrainingConfig] = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Fine-tune `base` on `data` into the expert directory `output`; return its path."""
    config = config or TrainingConfig()
    output = Path(output)
    refuse_existing(output, force)
    return run_finetuning(
        Base.open(base),
        [data],
        lambda: training_data(data, config.validation_fraction, config.seed),
        output,
        config,
        progress,
        None,
    )


def run_finetuning(
    base: Base,
    selections: list[DataSelection],
    load_data,
    output: Path,
    config: TrainingConfig,
    progress: bool,
    baseline: Optional[dict],
) -> Path:
    """The run shared by experts and the joint baseline: `load_data()` gives its `TrainingData`."""
    import torch

    from speechmerge.checkpoints.tokenizer import check_tokenizer, load_tokenizer
    from speechmerge.training.labels import PromptTokens, check_vocabulary, target_sequence
    from speechmerge.training.loop import RunData, train

    started = time.perf_counter()
    check_encoder_layers(config, base)
    tokenizer = load_tokenizer(base.directory)
    check_tokenizer(base.directory, tokenizer)
    prompts = PromptTokens.of(tokenizer)
    data = load_data()
    check_vocabulary(prompts, {(u.language, u.task) for u in data.train + data.validation}, base.spec)
    max_length = int(base.checkpoint.config["max_target_positions"])
    train_targets = [target_sequence(tokenizer, prompts, u, max_length) for u in data.train]
    validation_targets = [target_sequence(tokenizer, prompts, u, max_length) for u in data.validation]

    workdir = work_folder(output)
    claim_work_folder(workdir, _fingerprint(base, data, config))
    accelerator, precision = _accelerator(config)
    torch.manual_seed(config.seed)
    model, frozen = _trainable_model(base.directory, config)
    encoder_started = time.perf_counter()
    encoder_side = _encoder_side(model, base.directory, data, config, accelerator.device, progress)
    encoder_seconds = time.perf_counter() - encoder_started
    run_data = RunData(data.train, train_targets, data.validation, validation_targets, encoder_side, prompts.end)
    try:
        state = train(model, run_data, config, accelerator, workdir, label=output.name, progress=progress)
    except KeyboardInterrupt:
        print(
            f"interrupted: run the same command again to resume from the last checkpoint in {workdir}", file=sys.stderr
        )
        raise
    model = accelerator.unwrap_model(model)

    record = TrainingRecord(
        kind=baseline["kind"] if baseline else "expert",
        base=base.spec,
        base_hash=base.checkpoint.content_hash(),
        data=selections,
        data_summary=[data.summary()],
        config=config,
        result={
            "steps_done": state.step,
            "best_step": state.best_step,
            "best_validation_loss": state.best_validation_loss,
            "base_validation_loss": state.base_validation_loss,
            "stopped_early": state.stopped_early,
            "history": [entry.model_dump() for entry in state.history],
        },
        timing={
            "seconds_this_session": round(time.perf_counter() - started, 2),
            "encoder_outputs_seconds": round(encoder_seconds, 2),
            "train_step_seconds_total": round(sum(state.step_seconds), 2),
            "median_step_seconds": state.median_step_seconds,
            "median_step_cpu_seconds": state.median_step_cpu_seconds,
        },
        environment=_environment(accelerator, precision),
        baseline=baseline,
    )
    with atomic_directory(output, force=True) as tmp:
        if config.mode == "lora":
            write_lora_expert(model, base.spec, base.directory, tmp)
        else:
            write_dense_expert(model, base.checkpoint, frozen, tmp)
        write_record(tmp, record)
    shutil.rmtree(workdir, ignore_errors=True)
    return output


def check_encoder_layers(config: TrainingConfig, base: Base) -> None:
    """Mode top_encoder needs 1 <= encoder_layers <= the base's encoder layers, and no LayerDrop."""
    if config.mode != "top_encoder":
        return
    layers = int(base.checkpoint.config["encoder_layers"])
    if not 1 <= config.encoder_layers <= layers:
        raise SpeechmergeError(
            f"training setting encoder_layers {config.encoder_layers}: {base.spec} has {layers} encoder layers; "
            f"choose 1 to {layers}"
        )
    if float(base.checkpoint.config.get("encoder_layerdrop", 0.0)) > 0:
        raise SpeechmergeError(
            f"{base.spec}: encoder_layerdrop > 0 in config.json; mode top_encoder runs its top layers without "
            "LayerDrop, so set it to 0 or use mode full"
        )


def _fingerprint(base: Base, data: TrainingData, config: TrainingConfig) -> dict:
    """What must not change between a run and its resumption."""

    def digest(utterances) -> str:
        rows = [[u.id, str(u.audio), u.language, u.task, u.reference] for u in utterances]
        return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()

    return {
        "base_hash": base.checkpoint.content_hash(),
        "config": config.model_dump(mode="json"),
        "train": digest(data.train),
        "validation": digest(data.validation),
    }


def claim_work_folder(workdir: Path, fingerprint: dict) -> None:
    """Start a work folder, or resume one begun with the same base, data and settings."""
    path = workdir / FINGERPRINT
    if path.is_file():
        try:
            earlier = json.loads(path.read_text())
        except ValueError:
            earlier = None
        if earlier != fingerprint:
            changed = sorted(key for key in fingerprint if earlier is None or earlier.get(key) != fingerprint[key])
            raise SpeechmergeError(
                f"{workdir}: an interrupted run with a different {', '.join(changed)} is here; "
                "rerun it with its own settings to resume it, or delete the folder to start over"
            )
        return
    if workdir.exists():
        shutil.rmtree(workdir)  # a folder whose fingerprint was never written holds nothing resumable
    workdir.mkdir(parents=True)
    path.write_text(json.dumps(fingerprint, indent=1))


def _accelerator(config: TrainingConfig):
    """An `accelerate.Accelerator` for the device and precision asked (auto resolved), and the precision."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        raise SpeechmergeError("--device cuda: no CUDA device is visible to torch; use --device cpu or auto")
    on_cpu = config.device == "cpu" or not cuda
    precision = config.precision
    if precision == "auto":
        precision = "fp32" if on_cpu else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    if on_cpu and precision == "fp16":
        raise SpeechmergeError(
            "--precision fp16: mixed precision with float16 needs a GPU; use fp32 or bf16 on the CPU"
        )
    # accelerate keeps one process-wide state and refuses an Accelerator whose device or precision
    # differs from the first one's; a later run in this process may ask for another. accelerate has
    # no public reset: this is the call its own test base class (AccelerateTestCase) makes.
    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=on_cpu, mixed_precision="no" if precision == "fp32" else precision), precision


def _trainable_model(base_dir: Path, config: TrainingConfig):
    """The base in float32 with the mode's weights trainable; and the names of the tensors that stay frozen."""
    import torch
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32)
    model.config.apply_spec_augment = config.spec_augment
    # The encoder's positions are a fixed sinusoid in Whisper (a buffer in openai-whisper).
    model.model.encoder.embed_positions.requires_grad_(False)
    if config.mode in ("decoder", "top_encoder"):
        model.model.encoder.requires_grad_(False)
    if config.mode == "top_encoder":
        encoder = model.model.encoder
        for module in (*encoder.layers[-config.encoder_layers :], encoder.layer_norm):
            module.requires_grad_(True)
    frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    if config.mode == "lora":
        from peft import LoraConfig, get_peft_model

        stacks = "encoder|decoder" if config.lora_encoder else "decoder"
        modules = "|".join(config.lora_modules)
        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=rf"model\.({stacks})\.layers\.\d+\.((self_attn|encoder_attn)\.)?({modules})",
        )
        model = get_peft_model(model, lora)
    return model, frozen


def _encoder_side(model, base_dir: Path, data: TrainingData, config: TrainingConfig, device, progress: bool):
    """Log-mel features per batch when the whole encoder runs; otherwise the outputs of its frozen part, computed once."""
    from functools import partial

    from speechmerge.features.log_mel import LogMel
    from speechmerge.progress import progress_bar
    from speechmerge.training.inputs import cached_encoder_outputs, mel_inputs, top_encoder_inputs

    log_mel = LogMel(base_dir)
    if config.whole_encoder_runs:
        return mel_inputs(log_mel, device)
    utterances = data.train + data.validation
    clips = len({u.audio for u in utterances})
    encoder = model.get_encoder().to(device)
    if config.mode == "top_encoder":
        first_top_layer = len(encoder.layers) - config.encoder_layers
        cached, what = partial(top_encoder_inputs, encoder, first_top_layer), f"encoder layer {first_top_layer} inputs"
    else:
        cached, what = partial(cached_encoder_outputs, encoder), "encoder outputs"
    with progress_bar(progress, transient=True) as bar:
        task = bar.add_task(f"{what} (once per clip)", total=clips)
        return cached(
            log_mel,
            base_dir,
            utterances,
            config.batch_size,
            device,
            on_clips=lambda n: bar.advance(task, n),
        )


def _environment(accelerator, precision: str) -> dict:
    import peft
    import torch
    import transformers

    return {
        "device": str(accelerator.device),
        "gpu": torch.cuda.get_device_name() if accelerator.device.type == "cuda" else None,
        "precision": precision,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
