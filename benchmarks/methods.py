"""The methods the benchmark suite compares, described as data, and which of them run on a task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genrl.config import TrainConfig
from genrl.presets import PRESETS
from genrl.samplers.ddim import PAPER_STEPS


@dataclass(frozen=True)
class Method:
    name: str
    """Its key in results.json and its label in the report and the figures."""
    family: Literal["rlcm", "ddpo", "flow"]
    """rlcm: a latent consistency model fine-tuned with RLCM; ddpo: a diffusion model fine-tuned with DDPO; flow: a
    flow-matching model fine-tuned with Flow-GRPO."""
    algo: Literal["ppo", "reinforce", "dpg"]
    """The ``--algo`` it trains with."""
    preset: str
    """Its preset on a task, ``{task}`` standing for the task's name; the shapes suite's carry ``shapes-`` before."""
    role: Literal["fast", "baseline", "contender", "variant"]
    """fast and baseline: the pair the headline ratios compare (how much sooner the fast one reaches the fidelity
    target, docs/benchmark/PROTOCOL.md); the baseline may be only a reference (``baseline_is_reference``).
    contender: another policy family, trained on every task and compared with each of the pair (``VERSUS``).
    variant: RLCM with another algorithm, run only where the baseline is a reference (``lineup``)."""
    paper_preset: str | None = None
    """Its preset in the paper suite where that is not ``preset``."""
    update_source: str = ""
    """Where its update structure (optimizer steps per reward query, clips) comes from, for the report: the
    protocol compares the methods as tuned, so a reader must see what else differs between the arms."""

    @property
    def shown(self) -> bool:
        """Evaluated with its base model, drawn in the sample grids and Fig. 6: every method but a variant."""
        return self.role != "variant"

    @property
    def slug(self) -> str:
        """Its part of a run directory's name."""
        return f"{self.family}-{self.algo}"

    def config(self, suite: str, task: str) -> TrainConfig:
        """Its preset for ``task`` in ``suite``."""
        if suite == "shapes":
            return PRESETS["shapes-" + self.preset.format(task=task)]
        return PRESETS[(self.paper_preset or self.preset).format(task=task)]


RLCM_PPO = Method(
    "RLCM (PPO)",
    "rlcm",
    "ppo",
    "rlcm-{task}",
    "fast",
    update_source="the RLCM paper's Table 1 structure as its official code runs it (one optimizer step per sampling "
    "round, Adam, clip range 1e-4, advantage clip 10, grad clip 5; genrl/presets.py); learning rate: the sweep's "
    "winner",
)
DDPO_PPO = Method(
    "DDPO (PPO)",
    "ddpo",
    "ppo",
    "ddpo-{task}",
    "baseline",
    update_source="ddpo-pytorch's clips and optimizer (AdamW, clip range 1e-4, advantage clip 5, grad clip 1); "
    "an update batch of 64, one optimizer step per epoch of 64 images, which the sweep preferred to the published "
    "4 steps per epoch of 256; learning rate: the sweep's winner",
)
FLOW_GRPO = Method(
    "Flow-GRPO",
    "flow",
    "ppo",
    "flow-{task}",
    "contender",
    paper_preset="flow-grpo-{task}",
    update_source="Flow-GRPO's config/base.py at the shapes scale (the protocol's flow addendum: 2 optimizer steps "
    "an epoch of 32 images, AdamW, clip range 1e-4, advantage clip 5, grad clip 1); learning rate, and on "
    "alignment the KL 0.04: the sweep's winners",
)
RLCM_DPG = Method(
    "RLCM (DPG)",
    "rlcm",
    "dpg",
    "dpg-{task}",
    "variant",
    update_source="reward backpropagation through RLCM's 4 steps with RLCM's step count and grad clip (no ratio, "
    "no advantage); learning rate: the sweep's winner",
)
# No RLCM (REINFORCE): with one optimizer step per sampling round its gradient is PPO's (every ratio is 1), so its
# runs repeated RLCM (PPO)'s to the last digit.

METHODS: dict[str, Method] = {m.name: m for m in (RLCM_PPO, DDPO_PPO, FLOW_GRPO, RLCM_DPG)}
"""Every method by its name, in the order the suite runs, reports and plots them."""
HEADLINE = (RLCM_PPO, DDPO_PPO)
"""The pair of the headline ratio: the fast method first."""
VERSUS = ((FLOW_GRPO, DDPO_PPO), (RLCM_PPO, FLOW_GRPO))
"""The contender's comparisons, each (faster, slower) as the protocol's addendum names them: its ratios read how much
sooner the first reaches the fidelity target than the second."""

PAPER_DDIM_STEPS = PAPER_STEPS
"""DDPO's sampler in the paper: the inference speed-up is also measured against it."""


def baseline_is_reference(suite: str, task: str) -> bool:
    """On shapes alignment the paper's question is whether each RLCM method reaches the teacher's start, so the
    baseline (DDPO) is only evaluated untrained there."""
    return suite == "shapes" and task == "alignment"


def lineup(suite: str, task: str, quick: bool, contenders: bool = True) -> tuple[Method, ...]:
    """The methods run on ``task``: the headline pair; not in a quick run, the contender (unless not ``contenders``)
    and the variants where the baseline is a reference."""
    if quick:
        return HEADLINE
    wanted = lambda m: m.role != "variant" or baseline_is_reference(suite, task)
    return tuple(m for m in METHODS.values() if wanted(m) and (contenders or m.role != "contender"))
