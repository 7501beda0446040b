"""What one fine-tuning run does: mode, optimisation schedule, validation, device, LoRA shape.

Modes (what trains):

| mode          | trainable                                   | encoder per step                       |
|---------------|---------------------------------------------|----------------------------------------|
| `full`        | every weight (what the papers do)           | runs forward and backward              |
| `decoder`     | the decoder; the encoder is frozen          | never: its outputs are computed once   |
| `top_encoder` | the top `encoder_layers` encoder layers,    | those layers only: the input to the    |
|               | the encoder's final layer norm, the decoder | first is computed once per clip        |
| `lora`        | LoRA adapters (Hu et al. 2021)              | runs, unless `lora_encoder` is off     |

The optimiser is AdamW (Loshchilov & Hutter 2019) on the trainable weights; the learning rate
rises linearly from 0 over the warm-up steps, then follows `schedule` down to 0 at `steps`
(transformers' `get_scheduler`). One optimiser step sums the token losses of
`gradient_accumulation` micro-batches of `batch_size` utterances and divides by their
number of target tokens.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from speechmerge.errors import SpeechmergeError

LORA_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


class TrainingConfig(BaseModel):
    """Every setting of a run; recorded beside the expert, and compared when a run resumes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["full", "decoder", "top_encoder", "lora"] = Field(
        "full",
        description="what trains: every weight, the decoder only, the decoder and the top encoder layers, or LoRA adapters",
    )
    encoder_layers: Optional[int] = Field(
        None, ge=1, description="mode top_encoder: how many of the encoder's top layers train (1 .. its layer count)"
    )
    steps: int = Field(60, ge=1, description="optimiser steps (the budget; early stopping may end sooner)")
    learning_rate: float = Field(1e-5, gt=0, le=1.0, description="peak learning rate of AdamW")
    batch_size: int = Field(8, ge=1, description="utterances per micro-batch")
    gradient_accumulation: int = Field(1, ge=1, description="micro-batches per optimiser step")
    warmup_ratio: float = Field(
        0.1, ge=0, lt=1, description="fraction of the steps over which the learning rate rises from 0"
    )
    schedule: Literal["linear", "cosine", "constant_with_warmup"] = Field(
        "linear", description="learning-rate decay after warm-up"
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW's decoupled weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradients are clipped to this global L2 norm")
    eval_every: int = Field(10, ge=1, description="steps between validations (and resumable checkpoints)")
    patience: int = Field(
        3, ge=0, description="stop after this many validations without a better loss (0: never stop early)"
    )
    validation_fraction: float = Field(
        0.1, gt=0, lt=1, description="held out of the training utterances when the selection has no validation split"
    )
    seed: int = Field(0, description="seeds the data order, LoRA initialisation and any dropout")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available, else cpu")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: fp32 on CPU, bf16 on GPUs that have it, else fp16 (mixed precision, float32 master weights)",
    )
    spec_augment: bool = Field(
        False, description="SpecAugment (Park et al. 2019) time and feature masking of the encoder input"
    )
    lora_rank: int = Field(16, ge=1, description="r, the rank of each adapter")
    lora_alpha: float = Field(32.0, gt=0, description="alpha; the update is B·A·alpha/r")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input")
    lora_modules: tuple[str, ...] = Field(
        LORA_MODULES, min_length=1, description="linear layers of each block that get adapters"
    )
    lora_encoder: bool = Field(
        True, description="adapters in the encoder too (off: the encoder is frozen and its outputs cached)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainingConfig:
        if self.spec_augment and self.mode in ("decoder", "top_encoder"):
            raise ValueError(
                f"spec_augment masks the encoder's input, which mode {self.mode} runs through the frozen layers "
                "once per clip and caches; use mode full or lora"
            )
        if (self.mode == "top_encoder") != (self.encoder_layers is not None):
            raise ValueError(
                "encoder_layers (how many top encoder layers train) goes with mode top_encoder, and only with it"
            )
        if self.spec_augment and self.mode == "lora" and not self.lora_encoder:
            raise ValueError("spec_augment needs the encoder to run every step; turn lora_encoder on")
        unknown = sorted(set(self.lora_modules) - set(LORA_MODULES))
        if unknown:
            raise ValueError(f"lora_modules {unknown}: Whisper blocks have {', '.join(LORA_MODULES)}")
        return self

    @property
    def warmup_steps(self) -> int:
        return math.ceil(self.warmup_ratio * self.steps)

    @property
    def whole_encoder_runs(self) -> bool:
        """Whether the encoder runs whole every step (else the outputs of its frozen part are cached)."""
        return self.mode == "full" or (self.mode == "lora" and self.lora_encoder)


def training_config(**settings) -> TrainingConfig:
    """A `TrainingConfig`, with a one-line `SpeechmergeError` naming the bad setting."""
    try:
        return TrainingConfig(**settings)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "training settings"
        raise SpeechmergeError(f"training setting {where}: {first['msg']}; see `speechmerge finetune --help`") from None
