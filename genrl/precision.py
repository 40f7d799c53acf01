"""Mixed precision (``--mixed-precision {no,fp16,bf16}``): which weights are half, where the casts are, and fp16's
loss scaling.

Where the casts are, and only there:

1. ``cast_frozen`` (called by ``genrl.assemble``): the frozen weights (VAE, text encoder, the UNet's base weights
   under LoRA) become the half dtype; the trainable weights (the LoRA, or the whole UNet with ``--finetune full``)
   stay fp32, as ddpo-pytorch keeps them. Checkpoints therefore hold fp32 LoRA weights whatever the precision.
2. ``DenoisingPolicy.denoise``: the UNet runs under ``torch.autocast`` to the half dtype and its output is cast to
   fp32. The step's mean and std, the Gaussian log-prob, PPO's ratio and the KL are computed from it in fp32: a
   per-dimension log-prob averaged in half precision would lose the differences that PPO's 1e-4 clip works on.
3. ``DenoisingEnv``: the latents (the state) and the prompt embeddings are fp32; ``decode`` casts the latents to
   the VAE's dtype and the images back to fp32, so rewards and advantages are fp32.

fp16 overflows where bf16 does not: its loss is scaled (``torch.amp.GradScaler``), and a step that the scaler skips
for an inf or NaN gradient is counted in ``steps_skipped``, not taken for a divergence.

genrl uses torch.amp directly rather than accelerate's ``mixed_precision``: on a CPU, accelerate 1.16 sets up
neither autocast nor a scaler for fp16 (its ``Accelerator(mixed_precision="fp16", cpu=True)`` runs in fp32),
where ``torch.autocast("cpu")`` supports both half dtypes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import torch

from genrl.denoiser import denoiser

MixedPrecision = Literal["no", "fp16", "bf16"]

HALF_DTYPES: dict[str, torch.dtype | None] = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def half_dtype(setting: str) -> torch.dtype | None:
    """The dtype of the frozen weights and of the UNet's autocast; None: everything fp32."""
    return HALF_DTYPES[setting]


def cast_frozen(pipeline: Any, dtype: torch.dtype | None) -> None:
    """The frozen weights of the VAE, the text encoders and the denoiser (UNet or transformer) to ``dtype``, in
    place; trainable ones stay."""
    if dtype is None:
        return
    for module in frozen_parts(pipeline):
        for param in module.parameters():
            if not param.requires_grad:
                param.data = param.data.to(dtype)


def frozen_parts(pipeline: Any) -> list[torch.nn.Module]:
    """The networks of ``pipeline`` that genrl loads frozen: the VAE, every text encoder it has (one for Stable
    Diffusion 1.x, three for SD3) and the denoiser (``genrl.denoiser``), in that order."""
    text = [getattr(pipeline, name, None) for name in ("text_encoder", "text_encoder_2", "text_encoder_3")]
    return [pipeline.vae, *[encoder for encoder in text if encoder is not None], denoiser(pipeline)]


@contextlib.contextmanager
def autocast(device_type: str, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` to ``dtype`` (nothing where None)."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type, dtype=dtype):
        yield


class LossScaling:
    """fp16's gradient scaler around the backward pass and the optimizer step; a pass-through otherwise (bf16 has
    fp32's range and needs none). ``algos.common`` calls it: ``backward``, then ``unscale`` before clipping, then
    ``step``."""

    def __init__(self, setting: str = "no", device: str = "cpu"):
        self.scaler = torch.amp.GradScaler(torch.device(device).type) if setting == "fp16" else None

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """The gradients divided by the scale, in place (before they are clipped)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """The optimizer step; False where the scaler skipped it for an inf or NaN gradient (and lowered the
        scale)."""
        if self.scaler is None:
            optimizer.step()
            return True
        scale = self.scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scale() >= scale

    def scale(self) -> float:
        """The loss scale now (1 without fp16)."""
        return 1.0 if self.scaler is None else float(self.scaler.get_scale())

    def state_dict(self) -> dict:
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


NO_SCALING = LossScaling()
"""Full precision, or bf16: backward and step as they are."""
