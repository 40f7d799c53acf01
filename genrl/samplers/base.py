"""What a sampler is: the pure maths of one denoising step, as a Gaussian over the next latent, with its own settings.

A sampler module holds one ``Sampler`` subclass and its ``Settings`` dataclass (its flags, ``--NAME.FIELD``, one
default each). It knows nothing of any model: the adapter (``genrl.adapters``) turns latents and text into the
model's prediction, and the sampler turns that prediction into a ``StepDistribution``. The policy pairs the two.

    schedule(num_steps, adapter, latent_size) -> Schedule   the steps an episode takes, and which are stochastic
    step(prediction, obs) -> StepDistribution                mean, std and the clean-image estimate of one step
    validate(settings, num_steps)                            a ValueError for settings the maths cannot take

Each step function mirrors the operation order of the diffusers scheduler or the official code it stands for, so
that given the same noise the results agree bit for bit (tests/samplers/).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from genrl.steps import StepDistribution

if TYPE_CHECKING:
    from genrl.adapters.base import ModelAdapter

ModelKind = Literal["consistency", "diffusion", "flow"]
"""What a sampler needs of the model: a consistency model (LCM), a diffusion model predicting epsilon or v, or a
flow model predicting a velocity."""
MODEL_KINDS = {
    "consistency": "a latent consistency model (an LCM checkpoint: --env lcm)",
    "diffusion": "a diffusion model predicting epsilon or v (Stable Diffusion 1.x, 2.x, XL: --env ddpm)",
    "flow": "a flow-matching model (Stable Diffusion 3, FLUX: --env flow)",
}


def check_pairing(sampler: type[Sampler] | Sampler, adapter: ModelAdapter) -> None:
    """``ValueError`` where ``sampler`` cannot sample ``adapter``'s model: a consistency sampler needs a consistency
    model, the flow samplers a velocity model, DDIM an epsilon or v model."""
    if sampler.model_kind != adapter.model_kind:
        raise ValueError(
            f"it is {MODEL_KINDS[adapter.model_kind]} ({adapter.name} adapter), and the {sampler.name} sampler "
            f"needs {MODEL_KINDS[sampler.model_kind]}"
        )


@dataclass(frozen=True)
class Schedule:
    """The steps of one episode: step i goes from ``timesteps[i]`` to ``next_timesteps[i]``; ``stochastic[i]`` says
    whether it draws noise (and has a log-prob to train)."""

    timesteps: list[Any]
    next_timesteps: list[Any]
    stochastic: list[bool]


def window(sde_window: tuple[int, int] | None, num_steps: int) -> tuple[int, int]:
    """The steps [start, end) that are stochastic (default: all); ``ValueError`` for a window outside the steps."""
    start, end = sde_window or (0, num_steps)
    if not 0 <= start < end <= num_steps:
        raise ValueError(
            f"{start} {end} is not a window of the {num_steps} steps: pass START < END, from 0 to {num_steps}"
        )
    return start, end


class Sampler(torch.nn.Module):
    """One sampler with its settings, bound to a pipeline's scheduler configuration (its noise schedule)."""

    name: ClassVar[str]
    """Its ``--sampler`` name, and the prefix of its flags."""
    Settings: ClassVar[type]
    """Its settings dataclass."""
    model_kind: ClassVar[ModelKind]
    """What it needs of the model (``ModelAdapter.model_kind``)."""
    scheduler_class: ClassVar[type]
    """The diffusers scheduler whose schedule and step it mirrors; the pipeline is loaded with it."""
    timestep_dtype: ClassVar[torch.dtype] = torch.long
    """Integer timesteps (diffusion), or float32 sigmas (flow)."""
    decodes: ClassVar[str] = "next_latents"
    """The action key the reward sees after the last step (LCM: ``pred_original``, its clean estimate)."""
    default_steps: ClassVar[int]
    """``gymnasium.make``'s horizon."""

    def __init__(self, settings: Any, scheduler: Any):
        super().__init__()
        self.settings = settings
        self.scheduler_config = scheduler.config
        alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
        if alphas_cumprod is not None:  # a flow scheduler has none
            self.register_buffer("alphas_cumprod", alphas_cumprod.clone(), persistent=False)

    def schedule(self, num_steps: int, adapter: ModelAdapter, latent_size: int) -> Schedule:
        raise NotImplementedError

    def step(self, prediction: torch.Tensor, obs: dict[str, torch.Tensor], prediction_type: str) -> StepDistribution:
        """The step's distribution from the model's (guided) ``prediction`` at observation ``obs``, given in the
        model's own parameterization ``prediction_type``."""
        raise NotImplementedError

    @classmethod
    def validate(cls, settings: Any, num_steps: int) -> None:
        """A ``ValueError`` naming the fix where ``settings`` cannot sample ``num_steps`` steps on any model (checked
        with the run's configuration, before anything loads; what depends on the model, ``schedule`` checks)."""

    @classmethod
    def default_grad_steps(cls, num_steps: int) -> int:
        """How many last steps DPG backpropagates through unless told: the last one (a step is one of many)."""
        return 1

    @classmethod
    def evaluation_steps(cls, num_steps: int, quick: bool) -> list[int]:
        """The step counts a benchmark evaluates a trained model at."""
        return [num_steps]


def horizon_and_paper(num_steps: int, quick: bool, paper_steps: int) -> list[int]:
    """A benchmark's step counts for a many-step sampler: fractions of the training horizon and the paper's step
    count (quick: the horizon and the paper's, enough for the inference speed-ups)."""
    if quick:
        return sorted({num_steps, paper_steps})
    return sorted({max(2, num_steps // 4), max(2, num_steps // 2), num_steps, paper_steps})


def the_samplers(names: list[str]) -> str:
    """'the lcm sampler', 'the flow_sde and cps samplers', 'the ddim, flow_sde and cps samplers'."""
    if len(names) == 1:
        return f"the {names[0]} sampler"
    return f"the {', '.join(names[:-1])} and {names[-1]} samplers"


def settings_fields(settings_class: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(settings_class))


def scheduler_timesteps(scheduler_cls: type, config: Any, num_steps: int, **kwargs: Any) -> list[int]:
    """The timesteps ``scheduler_cls.set_timesteps(num_steps, **kwargs)`` gives on a scheduler ``config``.

    ``set_timesteps`` changes the scheduler it runs on, so it runs on a fresh one: the pipeline's scheduler stays as
    it was. Building it as ``scheduler_cls`` also gives the schedule of the step the sampler mirrors whatever
    scheduler the pipeline was saved with.
    """
    fresh = scheduler_cls.from_config(config)
    fresh.set_timesteps(num_steps, **kwargs)
    return [int(t) for t in fresh.timesteps]
