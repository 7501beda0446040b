"""Per-tensor expert weights: a constant, a gradient over depth, or an override's values.

A gradient is a list of values interpolated linearly over a stack's depth (as mergekit's
gradients). Whisper has two stacks, so each spans its own range: for a tensor of block i of a
stack of L blocks the position is x = i / (L − 1) (x = 0 when L = 1); the stack's tensors in
front of its blocks (conv layers, embeddings) take x = 0 and its final layer norm takes x = 1.
The weight is the piecewise-linear interpolation of the n values placed at x_k = k / (n − 1):

    w(x) = v_k + (v_{k+1} − v_k) · (x·(n − 1) − k),   k = ⌊x·(n − 1)⌋,

so the first value is the weight of the embeddings and the first block, the last value that of
the last block and the final layer norm, and a single value is a constant.
"""

from __future__ import annotations

import numpy as np

from speechmerge.checkpoints.whisper import TensorRole


def depth_position(role: TensorRole, layers: int) -> float:
    """x ∈ [0, 1]: where a tensor sits in its stack of `layers` blocks (see the module docstring)."""
    if role.layer is not None:
        return role.layer / (layers - 1) if layers > 1 else 0.0
    return 1.0 if role.role == "norm" and role.component != "head" else 0.0


def interpolate(values: list[float], position: float) -> float:
    """The gradient `values` at `position` ∈ [0, 1] (linear between equally spaced points)."""
    if len(values) == 1:
        return float(values[0])
    return float(np.interp(position, np.linspace(0.0, 1.0, len(values)), values))


def tensor_weights(
    expert_weights: list[float | list[float]], role: TensorRole, layers: int, override: list[float] | None
) -> tuple[float, ...]:
    """Each expert's weight for one tensor: the override's values where one matches, else each
    expert's constant or gradient at the tensor's depth."""
    if override is not None:
        return tuple(float(v) for v in override)
    position = depth_position(role, layers)
    return tuple(interpolate(w if isinstance(w, list) else [w], position) for w in expert_weights)
