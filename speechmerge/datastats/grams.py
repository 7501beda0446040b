"""Gram matrices XᵀX of the inputs of a model's linear layers, gathered with forward hooks.

Each `nn.Linear` in scope gets a hook that adds XᵀX of the rows of its input that count to a
float32 accumulator [in, in]. Rows that count: on the decoder side (self-attention q/k/v/out,
cross-attention q/out, fc1, fc2) the positions of the real decoder inputs (padding excluded, via
the mask the caller sets before each forward); on the encoder side (cross-attention k/v, and every
encoder layer when the encoder runs) all 1500 frames (Whisper's encoder always reads 30 s, there is
no padding). Layers that read the same tensor in one forward (q/k/v of one attention; the cross
k/v of every decoder layer, which all read the encoder output) share one accumulator, computed
once: `gram_of` maps each weight name to the weight name its Gram matrix is stored under.

float32 accumulators: whisper-base's decoder needs 133 MB (one 2048² and five 512² per layer plus
one shared 512²), large-v3's 4.4 GB (one 5120² and five 1280² per layer).
"""

from __future__ import annotations

import torch

ENCODER_SIDE_SUFFIXES = ("encoder_attn.k_proj", "encoder_attn.v_proj")


def reads_encoder_states(module_name: str) -> bool:
    """Whether a linear layer's input rows are encoder frames (never padded) rather than decoder positions."""
    return module_name.startswith("model.encoder.") or module_name.endswith(ENCODER_SIDE_SUFFIXES)


class GramHooks:
    """Forward hooks on the linear layers whose weights start with one of `prefixes`.

    Set `decoder_mask` ([batch, positions] bool) before each forward; read `grams`, `rows` and
    `gram_of` after the last. Use as a context manager (the hooks are removed on exit)."""

    def __init__(self, model: torch.nn.Module, prefixes: tuple[str, ...]):
        parameters = dict(model.named_parameters())  # a tied weight (proj_out) appears once, as the embedding
        self.modules = {
            name: module
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and f"{name}.weight" in parameters and name.startswith(prefixes)
        }
        self.grams: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}
        self.gram_of: dict[str, str] = {}
        self.decoder_mask: torch.Tensor | None = None
        self._seen: list[tuple[torch.Tensor, str]] = []
        self._handles = []

    def __enter__(self) -> GramHooks:
        self._handles = [module.register_forward_hook(self._hook(name)) for name, module in self.modules.items()]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._seen = []

    def start_batch(self, decoder_mask: torch.Tensor) -> None:
        """Call before each forward: which decoder positions are real inputs."""
        self.decoder_mask = decoder_mask
        self._seen = []

    def _hook(self, name: str):
        weight = f"{name}.weight"

        def hook(module, inputs, output) -> None:
            owner = next((key for tensor, key in self._seen if tensor is inputs[0]), None)
            if owner is not None:
                self.gram_of.setdefault(weight, owner)
                return
            self._seen.append((inputs[0], weight))
            x = inputs[0].detach()
            self.gram_of.setdefault(weight, weight)
            rows = x.reshape(-1, x.shape[-1]) if reads_encoder_states(name) else x[self.decoder_mask]
            rows = rows.to(torch.float32)
            if weight not in self.grams:
                self.grams[weight] = torch.zeros(x.shape[-1], x.shape[-1], dtype=torch.float32, device=x.device)
                self.rows[weight] = 0
            self.grams[weight].addmm_(rows.T, rows)
            self.rows[weight] += rows.shape[0]

        return hook
