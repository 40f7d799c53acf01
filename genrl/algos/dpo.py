"""Diffusion-DPO (Wallace et al., 2023, "Diffusion Model Alignment Using Direct Preference Optimization",
arXiv 2311.12908): preference pairs trained on the denoising (or flow-matching) error, against the frozen model.

A pair is a prompt c, a chosen (winning) clean latent x0_w and a rejected (losing) one x0_l. Both are noised at ONE
timestep t with ONE noise draw eps (the paper's eq. 14 takes the expectation over t and x_t of each; the official code
shares them between the two, as flow_grpo does):

    x_t  = add_noise(x0, eps, t)            sqrt(abar_t) x0 + sqrt(1 - abar_t) eps; a flow model: (1 - t) x0 + t eps
    err  = mean_{C,H,W} (prediction(x_t, t, c) - target(x0, eps, t))^2    (float32; eps, v or a velocity, the model's)
    d    = (err_w(theta) - err_w(ref)) - (err_l(theta) - err_l(ref))      (how much more theta improved the loser)
    loss = mean_pairs -log sigmoid(-beta / 2 * d)     (eq. 14 as the official code has it, T omega(lambda_t) in beta)

Lowering the chosen's error below the reference's (d < 0) lowers the loss: it is the Bradley-Terry likelihood of the
preference with the implicit reward r(x0) = -beta/2 (err(theta) - err(ref)). No SFT term. The prediction is the
conditional one (no classifier-free guidance in the training forward, as in flow_grpo's train_sd3_dpo.py; a model
with embedded guidance, FLUX's, gets the run's --guidance-scale as sampling does). The reference is the same
denoiser with its LoRA switched off (``DenoisingPolicy.reference``), so it needs --finetune lora.

Timesteps: a flow model's t is a sigma, drawn as flow_grpo draws it: u ~ logit-normal(0, 1), idx = floor(N u), sigma
= the training scheduler's sigmas[idx] = shift(1 - idx / N), with the scheduler's shift (SD3's 3; exp(mu) where the
scheduler shifts by resolution). A diffusion model's t is an integer uniform in [0, N) (the official Diffusion-DPO
code). N: the scheduler's num_train_timesteps. Every draw comes from the epoch's generator, the same on every process.

Pairs, online (the default): each prompt's group (``--group-size`` consecutive images share a prompt) gives one pair,
its best-rewarded image chosen and its worst rejected; a group whose rewards are all equal carries no preference and
gives none. Offline (``--dpo.pairs DIR``): pairs from a preference set on disk (``DIR/pairs.jsonl``, one line per pair
``{"prompt": ..., "chosen": "relative/path.png", "rejected": "relative/path.png"}``, the PNGs beside it, at the
training resolution), encoded to latents by the model's VAE (``ModelAdapter.encode``); the epoch still samples its
batches (their rewards are logged, as for every algorithm) but trains on ``pairs_per_epoch`` pairs of the set, drawn
without replacement (cycling through the set when it is smaller) by the epoch's generator: deterministic per epoch,
also on --resume. ``python -m genrl.shapes.preference_pairs DIR --pairs N`` writes an example set.

An epoch: the pairs, shuffled, in minibatches of ``train_batch_size`` pairs (chosen and rejected through the denoiser
in one pass), each trained at ``timesteps_per_pair`` fresh (t, eps) draws; an optimizer step follows every
``gradient_accumulation_steps`` minibatches (the last of the epoch takes the ones left over), its gradient the mean
of the loss over its (pair, draw) terms. On N processes the minibatches are global (N x ``train_batch_size`` pairs):
every process draws every pair's t and eps, computes the loss of the pairs it holds (online: those of the groups it
sampled; offline: every N-th of the minibatch), weights it by its share of the optimizer step's global terms, and the
gradients are summed over processes: the step is the one process's mean, as in ``genrl.algos.common``.

Families: flow (SD3, FLUX) and DDPM/DDIM diffusion models, through ``ModelAdapter.add_noise`` and ``target``. Not LCM:
the objective is the diffusion ELBO's denoising error, which a consistency-distilled model is not trained on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from genrl.adapters.base import ModelAdapter
from genrl.algos.base import EpochBatch
from genrl.algos.common import EpochMeans, check_settings, flag, optimizer_step
from genrl.errors import GenrlError
from genrl.policy import DenoisingPolicy

PAIRS_FILE = "pairs.jsonl"
PAIR_FIELDS = ("prompt", "chosen", "rejected")
EXAMPLE_COMMAND = "python -m genrl.shapes.preference_pairs DIR --pairs N"


@dataclass
class DPOConfig:
    beta: float = 100.0
    """The KL-regularisation strength beta of the DPO loss (flow_grpo's SD3.5 configuration: 100; the Diffusion-DPO
    paper's SD1.5 run: 5000)."""
    timesteps_per_pair: int = 39
    """Fresh (timestep, noise) draws per pair per epoch, their losses accumulated into the pair's optimizer step
    (flow_grpo: 39, int(0.99 x its 40 sampling steps))."""
    train_batch_size: int = 4
    """Pairs per minibatch (per process); chosen and rejected go through the denoiser in one pass of twice this."""
    gradient_accumulation_steps: int = 1
    """Minibatches per optimizer step."""
    max_grad_norm: float = 1.0
    """The gradient is clipped to this norm before each optimizer step."""
    pairs: str | None = None
    """A preference set to train on instead of the sampled groups: a folder with pairs.jsonl, one line per pair
    {"prompt": ..., "chosen": "a.png", "rejected": "b.png"} (paths relative to the folder). Example set: python -m
    genrl.shapes.preference_pairs DIR --pairs N."""
    pairs_per_epoch: int = 0
    """With --dpo.pairs: pairs of the set trained on per epoch, over all processes (0: one per prompt group the epoch
    samples, as many as online DPO forms at most)."""


# --------------------------------------------------------------------------------------------------
# The loss (eq. 14), the pairs, the timesteps
# --------------------------------------------------------------------------------------------------
def dpo_loss(
    err_w: torch.Tensor, err_l: torch.Tensor, ref_err_w: torch.Tensor, ref_err_l: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair (B,): -log sigmoid(-beta/2 ((err_w - ref_err_w) - (err_l - ref_err_l))), and the sigmoid's argument
    (the implicit reward margin of chosen over rejected; > 0 where the policy ranks the pair right)."""
    margin = -0.5 * beta * ((err_w - ref_err_w) - (err_l - ref_err_l))
    return -F.logsigmoid(margin), margin


def preference_pairs(rewards: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Online pairs: the rows (indices into ``rewards``) of each group's best (chosen) and worst (rejected) reward,
    groups of ``group_size`` consecutive rows; a group whose rewards are all equal gives no pair."""
    groups = rewards.detach().reshape(-1, group_size)
    best, worst = groups.argmax(dim=1), groups.argmin(dim=1)
    informative = groups.amax(dim=1) > groups.amin(dim=1)
    start = torch.arange(groups.shape[0], device=groups.device) * group_size
    return (start + best)[informative].cpu(), (start + worst)[informative].cpu()


def flow_shift(adapter: ModelAdapter, latent_size: int) -> float:
    """The shift of a flow model's training sigmas: exp(mu) where the scheduler shifts by resolution (mu as the
    pipeline computes it for this latent size), else the config's ``shift`` (SD3: 3; 1 for none)."""
    config = adapter.pipeline.scheduler.config
    options = adapter.flow_schedule_options(config, 1, latent_size)
    return math.exp(options["mu"]) if "mu" in options else float(config.get("shift", 1.0))


def sample_timesteps(adapter: ModelAdapter, count: int, generator: torch.Generator, latent_size: int) -> torch.Tensor:
    """``count`` training timesteps in the adapter's units, from ``generator`` (see the module docstring)."""
    steps = adapter.pipeline.scheduler.config.num_train_timesteps
    if adapter.model_kind != "flow":
        return torch.randint(0, steps, (count,), generator=generator)
    u = torch.sigmoid(torch.randn(count, generator=generator, dtype=torch.float64))  # logit-normal(0, 1)
    index = (u * steps).long().clamp(max=steps - 1)
    sigma = (steps - index) / steps  # the unshifted training sigmas, N / N down to 1 / N
    shift = flow_shift(adapter, latent_size)
    return (shift * sigma / (1 + (shift - 1) * sigma)).float()


def denoising_error(
    adapter: ModelAdapter,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    text: torch.Tensor,
    guidance_scale: float,
) -> torch.Tensor:
    """Per sample (B,): the mean over (C, H, W) of the squared error of the conditional prediction at
    ``add_noise(x0, noise, t)`` against its ``target``, in float32."""
    x_t = adapter.add_noise(x0, noise, t)
    prediction = adapter.predict(x_t, t, text, guidance_scale)
    target = adapter.target(x0, noise, t)
    return ((prediction.float() - target.float()) ** 2).flatten(1).mean(dim=1)


# --------------------------------------------------------------------------------------------------
# The offline preference set
# --------------------------------------------------------------------------------------------------
@dataclass
class PreferenceSet:
    """A preference set on disk (``DIR/pairs.jsonl`` and its images), checked line by line when read."""

    folder: Path
    prompts: list[str]
    chosen: list[Path]
    rejected: list[Path]
    size: tuple[int, int]
    """(width, height) of every image."""

    def __len__(self) -> int:
        return len(self.prompts)

    @classmethod
    def read(cls, folder: str | Path) -> PreferenceSet:
        folder = Path(folder)
        fix = f"make one with `{EXAMPLE_COMMAND}` (docs/algorithms.md, 'Diffusion-DPO')"
        if not folder.is_dir():
            raise GenrlError(f"--dpo.pairs {folder}: no such folder; {fix}")
        path = folder / PAIRS_FILE
        if not path.is_file():
            raise GenrlError(f"--dpo.pairs {folder} has no {PAIRS_FILE} (one line per pair); {fix}")
        form = '{"prompt": ..., "chosen": "a.png", "rejected": "b.png"}'
        prompts, chosen, rejected, size = [], [], [], None
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise GenrlError(f"{where} is not JSON; each line is {form}") from None
            missing = [name for name in PAIR_FIELDS if not isinstance(record, dict) or not record.get(name)]
            if missing or not all(isinstance(record[name], str) for name in PAIR_FIELDS):
                what = f"no '{missing[0]}'" if missing else "a field that is not a string"
                raise GenrlError(f"{where} has {what}; each line is {form}")
            images = []
            for name in ("chosen", "rejected"):
                image = folder / record[name]
                if not image.is_file():
                    raise GenrlError(f"{where}: its {name} image {image} is not there; add it or fix the path")
                try:
                    with Image.open(image) as opened:
                        found = opened.size
                except OSError:
                    raise GenrlError(f"{where}: its {name} image {image} is not an image PIL can read") from None
                if size is None:
                    size = found
                elif found != size:
                    raise GenrlError(
                        f"{where}: its {name} image {image} is {found[0]}x{found[1]}, the set's first "
                        f"{size[0]}x{size[1]}; every image of the set must be at the training resolution"
                    )
                images.append(image)
            prompts.append(record["prompt"])
            chosen.append(images[0])
            rejected.append(images[1])
        if size is None:
            raise GenrlError(f"{path} holds no pairs; {fix}")
        return cls(folder, prompts, chosen, rejected, size)

    def check_resolution(self, resolution: int) -> None:
        width, height = self.size
        if (width, height) != (resolution, resolution):
            raise GenrlError(
                f"--dpo.pairs {self.folder}: its images are {width}x{height}, the run trains at "
                f"{resolution}x{resolution} (--resolution, or the model's default); resize the set or pass "
                f"--resolution {width}" + ("" if width == height else " with square images")
            )

    def latents(self, adapter: ModelAdapter, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The pairs ``indices``: chosen and rejected clean latents (the VAE's encoding) and the prompts' text."""
        with torch.no_grad():
            x0_w = adapter.encode(_load_images([self.chosen[i] for i in indices]))
            x0_l = adapter.encode(_load_images([self.rejected[i] for i in indices]))
            text = adapter.encode_prompts([self.prompts[i] for i in indices])
        return x0_w, x0_l, text


def _load_images(paths: list[Path]) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1]."""
    arrays = []
    for path in paths:
        with Image.open(path) as image:
            arrays.append(np.asarray(image.convert("RGB"), dtype=np.float32) / 255)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def encode_matches_decode(adapter: ModelAdapter) -> bool:
    """Whether the adapter's ``encode`` is defined where its ``decode`` is (an adapter that decodes its own way,
    SDXL's, needs an ``encode`` of its own as well)."""
    owner = next(cls for cls in type(adapter).__mro__ if "decode" in vars(cls))
    return "encode" in vars(owner)


# --------------------------------------------------------------------------------------------------
# The algorithm
# --------------------------------------------------------------------------------------------------
class DPO:
    """Diffusion-DPO on each prompt group's best and worst sample, or on a preference set from disk."""

    Config = DPOConfig

    def __init__(self, config: DPOConfig):
        self.config = config
        self.preferences: PreferenceSet | None = None
        self.resolution: int | None = None

    def validate(self, run: Any) -> None:
        cfg = self.config
        check_settings(
            cfg, run, ("beta", "timesteps_per_pair", "train_batch_size", "gradient_accumulation_steps", "max_grad_norm")
        )
        if cfg.pairs_per_epoch < 0:
            raise GenrlError(f"{flag(run, 'pairs_per_epoch')} must be 0 (automatic) or more, got {cfg.pairs_per_epoch}")
        if run.env == "lcm":
            raise GenrlError(_CONSISTENCY)
        if run.finetune != "lora":
            raise GenrlError(
                "--algo dpo needs --finetune lora: its reference is the model with the LoRA switched off, and full "
                "fine-tuning keeps no frozen copy"
            )
        if cfg.pairs is None and run.group_size < 2:
            raise GenrlError(
                f"--algo dpo pairs the best and worst image of each prompt's group, and --group-size {run.group_size} "
                "makes none; pass --group-size 2 or more, or a preference set with --dpo.pairs DIR"
            )
        if cfg.pairs is not None:
            self.preferences = PreferenceSet.read(cfg.pairs)
        self.resolution = run.resolution

    def prepare(self, pipeline: Any, reward: Any) -> None:
        from genrl.adapters import adapter_for

        adapter = adapter_for(pipeline)
        if adapter.model_kind == "consistency":
            raise GenrlError(_CONSISTENCY)
        if self.preferences is not None:
            if not encode_matches_decode(adapter):
                raise GenrlError(
                    f"--dpo.pairs: the {adapter.name} adapter decodes latents its own way but has no encode() to "
                    "match, so the set's images cannot become its latents; train online DPO (without --dpo.pairs)"
                )
            self.preferences.check_resolution(self.resolution or adapter.default_resolution())

    def update(self, policy: DenoisingPolicy, optimizer: torch.optim.Optimizer, batch: EpochBatch) -> dict[str, float]:
        cfg, processes = self.config, batch.processes
        rollouts = [batch.sample(i).resolve() for i in range(len(batch.batches))]
        latent_shape = tuple(rollouts[0].final_latents.shape[1:])
        stats: dict[str, float] = {}
        if self.preferences is None:
            source = _OnlinePairs(rollouts, batch)
            stats["reward_gap"] = source.reward_gap
        else:
            count = cfg.pairs_per_epoch or sum(len(b.prompts) for b in batch.batches) * processes.count // max(
                batch.group_size, 1
            )
            source = _OfflinePairs(self.preferences, count, batch.generator, policy.adapter, processes)
        stats["pairs"] = float(source.count)
        if source.count:
            stats.update(self.train_on(source, latent_shape, policy, optimizer, batch))
        return stats

    def train_on(
        self,
        source: _OnlinePairs | _OfflinePairs,
        latent_shape: tuple[int, ...],
        policy: DenoisingPolicy,
        optimizer: torch.optim.Optimizer,
        batch: EpochBatch,
    ) -> dict[str, float]:
        """The epoch's optimizer steps over the pairs of ``source`` (the module docstring's loop)."""
        cfg, processes, generator = self.config, batch.processes, batch.generator
        adapter, params = policy.adapter, policy.trainable_parameters()
        sum_gradients = processes.sum_gradients if processes.count > 1 else None
        order = torch.randperm(source.count, generator=generator)  # the same on every process
        size = cfg.train_batch_size * processes.count  # a global minibatch
        minibatches = [order[start : start + size] for start in range(0, source.count, size)]
        steps = [
            minibatches[i : i + cfg.gradient_accumulation_steps]
            for i in range(0, len(minibatches), cfg.gradient_accumulation_steps)
        ]
        means = EpochMeans()
        policy.train()
        for step in steps:
            terms = sum(len(minibatch) for minibatch in step) * cfg.timesteps_per_pair  # global (pair, draw) terms
            for minibatch in step:
                held, x0_w, x0_l, text = source.held(minibatch)  # this process's positions in it, and their data
                for _ in range(cfg.timesteps_per_pair):
                    # One t and one eps per pair, shared by chosen and rejected; drawn for the whole global minibatch
                    # on every process, so that a pair gets the same draws wherever it is trained.
                    t = sample_timesteps(adapter, len(minibatch), generator, latent_shape[-1])
                    noise = torch.randn((len(minibatch), *latent_shape), generator=generator)
                    if not held.numel():
                        continue
                    loss, stats = self.pair_loss(policy, x0_w, x0_l, text, t[held], noise[held])
                    batch.loss_scaling.backward(loss * (len(held) / terms))
                    means.add(stats, weight=len(held))
            means.add(optimizer_step(params, optimizer, cfg.max_grad_norm, sum_gradients, batch.loss_scaling))
        policy.eval()
        return means.means(processes)

    def pair_loss(
        self,
        policy: DenoisingPolicy,
        x0_w: torch.Tensor,
        x0_l: torch.Tensor,
        text: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The mean DPO loss of the pairs at one draw, and its statistics. Chosen and rejected go through the
        denoiser in one pass, for the policy and for the reference (the LoRA switched off)."""
        adapter, pairs = policy.adapter, x0_w.shape[0]
        device = x0_w.device
        x0 = torch.cat([x0_w, x0_l])
        noise = noise.to(device, x0.dtype).repeat(2, *([1] * (noise.ndim - 1)))
        t = t.to(device).repeat(2)
        text = text.repeat(2, *([1] * (text.ndim - 1)))
        err = denoising_error(adapter, x0, noise, t, text, policy.guidance_scale)
        with policy.reference():
            ref_err = denoising_error(adapter, x0, noise, t, text, policy.guidance_scale)
        losses, margin = dpo_loss(err[:pairs], err[pairs:], ref_err[:pairs], ref_err[pairs:], self.config.beta)
        loss = losses.mean()
        with torch.no_grad():
            stats = {
                "loss": loss.item(),
                "implicit_accuracy": (margin > 0).float().mean().item(),
                "margin": margin.mean().item(),
                "error_chosen": err[:pairs].mean().item(),
                "error_rejected": err[pairs:].mean().item(),
                "ref_error_chosen": ref_err[:pairs].mean().item(),
                "ref_error_rejected": ref_err[pairs:].mean().item(),
            }
        return loss, stats


_CONSISTENCY = (
    "--algo dpo trains the diffusion ELBO's denoising error (Diffusion-DPO), and a consistency-distilled LCM is not "
    "trained on it; use --algo ppo, reinforce or dpg on --env lcm, or dpo on --env ddpm or flow"
)


# --------------------------------------------------------------------------------------------------
# Where an epoch's pairs come from
# --------------------------------------------------------------------------------------------------
class _OnlinePairs:
    """The pairs of the epoch's sampled groups. Pairs are found on the global batch's rewards (every process finds
    the same ones, in the same order); each process holds the latents of the groups it sampled."""

    def __init__(self, rollouts: list[Any], batch: EpochBatch):
        processes, rows = batch.processes, len(rollouts[0].prompts)  # rows a batch, on each process
        rewards = batch.global_rewards()  # batch by batch, each process's rows in turn
        chosen, rejected = preference_pairs(rewards, batch.group_size)
        self.count = len(chosen)
        self.reward_gap = (rewards[chosen] - rewards[rejected]).mean().item() if self.count else 0.0
        per_batch = rows * processes.count
        owner = (chosen % per_batch) // rows  # the process that sampled the pair's group
        local = lambda g: (g // per_batch) * rows + g % rows  # a global row's index on its process
        self.rank = processes.rank
        self.owner, self.chosen, self.rejected = owner, local(chosen), local(rejected)
        self.latents = torch.cat([r.final_latents for r in rollouts])
        self.text = torch.cat([r.prompt_embeds for r in rollouts])

    def held(self, minibatch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The positions in ``minibatch`` (pair indices) of the pairs this process holds, and their chosen and
        rejected latents and text."""
        held = torch.nonzero(self.owner[minibatch] == self.rank).squeeze(1)
        pairs = minibatch[held]
        w, lo = self.chosen[pairs].to(self.latents.device), self.rejected[pairs].to(self.latents.device)
        return held, self.latents[w], self.latents[lo], self.text[w]


class _OfflinePairs:
    """``count`` pairs of a preference set, drawn without replacement by the epoch's generator (cycling through the
    set where it is smaller); each process trains every N-th pair of a global minibatch."""

    def __init__(
        self, preferences: PreferenceSet, count: int, generator: torch.Generator, adapter: Any, processes: Any
    ):
        rounds = -(-count // len(preferences))
        self.indices = torch.cat([torch.randperm(len(preferences), generator=generator) for _ in range(rounds)])[:count]
        self.count, self.preferences, self.adapter = count, preferences, adapter
        self.rank, self.processes = processes.rank, processes.count

    def held(self, minibatch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        held = torch.arange(self.rank, len(minibatch), self.processes)
        if not held.numel():
            return held, *(torch.empty(0),) * 3
        x0_w, x0_l, text = self.preferences.latents(self.adapter, self.indices[minibatch[held]].tolist())
        return held, x0_w, x0_l, text
