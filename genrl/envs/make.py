"""Building an env: a family's (or another valid pairing's) sampler on the pipeline's model adapter, the Gymnasium
way from the id ``genrl.families`` names. ``genrl.envs`` registers the ids."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from genrl.adapters import adapter_for
from genrl.envs.base import DenoisingEnv
from genrl.families import ENV_IDS, FAMILIES, family
from genrl.rewards import RewardFn
from genrl.samplers import Sampler, sampler_class, samplers_with
from genrl.samplers.base import check_pairing, settings_fields, the_samplers


def build_sampler(name: str, scheduler: Any, **settings: Any) -> Sampler:
    """Sampler ``name`` with ``settings`` (its ``Settings`` fields; the rest its defaults), on ``scheduler``'s noise
    schedule. ``ValueError`` for a setting that is not its own, naming the samplers whose it is."""
    cls = sampler_class(name)
    own = settings_fields(cls.Settings)
    for key in settings:
        if key not in own:
            owners = samplers_with(key)
            whose = f"a setting of {the_samplers(owners)}" if owners else "no sampler's setting"
            raise ValueError(f"{key} is {whose}, not of {name} (its settings: {', '.join(own) or 'none'})")
    return cls(cls.Settings(**settings), scheduler)


def batched_env(
    num_envs: int,
    pipeline: Any,
    reward_fn: RewardFn | None,
    num_steps: int | None = None,
    resolution: int | None = None,
    *,
    kind: str,
    sampler: str | Sampler | None = None,
    **settings: Any,
) -> DenoisingEnv:
    """The vector entry point of ``genrl/<KIND>-v0``: family ``kind``'s sampler (or ``sampler``, a name or a built
    one) with ``settings``, on ``pipeline``'s adapter."""
    if not isinstance(sampler, Sampler):
        sampler = build_sampler(sampler or family(kind).sampler, pipeline.scheduler, **settings)
    elif settings:
        raise ValueError(f"settings {sorted(settings)} go with a sampler name, not a built sampler")
    adapter = adapter_for(pipeline)
    try:
        check_pairing(sampler, adapter)
    except ValueError as exc:
        raise ValueError(f"this pipeline cannot be sampled here: {exc}") from None
    steps = sampler.default_steps if num_steps is None else num_steps
    return DenoisingEnv(num_envs, adapter, sampler, reward_fn, steps, resolution)


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
    ``resolution``: the image size (default: the model's). ``options``: ``sampler`` (a name, or a built
    ``Sampler``; default the family's) and the sampler's settings (LCM ``noise_last_step``, DDIM ``eta``, flow
    ``noise_level``, ``sde_window``, ...). Raises ``ValueError`` for an unknown ``kind``, another sampler's setting,
    and where the pipeline, the sampler, the steps and the resolution do not go together.
    """
    family(kind)
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


def register_envs() -> None:
    """Each family's id, twice over: ``gymnasium.make`` gives one image in numpy (``SingleImageEnv``),
    ``gymnasium.make_vec`` the batched torch env (make_vec picks the vector entry point whenever one is
    registered)."""
    for name in FAMILIES:
        if ENV_IDS[name] not in gym.registry:
            gym.register(
                ENV_IDS[name],
                entry_point="genrl.envs.single:SingleImageEnv",
                vector_entry_point="genrl.envs.make:batched_env",
                kwargs={"kind": name},
            )
