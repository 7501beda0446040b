"""AdaMerging for Whisper's decoder (Yang et al., ICLR 2024, arXiv 2310.02575), without labels.

Coefficients λ_{t,g} per expert t and layer group g (`granularity: block` — each decoder block
and the decoder tensors outside the blocks —, or `tensor`, one per parameter tensor as
FusionBench's layer-wise wrapper) merge the task vectors as θ_g = θ_0 + Σ_t λ_{t,g} τ_t. With
`vectors: ties` (the paper's TIES-AdaMerging) τ_t are TIES-pruned first: each task vector keeps its
top `density` fraction by magnitude (per tensor), a sign is elected per entry by the mass
Σ_t τ̂_t, and entries that disagree with it are zeroed; λ then replaces TIES's disjoint mean.

Only λ trains, with Adam, through the merged weights (`torch.func.functional_call`), to minimise
the prediction entropy H(p) = −Σ_v p_v log p_v of the merged decoder on the clips' audio. Each
step draws one batch per (language, task) group of the data and sums the groups' losses (as
FusionBench sums its tasks'). Two readings of "prediction" for a sequence model:

- `first`: the next-token distribution at the first position after the prompt; the entropy of
  the batch's mean logits there (FusionBench's Flan-T5 variant, `logits[:, 0].mean(0)`);
- `greedy`: the mean entropy over every position of the merged model's own greedy transcript,
  teacher-forced; a clip's transcript is decoded again when it is drawn `refresh` or more steps
  after it was last decoded.

Defaults are FusionBench's Flan-T5 ones: Adam, learning rate 1e-3, λ initialised at 0.3, no
clamping, batch 4 per task (its CLIP default is 16); its 1,000 steps are `steps` here, bounded by
`timeout`. Only the audio, language and task of each clip are read, never its text. The encoder
is the base's (only decoder tensors merge), so its outputs come from the encoder-output cache;
with `encoder_window: audio` the decoder cross-attends only to the positions holding the clip's
audio plus a margin (as `speechmerge eval --encoder-window audio`): the cross-attention keys and
values over Whisper's 1,500 positions are most of a step's cost.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from speechmerge.data.manifest import Utterance
from speechmerge.merging.memory import MemoryMerger, keep_base_outside
from speechmerge.recipe import MergeRecipe
from speechmerge.search.decoding import Greedy

DECODER = r"model\.decoder\..*"
_BLOCK = re.compile(r"model\.decoder\.layers\.(\d+)\.")


def layer_group(name: str, granularity: str = "block") -> str:
    """The tensor itself (`tensor`), or 'block i' for decoder block i and 'outside' for the rest."""
    if granularity == "tensor":
        return name
    match = _BLOCK.match(name)
    return f"block {match.group(1)}" if match else "outside"


def group_pattern(group: str) -> str:
    """The regular expression of a group's tensors (for a recipe override)."""
    if group == "outside":
        return r"model\.decoder\.(?!layers\.).*"
    if group.startswith("block "):
        return rf"model\.decoder\.layers\.{group.split()[1]}\..*"
    return re.escape(group)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the softmax distributions along the last axis."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1).mean()


def ties_pruned(tasks: torch.Tensor, density: float) -> torch.Tensor:
    """TIES's trim and sign election on a stack of task vectors [T, ...]: each row's top `density`
    by magnitude kept, entries whose sign disagrees with sign(Σ_t τ̂_t) zeroed (a new tensor)."""
    from speechmerge.merging.masks import elect_sign, trim_to_density_

    trimmed = trim_to_density_(tasks.clone(), density)
    sign = elect_sign(trimmed, torch.ones(tasks.shape[0]))
    return trimmed * (torch.sign(trimmed) == sign.unsqueeze(0))


@dataclass
class AdaMergingResult:
    coefficients: dict[str, list[float]]  # group -> λ per expert
    entropies: list[float]  # per step
    seconds: float


