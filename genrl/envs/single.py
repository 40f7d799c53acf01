"""One image at a time, in numpy: what ``gymnasium.make("genrl/LCM-v0")`` (and the other families' ids)
return, for stepping by hand and for Gymnasium's own tools (``check_env``, wrappers, ``SyncVectorEnv``).

Training uses the batched torch env (``genrl.envs.make_env``); this wraps one of a single image. Its spaces are that
env's ``single_`` spaces, and it speaks numpy as they do:

- ``reset`` draws a prompt from ``prompts`` with the env's ``np_random`` (``options={"prompt": ...}`` fixes it,
  ``options={"metadata": {...}}`` gives the reward its metadata) and returns the observation as numpy arrays
  (``int`` timesteps as ``np.int64``), each a fresh copy; ``info`` = ``{"prompt": ...}``.
- ``step`` takes an action of the action space, e.g. ``action_space.sample()`` (numpy, converted to the model's
  device and dtype; torch tensors of the same shape pass too), and returns the reward as a float and
  ``terminated``/``truncated`` as bools. The last step's ``info`` holds ``images`` (3, H, W) in [0, 1] and
  ``reward_parts`` (floats); no timing, since Gymnasium expects a seeded episode's ``info`` to repeat.

One seed drives the episode: ``reset(seed=...)`` seeds ``np_random``, which draws the initial noise's seed and then
the prompt. ``to_policy`` and ``from_policy`` convert between these observations and actions and a policy's
batches of one (``genrl.policy``), so that a policy can step this env by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

from genrl.envs.actions import as_action_tensors
from genrl.envs.base import DenoisingEnv
from genrl.envs.make import make_env
from genrl.models import load_pipeline
from genrl.prompts import load_prompts
from genrl.rewards import RewardFn, load_reward

DEFAULT_MODEL = "shapes"
DEFAULT_PROMPTS = "shapes_train"
DEFAULT_REWARD = "jpeg_compressibility"


def _numpy_row(tensors: dict[str, torch.Tensor], space: gym.spaces.Dict) -> dict[str, Any]:
    """Row 0 of a batch, as the values ``space`` holds: copies, never views of the env's tensors, which a later
    step or reset may reuse (the negative prompt's embedding is the same tensor every episode)."""
    out: dict[str, Any] = {}
    for key, subspace in space.spaces.items():
        row = tensors[key][0].detach().cpu()
        if isinstance(subspace, gym.spaces.Discrete):
            out[key] = np.int64(row.item())
        else:
            out[key] = np.array(row.numpy(), dtype=subspace.dtype)
    return out


class SingleImageEnv(gym.Env):
    """A one-image denoising env with numpy observations and actions (the module docstring).

    ``pipeline``: a loaded pipeline, or a model name for ``genrl.models.load_pipeline`` (default the embedded shapes
    model, loaded on ``device``). ``reward_fn``: a reward, a ``--reward`` string (default JPEG compressibility), or
    None to leave the scoring to the caller (NaN rewards, the images in ``info``). ``num_steps``: default the shapes
    preset's (the sampler's ``default_steps``). ``prompts``: a list to draw from, or a prompt set name.
    ``env_options`` go to the batched env (``resolution``, ``sampler`` and the sampler's settings, such as LCM's
    ``noise_last_step``). ``kind``: the family (``genrl.families``), which its Gymnasium id sets.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(
        self,
        pipeline: Any = DEFAULT_MODEL,
        reward_fn: RewardFn | str | None = DEFAULT_REWARD,
        num_steps: int | None = None,
        prompts: Sequence[str] | str = DEFAULT_PROMPTS,
        device: str = "cpu",
        *,
        kind: str = "lcm",
        **env_options: Any,
    ):
        self.kind = kind
        if isinstance(pipeline, str):
            pipeline = load_pipeline(pipeline, kind, device=device, sampler=env_options.get("sampler"))
        if isinstance(reward_fn, str):
            reward_fn = load_reward(reward_fn)
        self.prompts = load_prompts(prompts) if isinstance(prompts, str) else list(prompts)
        if not self.prompts or not all(isinstance(p, str) for p in self.prompts):
            raise ValueError(f"prompts must be a non-empty list of strings or a prompt set name, got {prompts!r:.80}")
        self.vector_env: DenoisingEnv = make_env(kind, 1, pipeline, reward_fn, num_steps, **env_options)
        self.observation_space = self.vector_env.single_observation_space
        self.action_space = self.vector_env.single_action_space
        self.prompt: str | None = None

    @property
    def pipeline(self) -> Any:
        return self.vector_env.pipeline

    @property
    def num_steps(self) -> int:
        return self.vector_env.num_steps

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        prompt, metadata = options.pop("prompt", None), options.pop("metadata", None) or {}
        if options:
            raise ValueError(f"reset takes the options 'prompt' and 'metadata', got {sorted(options)}")
        # Drawn before the prompt, so that fixing the prompt leaves a seed's noise as it was.
        noise_seed = int(self.np_random.integers(2**63 - 1))
        if prompt is None:
            prompt = self.prompts[int(self.np_random.integers(len(self.prompts)))]
        if not isinstance(prompt, str) or not isinstance(metadata, dict):
            raise ValueError(f"reset needs options['prompt'] a string and ['metadata'] a dict, got {prompt!r:.80}")
        obs, _ = self.vector_env.reset(seed=noise_seed, options={"prompts": [prompt], "metadata": [metadata]})
        self.prompt = prompt
        return _numpy_row(obs, self.observation_space), {"prompt": prompt}

    def step(
        self, action: dict[str, np.ndarray] | dict[str, torch.Tensor]
    ) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        env = self.vector_env
        single = as_action_tensors(action, self.action_space.spaces, env.latent_shape, env.device, env.dtype)
        # The result leaves as numpy and floats: no graph to keep.
        with torch.no_grad():
            obs, rewards, terminated, truncated, info = env.step({k: v.unsqueeze(0) for k, v in single.items()})
        out_info: dict[str, Any] = {}
        if "images" in info:
            out_info["images"] = info["images"][0].detach().cpu().float().numpy().copy()
        if "reward_parts" in info:
            out_info["reward_parts"] = {name: float(part[0]) for name, part in info["reward_parts"].items()}
        return (
            _numpy_row(obs, self.observation_space),
            float(rewards[0]),
            bool(terminated[0]),
            bool(truncated[0]),
            out_info,
        )

    def to_policy(self, obs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``obs`` as a policy takes it: a batch of one, on the model's device, floats in its dtype."""
        env, out = self.vector_env, {}
        for key, value in obs.items():
            tensor = torch.as_tensor(np.asarray(value))
            if tensor.is_floating_point():
                tensor = tensor.to(env.dtype)
            out[key] = tensor.unsqueeze(0).to(env.device)
        return out

    def from_policy(self, action: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """A policy's action for a batch of one (``to_policy``'s observation) as an action of ``action_space``."""
        return _numpy_row(action, self.action_space)
