"""Greedy Whisper decoding from encoder outputs, the decoder written out step by step in torch.

The arithmetic is transformers' `WhisperDecoder` (pre-LayerNorm layers; the query scaled by
head_dim^-1/2 before the product; GELU MLP; logits from the output projection), arranged for
greedy search on CPU:

- the cross-attention keys and values of every layer, K = E W_k and V = E W_v + b_v over the
  encoder output E [batch, frames, d_model], are computed once per batch (the largest single
  cost: 2 · layers · frames · d_model² multiply-adds per clip) and reused by every step;
- self-attention keys and values go into a cache allocated once for the prompt plus the token
  budget, written in place (no concatenation, no re-allocation);
- a step is the layers on the last token, then the argmax of the logits with the suppressed
  tokens at -inf (`begin_suppress` too at the first step), nothing else in Python;
- a clip that emitted end-of-text leaves the batch: the last clip still decoding takes its row
  in both caches (one row copied, not the batch re-indexed) and the steps run on the prefix of
  rows still decoding, so they cost only those clips.

With `int8` the output projection and the cross-attention key/value projections are
dynamically quantised (per-channel int8 weights, activations quantised per call: Jacob et al.
2018); the rest of the decoder and the encoder output stay float32.

With `attend_encoder` the cross-attention never forms the keys and values: head h's scores are
(q_h W_k,h) Eᵀ and its output (p_h E) W_v,hᵀ + b_v,h (p_h sums to 1; W_k's bias, were there one,
adds a constant to every score and cancels in the softmax). That is the same product in another
order: no 2 · layers · frames · d_model² multiply-adds per clip, while each step reads E (the
size of one layer's K or V) twice per layer. Equal to rounding, not bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class GreedyRules:
    """What greedy search forbids and when it stops (from the model's generation config)."""

    suppress_tokens: tuple[int, ...]
    begin_suppress_tokens: tuple[int, ...]
    eos_token_id: int
    max_new_tokens: int


def quantise_decoder(model, cross_projections: bool = True) -> None:
    """Dynamically quantise (int8) the output projection and the cross-attention key/value projections.

    These are the per-token and per-clip bulk of the decoder's arithmetic (a 51,865 x d_model
    matrix read at every step; 2 · layers · frames · d_model² multiply-adds per clip); the
    other linear layers stay float32, as quantising them changes many more transcripts
    (docs/evaluation.md, "Backends")."""
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    def quantised(linear: torch.nn.Linear) -> torch.nn.Module:
        spec = {torch.nn.Linear: per_channel_dynamic_qconfig}
        return quantize_dynamic(torch.nn.Sequential(linear), spec, dtype=torch.qint8)[0]

    with warnings.catch_warnings():  # torch marks its quantised tensor types deprecated; the kernels are current
        warnings.simplefilter("ignore")
        model.proj_out = quantised(model.proj_out)
        for layer in model.model.decoder.layers if cross_projections else ():
            layer.encoder_attn.k_proj = quantised(layer.encoder_attn.k_proj)
            layer.encoder_attn.v_proj = quantised(layer.encoder_attn.v_proj)


class GreedyDecoder:
    """Greedy search over a loaded `WhisperForConditionalGeneration`'s decoder (no autograd)."""

    def __init__(self, model, attend_encoder: bool = False):
        decoder = model.model.decoder
        self.attend_encoder = attend_encoder
        self.layers = list(decoder.layers)
        self.embed_tokens = decoder.embed_tokens
        self.positions = decoder.embed_positions.weight
        self.layer_norm = decoder.layer_norm
        self.proj_out = model.proj_out
        self.heads = model.config.decoder_attention_heads
        self.vocab_size = model.config.vocab_size

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, time, d_model] -> [batch, heads, time, head_dim]."""
        batch, time, width = x.shape
        return x.view(batch, time, self.heads, width // self.heads).transpose(1, 2)

    @staticmethod
    def _merge(x: torch.Tensor) -> torch.Tensor:
        batch, heads, time, head_dim = x.shape
        return x.transpose(1, 2).reshape(batch, time, heads * head_dim)

    def cross_keys_values(self, encoded: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's cross-attention (K, V) [batch, heads, frames, head_dim] of encoder outputs
        (with `attend_encoder`: a copy of the encoder output, [(E, Eᵀ)] for every layer; a copy
        because `generate` reorders its rows in place, and E may be a cached tensor)."""
        if self.attend_encoder:
            return [(encoded.clone(), encoded.transpose(1, 2).contiguous())]
        with torch.no_grad():
            return [
                (
                    self._split(layer.encoder_attn.k_proj(encoded)).contiguous(),
                    self._split(layer.encoder_attn.v_proj(encoded)).contiguous(),
                )
                for layer in self.layers
            ]

    def _forward(self, ids: torch.Tensor, start: int, cross, cache) -> torch.Tensor:
        """Logits [batch, vocab] of the last of `ids` [batch, time] at positions start.. (caches updated)."""
        end = start + ids.shape[1]
        x = self.embed_tokens(ids) + self.positions[start:end]
        layer_cross = cross * len(self.layers) if self.attend_encoder else cross
        for layer, (cross_k, cross_v), (keys, values) in zip(self.layers, layer_cross, cache):
            attention = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            q = self._split(attention.q_proj(h) * attention.scaling)
            keys[:, :, start:end] = self._split(attention.k_proj(h))
            values[:, :, start:end] = self._split(attention.v_proj(h))
            a = F.scaled_dot_product_attention(
                q, keys[:, :, :end], values[:, :, :end], is_causal=ids.shape[1] > 1, scale=1.0
            )
            x = x + attention.out_proj(self._merge(a))
            attention = layer.encoder_attn
            h = layer.encoder_attn_layer_norm(x)
            q = self._split(attention.q_proj(h) * attention.scaling)
            if self.attend_encoder:
                a = self._attend_encoder(attention, q, cross_k, cross_v)
            else:
                a = F.scaled_dot_product_attention(q, cross_k, cross_v, scale=1.0)
            x = x + attention.out_proj(self._merge(a))
            h = layer.final_layer_norm(x)
            x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
        return self._logits(self.layer_norm(x[:, -1]))

    def _attend_encoder(self, attention, q: torch.Tensor, encoded: torch.Tensor, encoded_t: torch.Tensor):
        """Cross-attention [batch, heads, time, head_dim] of queries q over the encoder output
        E [batch, frames, d_model] (Eᵀ given too), without forming K or V (module docstring)."""
        batch, heads, time, _ = q.shape
        width = encoded.shape[-1]
        w_k = attention.k_proj.weight.view(heads, width // heads, width)
        w_v = attention.v_proj.weight.view(heads, width // heads, width)
        # heads and time share one axis, so each product is one batched matrix product over the clips
        # (a broadcast over heads would copy E once per head)
        queries = torch.einsum("bhtd,hde->bhte", q, w_k).reshape(batch, heads * time, width)
        scores = torch.bmm(queries, encoded_t).softmax(-1)
        mixed = torch.bmm(scores, encoded).view(batch, heads, time, width)  # p_h E
        a = torch.einsum("bhte,hde->bhtd", mixed, w_v)
        if attention.v_proj.bias is not None:
            a = a + attention.v_proj.bias.view(heads, 1, width // heads)
        return a

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits [batch, vocab] of hidden states h [batch, d_model]: W hᵀ for a float32 output projection
        (its matrix-times-few-columns kernel reads the 51,865 x d_model matrix about twice as fast on
        this CPU as the h Wᵀ of `linear`; docs/performance.md), the module itself when quantised."""
        if isinstance(self.proj_out, torch.nn.Linear) and self.proj_out.bias is None:
            return torch.mm(self.proj_out.weight, h.T).T
        return self.proj_out(h)

    def _empty_cache(self, batch: int, length: int, like: torch.Tensor):
        shape = (batch, self.heads, length, self.positions.shape[-1] // self.heads)
        return [(like.new_empty(shape), like.new_empty(shape)) for _ in self.layers]

    def first_logits(self, cross, token: int) -> torch.Tensor:
        """Logits [batch, vocab] after the single token `token` (e.g. language identification)."""
        batch = cross[0][0].shape[0]
        with torch.no_grad():
            cache = self._empty_cache(batch, 1, cross[0][0])
            return self._forward(torch.full((batch, 1), token, dtype=torch.long), 0, cross, cache)

    def _mask(self, tokens: Sequence[int], device) -> torch.Tensor:
        mask = torch.zeros(self.vocab_size, dtype=torch.bool, device=device)
        mask[list(tokens)] = True
        return mask

    def generate(self, cross, prompts: Sequence[Sequence[int]], rules: GreedyRules) -> list[list[int]]:
        """Generated token ids per clip (end-of-text excluded), greedy from `prompts` (one length).

        The rows of `cross` are reordered in place as clips finish (see `_leave`)."""
        device = cross[0][0].device
        ids = torch.tensor([list(p) for p in prompts], dtype=torch.long, device=device)
        batch, length = ids.shape
        suppress = self._mask(rules.suppress_tokens, device)
        at_begin = suppress | self._mask(rules.begin_suppress_tokens, device)
        outputs: list[list[int]] = [[] for _ in range(batch)]
        rows = list(range(batch))  # clip index of each row still decoding (rows 0 .. live-1)
        with torch.no_grad():
            cache = self._empty_cache(batch, length + rules.max_new_tokens, cross[0][0])
            live_cross, live_cache = cross, cache
            logits = self._forward(ids, 0, cross, cache)
            for step in range(rules.max_new_tokens):
                tokens = logits.masked_fill(at_begin if step == 0 else suppress, float("-inf")).argmax(-1).tolist()
                finished = [row for row, token in enumerate(tokens) if token == rules.eos_token_id]
                for row, token in enumerate(tokens):
                    if token != rules.eos_token_id:
                        outputs[rows[row]].append(token)
                if len(finished) == len(rows) or step + 1 == rules.max_new_tokens:
                    break
                if finished:
                    _leave(finished, rows, tokens, [*cross, *cache])
                    live_cross = [(k[: len(rows)], v[: len(rows)]) for k, v in cross]
                    live_cache = [(k[: len(rows)], v[: len(rows)]) for k, v in cache]
                step_ids = torch.tensor(tokens, dtype=torch.long, device=device)[:, None]
                logits = self._forward(step_ids, length + step, live_cross, live_cache)
        return outputs


def _leave(finished: list[int], rows: list[int], tokens: list[int], pairs) -> None:
    """Take the finished rows out of the first len(rows) rows of every tensor in `pairs`: each is
    overwritten by the last row still decoding (one row copied, not the batch), and `rows` and
    `tokens` shrink to the rows left, so the live rows stay a prefix (a contiguous view)."""
    for row in sorted(finished, reverse=True):
        last = len(rows) - 1
        if row != last:
            for keys, values in pairs:
                keys[row].copy_(keys[last])
                values[row].copy_(values[last])
            rows[row], tokens[row] = rows[last], tokens[last]
        rows.pop()
        tokens.pop()


def language_ids(logits: torch.Tensor, language_tokens: Sequence[int]) -> list[int]:
    """The argmax over language tokens only (openai-whisper's `detect_language`)."""
    allowed = torch.full_like(logits, float("-inf"))
    index = torch.tensor(list(language_tokens), device=logits.device)
    allowed[:, index] = logits[:, index]
    return allowed.argmax(-1).tolist()
