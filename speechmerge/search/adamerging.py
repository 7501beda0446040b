"""AdaMerging for Whisper's decoder (Yang et al., ICLR 2024, arXiv 2310.02575), without labels.

Coefficients λ_{t,g} per expert t and decoder layer group g (each block, and the tensors
outside the blocks) merge the task vectors τ_t = θ_t − θ_0 as θ_g = θ_0 + Σ_t λ_{t,g} τ_t; only λ
trains, with Adam, through the merged weights (`torch.func.functional_call`), to minimise the
mean entropy H(p) = −Σ_v p_v log p_v of the merged decoder's next-token distributions on the
clips' audio. Two readings of "prediction" for a sequence model:

- `first`: the distribution at the first decoding position after the prompt (FusionBench's
  Flan-T5 variant);
- `greedy`: every position of the merged model's own greedy transcript, teacher-forced, the
  transcripts decoded again every `refresh` steps.

Defaults are FusionBench's: Adam, learning rate 1e-3, λ initialised at 0.3, batch 16 (its 1,000
steps are `steps` here). Only audio, language and task of each clip are read, never its text.
The learned λ are written as a plain task-arithmetic recipe (scale 1, one `weights` override per
layer group).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from speechmerge.data.manifest import Utterance
from speechmerge.merging.memory import MemoryMerger, keep_base_outside
from speechmerge.recipe import MergeRecipe

_BLOCK = re.compile(r"model\.decoder\.layers\.(\d+)\.")


def layer_group(name: str) -> str:
    """'block i' for a tensor of decoder block i, 'outside' for the decoder's other tensors."""
    match = _BLOCK.match(name)
    return f"block {match.group(1)}" if match else "outside"


def group_pattern(group: str) -> str:
    if group == "outside":
        return r"model\.decoder\.(?!layers\.).*"
    return rf"model\.decoder\.layers\.{group.split()[1]}\..*"


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the softmax distributions along the last axis."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1).mean()


@dataclass
class AdaMergingResult:
    coefficients: dict[str, list[float]]  # group -> λ per expert
    entropies: list[float]  # per step
    recipe: MergeRecipe


class AdaMerging:
    def __init__(
        self,
        recipe: MergeRecipe,
        model_dir: Path,
        clips: Sequence[Utterance],
        variant: str = "first",
        init: float = 0.3,
        lr: float = 1e-3,
        batch_size: int = 16,
        refresh: int = 5,
        max_new_tokens: int = 32,
    ):
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.recipe = recipe.updated(method="task_arithmetic", params={"scale": 1.0})
        self.merger = MemoryMerger(self.recipe, include=r"model\.decoder\..*")
        self.model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.processor = WhisperProcessor.from_pretrained(model_dir)
        self.clips = [(u.audio, u.language, u.task) for u in clips]  # never the text
        self.variant, self.lr, self.batch_size, self.refresh = variant, lr, batch_size, refresh
        self.max_new_tokens = min(max_new_tokens, self.model.config.max_target_positions // 2)
        names = [n for n in self.merger.names if n not in self.merger.frozen]
        self.names = names
        self.groups = sorted({layer_group(n) for n in names})
        experts = len(self.recipe.experts)
        self.lambdas = torch.nn.Parameter(torch.full((len(self.groups), experts), float(init)))
        self.encoded = [self._encode(audio) for audio, _, _ in self.clips]

    @torch.no_grad()
    def _encode(self, audio: Path) -> torch.Tensor:
        from speechmerge.data.audio import load_audio

        features = self.processor.feature_extractor(
            load_audio(audio), sampling_rate=16000, return_tensors="pt"
        ).input_features
        return self.model.model.encoder(features).last_hidden_state

    def merged(self) -> dict[str, torch.Tensor]:
        """θ_0 + Σ_t λ_{t,g} τ_t for every merged decoder tensor, differentiable in λ."""
        out = {}
        for name in self.names:
            weights = self.lambdas[self.groups.index(layer_group(name))]
            tau = self.merger.stacks[name]
            out[name] = self.merger.base[name] + torch.tensordot(weights, tau, dims=1)
        return out

    def _prompt(self, language: str, task: str) -> list[int]:
        tokenizer = self.processor.tokenizer
        tokenizer.set_prefix_tokens(language=language, task=task, predict_timestamps=False)
        return tokenizer.prefix_tokens

    @torch.no_grad()
    def _greedy(self, params: dict, hidden: torch.Tensor, prompt: list[int]) -> list[int]:
        from transformers.modeling_outputs import BaseModelOutput

        self.model.load_state_dict({k: v.detach() for k, v in params.items()}, strict=False)
        ids = self.model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
            decoder_input_ids=torch.tensor([prompt]),
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            num_beams=1,
        )[0].tolist()
        return ids[len(prompt) :] if ids[: len(prompt)] == prompt else ids

    def _loss(self, params: dict, batch: list[int], transcripts: dict[int, list[int]]) -> torch.Tensor:
        from torch.func import functional_call

        losses = []
        for index in batch:
            _, language, task = self.clips[index]
            prompt = self._prompt(language, task)
            ids = prompt + (transcripts.get(index, []) if self.variant == "greedy" else [])
            logits = functional_call(
                self.model,
                params,
                args=(),
                kwargs={"encoder_outputs": (self.encoded[index],), "decoder_input_ids": torch.tensor([ids])},
            ).logits[0]
            losses.append(entropy(logits[len(prompt) - 1 :]))
        return torch.stack(losses).mean()

    def mean_entropy(self) -> float:
        with torch.no_grad():
            return float(self._loss(self.merged(), list(range(len(self.clips))), {}))

    def fit(self, steps: int, seed: int = 0) -> AdaMergingResult:
        optimiser = torch.optim.Adam([self.lambdas], lr=self.lr)
        generator = torch.Generator().manual_seed(seed)
        transcripts: dict[int, list[int]] = {}
        history = []
        for step in range(steps):
            batch = torch.randperm(len(self.clips), generator=generator)[: self.batch_size].tolist()
            params = self.merged()
            if self.variant == "greedy" and step % self.refresh == 0:
                for index in range(len(self.clips)):
                    _, language, task = self.clips[index]
                    transcripts[index] = self._greedy(params, self.encoded[index], self._prompt(language, task))
            loss = self._loss(params, batch, transcripts)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            history.append(float(loss.detach()))
        return AdaMergingResult(self.coefficients(), history, self.as_recipe())

    def coefficients(self) -> dict[str, list[float]]:
        return {g: self.lambdas[i].tolist() for i, g in enumerate(self.groups)}

    def as_recipe(self) -> MergeRecipe:
        """The learned λ as a plain recipe: task arithmetic, scale 1, one override per group."""
        overrides = [{"match": group_pattern(g), "weights": w} for g, w in self.coefficients().items()]
        recipe = self.recipe.updated(overrides=[*(o.model_dump() for o in self.recipe.overrides), *overrides])
        return keep_base_outside(recipe, r"model\.decoder\..*")
