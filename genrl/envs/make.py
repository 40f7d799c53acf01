"""``make_env``: a family's batched env, built the Gymnasium way from the id the family registry gave it."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from genrl.envs.base import DenoisingEnv
from genrl.families import ENV_IDS, FAMILIES, family
from genrl.rewards import RewardFn


def make_env(
    kind: str,
    num_envs: int,
    pipeline: Any,
    reward_fn: RewardFn | None,
    num_steps: int,
    resolution: int | None = None,
    **options: Any,
) -> DenoisingEnv:
    """The ``kind`` env of ``num_envs`` images, built by ``gymnasium.make_vec`` from its registered id.

    ``reward_fn=None`` leaves the scoring to the caller (the last step returns the decoded images and NaN rewards).
    ``resolution``: the image size (default: the model's). ``options``: the family's own (its ``ENV_OPTIONS``:
    LCM ``noise_last_step``, flow ``sde_window``). Raises ``ValueError`` for an unknown ``kind``, another family's
    option, and where the pipeline, the steps and the resolution do not go together.
    """
    own = family(kind).ENV_OPTIONS
    for name in options:
        if name not in own:
            owners = [other for other in FAMILIES if name in family(other).ENV_OPTIONS]
            whose = f"an option of the {' and '.join(owners)} env" if owners else "no env's option"
            raise ValueError(f"{name} is {whose}, not of the {kind} env (its options: {', '.join(own) or 'none'})")
    env = gym.make_vec(
        ENV_IDS[kind],
        num_envs=num_envs,
        pipeline=pipeline,
        reward_fn=reward_fn,
        num_steps=num_steps,
        resolution=resolution,
        **options,
    )
    # The vector entry point builds the batched env itself: make_vec wraps nothing, so this is the env.
    assert isinstance(env, DenoisingEnv), type(env)
    return env
