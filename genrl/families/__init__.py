"""Policy families by ``--env`` name: how a model samples, as an MDP with a Gaussian policy over the next latent.

A family is one module (``genrl.families.lcm``, ``genrl.families.ddpm``, ``genrl.families.flow``) holding everything
that differs between samplers, under these names:

    step function    the pure maths of one step (``lcm_step``, ``ddim_step``, ``flow_step``), mirroring its diffusers
                     scheduler
    Env, SingleEnv   the batched torch env (``genrl.envs.DenoisingEnv``) and its one-image numpy wrapper
                     (``genrl.envs.SingleImageEnv``, whose ``default_num_steps`` is ``gymnasium.make``'s horizon)
    make_policy(pipeline, guidance_scale, reduction, eta, **policy_options) -> genrl.policy.DenoisingPolicy
    policy_options(cfg)               the policy's family-specific keyword arguments from a TrainConfig
    SCHEDULER                         the diffusers scheduler the step maths mirror; the pipeline gets it
    check_pipeline(pipe, model)       refuse, as a GenrlError, a model the family cannot sample
    ENV_OPTIONS                       the batched env's own keyword arguments, each also a TrainConfig field of
                                      that name (LCM: noise_last_step; flow: sde_window)
    validate(cfg)                     the TrainConfig checks that only this family makes
    default_grad_steps(num_steps)     how many last steps DPG backpropagates through unless told
    evaluation_steps(num_steps, quick)  the step counts a benchmark evaluates a trained model at
    SHAPES_MODEL, TINY_MODEL          which embedded shapes model and which tiny pipeline 'shapes' and 'tiny' load
                                      (optional SHAPES_MISSING: the error while that shapes model is not built)
    GUIDANCE_EMBEDDED                 whether guidance is an input of the denoiser (LCM) or a doubled batch

The denoiser a family trains is the pipeline's UNet or its transformer (``genrl.denoiser``).

Adding a family is its module plus one line of ``FAMILIES``. Modules are imported by name when first asked for, so
that no family imports the registry that lists it (they build on ``genrl.envs`` and ``genrl.policy``, which use it).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Literal

import gymnasium as gym

FAMILIES = {
    "lcm": "genrl.families.lcm",  # consistency multistep sampling (RLCM)
    "ddpm": "genrl.families.ddpm",  # DDIM with eta > 0 (DDPO)
    "flow": "genrl.families.flow",  # flow matching as an SDE (Flow-GRPO)
}

# What --env takes: a Literal, so that tyro's --help lists the choices; built from FAMILIES, the one place to add one.
FamilyName = Literal[tuple(FAMILIES)]  # type: ignore[valid-type]


def env_id(name: str) -> str:
    """The Gymnasium id of family ``name``: ``genrl/LCM-v0``, ``genrl/DDPM-v0``, ``genrl/FLOW-v0``."""
    return f"genrl/{name.upper()}-v0"


ENV_IDS = {name: env_id(name) for name in FAMILIES}


def env_options(cfg) -> dict:
    """The keyword arguments of ``cfg.env``'s batched env that a ``TrainConfig`` sets (its ``ENV_OPTIONS``)."""
    return {name: getattr(cfg, name) for name in family(cfg.env).ENV_OPTIONS}


def family(name: str) -> ModuleType:
    """The module of family ``name``. Raises ``ValueError`` for a name not in ``FAMILIES``."""
    if name not in FAMILIES:
        raise ValueError(f"env kind must be one of {sorted(FAMILIES)}, got {name!r}")
    return importlib.import_module(FAMILIES[name])


# make_vec picks the vector entry point whenever one is registered, so genrl.envs.make_env builds the batched env.
for _name, _module in FAMILIES.items():
    if ENV_IDS[_name] not in gym.registry:
        gym.register(ENV_IDS[_name], entry_point=f"{_module}:SingleEnv", vector_entry_point=f"{_module}:Env")
