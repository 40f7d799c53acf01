"""Model adapters by name: everything that differs between model architectures, each one module.

Adding a model is its module (a ``genrl.adapters.base.ModelAdapter`` subclass) plus one line of ``ADAPTERS``. A
pipeline gets the first adapter whose ``matches`` it does, in this order.
"""

from __future__ import annotations

import importlib
from typing import Any

from genrl.adapters.base import ModelAdapter

ADAPTERS = {
    "sd3": "genrl.adapters.sd3:SD3Adapter",  # Stable Diffusion 3 / 3.5 (MMDiT, rectified flow)
    "flux": "genrl.adapters.flux:FluxAdapter",  # FLUX.1 (packed latents, T5 and CLIP, embedded guidance)
    "sdxl": "genrl.adapters.sdxl:SDXLAdapter",  # Stable Diffusion XL (two CLIPs, "text_time" added conditioning)
    "lcm": "genrl.adapters.lcm:LCMAdapter",  # latent consistency models (SD 1.x UNet, w-embedding)
    "sd": "genrl.adapters.sd:SDAdapter",  # Stable Diffusion 1.x / 2.x UNets
}


def adapter_class(name: str) -> type[ModelAdapter]:
    module, _, cls = ADAPTERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def adapter_for(pipeline: Any) -> ModelAdapter:
    """The adapter of ``pipeline``'s architecture; ``ValueError`` naming the ones genrl has where none fits."""
    for name in ADAPTERS:
        cls = adapter_class(name)
        if cls.matches(pipeline):
            return cls(pipeline)
    raise ValueError(
        f"genrl has no adapter for a {type(pipeline).__name__} (it drives {', '.join(ADAPTERS)}); add one in "
        "genrl/adapters/"
    )


__all__ = ["ADAPTERS", "ModelAdapter", "adapter_class", "adapter_for"]
