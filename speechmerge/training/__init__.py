"""Make experts and the baselines merging is compared with: fine-tuning of a Whisper base.

`finetune(base, DataSelection(...), output, TrainingConfig(...))` makes one expert (full
fine-tuning, decoder-only with cached encoder outputs, or LoRA); `train_joint` and
`train_sequential` make the joint multi-task and sequential baselines from the experts' data.
"""

from speechmerge.training.api import finetune
from speechmerge.training.baselines import expert_groups, train_joint, train_sequential
from speechmerge.training.config import TrainingConfig, training_config
from speechmerge.training.expert import TrainingRecord, read_training_record
from speechmerge.training.selection import DataSelection

__all__ = [
    "DataSelection",
    "TrainingConfig",
    "TrainingRecord",
    "expert_groups",
    "finetune",
    "read_training_record",
    "train_joint",
    "train_sequential",
    "training_config",
]
