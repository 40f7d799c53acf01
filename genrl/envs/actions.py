"""Actions as callers hand them in: torch tensors (a policy's) or numpy arrays (``action_space.sample()``)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np
import torch


class NonFiniteAction(ValueError):
    """An action with NaN or infinite values: the policy that chose it has diverged."""


def _describe(value: Any) -> str:
    """What a refused action value is, in a few words for the one-line error."""
    if torch.is_tensor(value):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return type(value).__name__


def as_action_tensors(
    action: Any, keys: Collection[str], shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """``action`` as a dict of tensors of ``shape``, one per key of ``keys`` (the action space's).

    Float tensors pass as they are, uncopied: a reparameterised rollout (DPG) backpropagates through them. Float
    numpy arrays are copied onto ``device`` as ``dtype``; a copy, so that the env never aliases an array the caller
    may change later. Raises a one-line ``ValueError`` for an action the chain cannot mean (wrong keys or shape, not
    floats, be it a tensor or an array, NaN or infinite values): it would be decoded and scored as if it were an
    image, and a NaN chain decodes to a black image, which a compression reward scores best.
    """
    if not isinstance(action, dict) or set(action) != set(keys):
        got = f"keys {sorted(action)}" if isinstance(action, dict) else type(action).__name__
        raise ValueError(f"step needs an action dict with keys {sorted(keys)}, each of shape {shape}; got {got}")
    tensors = {}
    for key in keys:
        value = action[key]
        is_floats = isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating)
        # An integer or bool tensor would be kept as it is: latents outside the declared Box of floats, then scored.
        is_float_tensor = torch.is_tensor(value) and value.is_floating_point()
        if not (is_float_tensor or is_floats) or tuple(value.shape) != shape:
            raise ValueError(
                f"step: action['{key}'] must be a float tensor or float numpy array of shape {shape}, got "
                f"{_describe(value)}"
            )
        if is_floats:
            value = torch.tensor(value, device=device, dtype=dtype)
        if not torch.isfinite(value.detach()).all():
            raise NonFiniteAction(f"step: action['{key}'] holds NaN or infinite values; the policy diverged")
        tensors[key] = value
    return tensors