class AdaMerging:
    def __init__(
        self,
        recipe: MergeRecipe,
        model_dir: Path,
        clips: Sequence[Utterance],
        variant: str = "first",
        vectors: str = "task_arithmetic",
        density: float = 0.2,
        granularity: str = "block",
        init: float = 0.3,
        lr: float = 1e-3,
        batch_size: int = 4,
        refresh: int = 5,
        max_new_tokens: int = 64,
        encoder_window: str = "full",
    ):
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        from speechmerge.evaluation.decoding import audio_window
        from speechmerge.features.log_mel import LogMel
        from speechmerge.training.inputs import cached_encoder_outputs

        self.recipe = recipe.updated(method="task_arithmetic", params={"scale": 1.0})
        self.merger = MemoryMerger(self.recipe, include=DECODER)
        self.model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.processor = WhisperProcessor.from_pretrained(model_dir)
        self.clips = [Utterance(id=u.id, audio=u.audio, language=u.language, task=u.task, text="") for u in clips]
        self.variant, self.lr, self.batch_size, self.refresh = variant, lr, batch_size, refresh
        self.vectors, self.density, self.granularity = vectors, density, granularity
        self.max_new_tokens = min(max_new_tokens, self.model.config.max_target_positions // 2)
        self.names = [n for n in self.merger.names if n not in self.merger.frozen]
        self.tasks = {
            n: ties_pruned(self.merger.stacks[n], density) if vectors == "ties" else self.merger.stacks[n]
            for n in self.names
        }
        self.groups = list(dict.fromkeys(layer_group(n, granularity) for n in self.names))
        self.lambdas = torch.nn.Parameter(torch.full((len(self.groups), len(self.recipe.experts)), float(init)))
        encoder = cached_encoder_outputs(
            self.model.model.encoder, LogMel(model_dir), Path(model_dir), self.clips, 8, "cpu"
        )
        self.encoded = [encoder([u])["encoder_outputs"][0] for u in self.clips]
        if encoder_window == "audio":
            self.encoded = [e[:, : audio_window([u.audio], e.shape[1])] for e, u in zip(self.encoded, self.clips)]
        self.greedy = Greedy(self.model, self.processor.tokenizer, self.max_new_tokens)
        self.by_task: dict[tuple[str, str], list[int]] = {}
        for index, u in enumerate(self.clips):
            self.by_task.setdefault((u.language, u.task), []).append(index)

    def merged(self) -> dict[str, torch.Tensor]:
        """θ_0 + Σ_t λ_{t,g} τ_t for every merged decoder tensor, differentiable in λ."""
        index = {g: i for i, g in enumerate(self.groups)}
        return {
            name: self.merger.base[name]
            + torch.tensordot(self.lambdas[index[layer_group(name, self.granularity)]], self.tasks[name], dims=1)
            for name in self.names
        }

    def _greedy(self, index: int) -> list[int]:
        clip = self.clips[index]
        return self.greedy.tokens(self.encoded[index], clip.language, clip.task)[0]

    def _logits(self, params: dict, index: int, continuation: list[int]) -> torch.Tensor:
        """The merged model's logits from the last prompt position on (teacher-forced continuation)."""
        from torch.func import functional_call

        prompt = self.greedy.prompt(self.clips[index].language, self.clips[index].task)
        kwargs = {"encoder_outputs": (self.encoded[index],), "decoder_input_ids": torch.tensor([prompt + continuation])}
        return functional_call(self.model, params, args=(), kwargs=kwargs).logits[0, len(prompt) - 1 :]

    def _loss(self, params: dict, batch: list[int], transcripts: dict[int, list[int]]) -> torch.Tensor:
        if self.variant == "first":
            return entropy(torch.stack([self._logits(params, i, [])[0] for i in batch]).mean(0))
        return torch.stack([entropy(self._logits(params, i, transcripts[i])) for i in batch]).mean()

    def _refreshed(self, params: dict, batch: list[int], transcripts: dict, decoded_at: dict, step: int) -> None:
        """Decode again the transcripts of `batch` that are `refresh` or more steps old."""
        stale = [i for i in batch if i not in decoded_at or step - decoded_at[i] >= self.refresh]
        if stale:
            self.model.load_state_dict({k: v.detach() for k, v in params.items()}, strict=False)
            for index in stale:
                transcripts[index], decoded_at[index] = self._greedy(index), step

    def mean_entropy(self) -> float:
        """The loss of the current λ over all clips (every group, greedy transcripts decoded now)."""
        with torch.no_grad():
            params = self.merged()
            transcripts: dict[int, list[int]] = {}
            losses = []
            for members in self.by_task.values():
                if self.variant == "greedy":
                    self._refreshed(params, members, transcripts, {}, 0)
                losses.append(self._loss(params, members, transcripts))
            return float(torch.stack(losses).sum())

    def fit(self, steps: int, seed: int = 0, timeout: float | None = None) -> AdaMergingResult:
        optimiser = torch.optim.Adam([self.lambdas], lr=self.lr)
        generator = torch.Generator().manual_seed(seed)
        transcripts: dict[int, list[int]] = {}
        decoded_at: dict[int, int] = {}
        history, started = [], time.monotonic()
        for step in range(steps):
            if timeout is not None and time.monotonic() - started > timeout:
                break
            params = self.merged()
            optimiser.zero_grad()
            total = 0.0
            for members in self.by_task.values():
                order = torch.randperm(len(members), generator=generator)[: self.batch_size].tolist()
                batch = [members[i] for i in order]
                if self.variant == "greedy":
                    self._refreshed(params, batch, transcripts, decoded_at, step)
                loss = self._loss(params, batch, transcripts)
                loss.backward(retain_graph=True)
                total += float(loss.detach())
            optimiser.step()
            history.append(total)
            print(f"step {step + 1}: entropy {total:.4f} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
        return AdaMergingResult(self.coefficients(), history, time.monotonic() - started)

    def coefficients(self) -> dict[str, list[float]]:
        return {g: self.lambdas[i].tolist() for i, g in enumerate(self.groups)}

    def as_recipe(self, experts: Sequence[str] | None = None) -> MergeRecipe:
        """The learned λ as a plain recipe: task arithmetic (scale 1) over `experts` (default the
        recipe's; for TIES vectors the pruned experts `write_pruned_experts` wrote), one `weights`
        override per group."""
        recipe = self.recipe
        if experts is not None:
            recipe = recipe.updated(
                experts=[{**e.model_dump(), "path": str(p)} for e, p in zip(recipe.experts, experts)]
            )
        overrides = [{"match": group_pattern(g), "weights": w} for g, w in self.coefficients().items()]
        recipe = recipe.updated(overrides=[*(o.model_dump() for o in recipe.overrides), *overrides])
        return keep_base_outside(recipe, DECODER)

    def write_pruned_experts(self, folder: Path) -> list[Path]:
        """θ_0 + τ̂_t for each expert (float32 where pruned, the base elsewhere), as Whisper directories."""
        import shutil

        from safetensors.torch import save_file

        from speechmerge.checkpoints.resolve import open_checkpoint, resolve_model_dir
        from speechmerge.checkpoints.whisper import PROCESSOR_FILES

        base_dir = resolve_model_dir(self.recipe.base)
        base = open_checkpoint(self.recipe.base)
        paths = []
        for index in range(len(self.recipe.experts)):
            target = Path(folder) / self.recipe.expert_label(index)
            target.mkdir(parents=True, exist_ok=True)
            state = {n: base.get(n).contiguous() for n in base.names()}
            for name in self.names:
                state[name] = (self.merger.base[name] + self.tasks[name][index]).contiguous()
            save_file(state, str(target / "model.safetensors"))
            for name in ("config.json", *PROCESSOR_FILES):
                if (base_dir / name).is_file():
                    shutil.copy2(base_dir / name, target / name)
            paths.append(target)
        return paths
