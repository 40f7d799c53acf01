"""The training configuration's schema: one flat dataclass (its field docstrings are the CLI's help), its checks,
and the helpers that give an algorithm's own settings their place in it (flags ``--NAME.FIELD``, ``replace_config``).

Beside it: the command line (genrl/cli.py), config.json (genrl/config_file.py) and the presets (genrl/presets.py).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro

from genrl.algos.ppo import PPOConfig
from genrl.algos.registry import algorithm_class, is_builtin, make_algorithm, settings_name
from genrl.config_sampler import UNSET, SamplerName, check_sampler_settings
from genrl.cpu import MAX_THREADS, usable_cpus
from genrl.errors import GenrlError
from genrl.families import FamilyName
from genrl.plugins import describe
from genrl.precision import MixedPrecision
from genrl.samplers.flow_sde import NoiseMode
from genrl.trackers import TrackerName, check_installed

# The attention projections of every transformer block, where the reference implementations put LoRA.
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass
class TrainConfig:
    preset: str = "shapes-quickstart"
    """Named configuration to start from; flags override it. See the README for the list."""
    model: str = "shapes"
    """A diffusers pipeline: hub id, local folder, 'shapes' (the embedded models) or 'tiny' (random weights)."""
    env: FamilyName = "lcm"
    """lcm: consistency sampling (RLCM). ddpm: DDIM with eta > 0 (DDPO). flow: flow matching as an SDE (Flow-GRPO;
    an SD3 or FLUX model). The model's adapter is found from the pipeline (genrl/adapters)."""
    sampler: SamplerName | None = None
    """Another sampler for the --env's kind of model: cps (coefficients-preserving) or flow_sde for flow, ddim for
    ddpm, lcm for lcm. Default: the family's (lcm, ddim, flow_sde). Its settings are the flags below that name it."""
    algo: str = "ppo"
    """ppo: clipped PPO (RLCM, DDPO). reinforce: one unclipped pass. dpg: backpropagate a differentiable reward
    through the sampling chain (AlignProp, DRaFT-K). nft: DiffusionNFT, forward-process regression through implicit
    positive and negative policies (flow and DDPM models). dpo: Diffusion-DPO on each group's best and worst image,
    or on a preference set (--dpo.pairs; flow and DDPM models). Or your own: 'package.module:Class', or the name of a
    'genrl.algorithms' entry point. Its settings are flags of their own: --ppo.clip-range, --dpg.truncation."""
    reward: str = "jpeg_compressibility"
    """A built-in reward (with options), 'package.module:function', 'a=0.7,b=0.3', or a server URL."""
    prompts: str = "shapes_train"
    """Built-in prompt set name, or a text file with one prompt per line."""
    epochs: int = 10
    """Total number of epochs (sampling then training); on --resume, the total to reach."""
    time_budget_s: float | None = None
    """Stop after the first epoch that ends past this much training wall-clock (and save it); None: no limit."""
    seed: int = 0
    """Seeds prompts, noise and shuffling; same seed, same run."""
    output_dir: Path = Path("runs")
    """Where run directories are created."""
    run_name: str | None = None
    """Name of the run directory (default: preset and time)."""
    resume: Path | None = None
    """A run directory to continue from its latest checkpoint, with its saved configuration."""
    device: str = "cpu"
    """torch device, e.g. cpu, cuda, cuda:1."""
    process_timeout_s: float = 600.0
    """Several processes: how long one waits for another that hangs before the run stops with an error."""
    mixed_precision: MixedPrecision = "no"
    """fp16 or bf16: the frozen weights (VAE, text encoder, the UNet under LoRA) in that dtype and the UNet run under
    autocast; the trainable weights, the step's mean, std and log-prob, the ratio and the advantages stay fp32
    (genrl/precision.py). fp16 scales the loss. The paper presets use fp16, as the reference codes do on GPUs."""
    allow_tf32: bool = True
    """CUDA: TF32 matrix multiplies and convolutions, as ddpo-pytorch allows (no effect on a CPU)."""
    threads: int | None = None
    """CPU: torch's threads. Default: OMP_NUM_THREADS, else the cores this process may use (shared among the
    processes a launch starts on this machine), never the load; recorded in config.json. The count changes the
    numbers: pin it to compare runs bit for bit across machines."""
    compile: bool = False
    """Compile the denoiser with torch.compile (in place: checkpoints and LoRA exports are unchanged). The first
    epoch pays the compilation, about 3 minutes for the shapes UNet on a 2-core CPU and less on a second start,
    where torch's caches hold it; pays off only in long runs (docs/performance.md). The numbers differ from an
    uncompiled run's within float tolerance."""
    fsdp: bool = False
    """Several processes, LoRA, PPO, REINFORCE or DPG: shard the denoiser's frozen weights over the processes with
    torch's FSDP2, so that each holds 1/N of them (genrl/sharding.py); the LoRA, its updates and its checkpoints
    are the run's without --fsdp."""

    # Sampling
    num_steps: int = 4
    """Inference steps H (LCM: 1-50 on the skipping-step schedule; DDPM: DDIM steps; flow: SDE steps)."""
    guidance_scale: float = 8.0
    """LCM: fed as the w-embedding (w = scale - 1). DDPM, flow: classifier-free guidance by a doubled batch."""
    # The samplers' settings (genrl/samplers/, where each default lives; UNSET: a flag's value when not given): one
    # flag each, refused in one line where the run's sampler has no such setting.
    eta: float = UNSET["eta"]
    """ddim sampler: DDIM eta (> 0 makes every step stochastic)."""
    noise_last_step: bool = UNSET["noise_last_step"]
    """lcm sampler: noise the last step too, as the reference RLCM code does (default: diffusers' noiseless last
    step)."""
    noise_level: float | None = UNSET["noise_level"]
    """flow_sde sampler: the SDE's noise level a (0 < a < sqrt(2); Flow-GRPO's 0.7, the default). cps sampler: eta in
    (0, 1], std = sigma_next sin(eta pi / 2) (default 0.7)."""
    noise_mode: NoiseMode = UNSET["noise_mode"]
    """flow_sde sampler: the noise scale g = a sqrt(sigma / (1 - sigma)) (Flow-GRPO), or a constant a (DanceGRPO)."""
    sde_window: tuple[int, int] | None = UNSET["sde_window"]
    """ddim, flow_sde and cps samplers: steps START to END - 1 (counted from 0, the noisiest) draw noise and are
    trained; the others take the deterministic step (DDIM's eta 0, the ODE's Euler step) and cost no training
    (Flow-GRPO-Fast, MixGRPO). Default: every step."""
    resolution: int | None = None
    """Image size in pixels (default: the model's)."""
    sample_batch_size: int = 16
    """Images per sampling batch (the vector env's size)."""
    async_rewards: bool = False
    """Compute each batch's reward in a background thread while the next batch samples (same results)."""
    batches_per_epoch: int = 2
    """Sampling batches per epoch."""
    group_size: int = 4
    """GRPO: G images per prompt in each sampling batch, advantages relative to their group's statistics;
    groups whose advantages are all zero are dropped from the update. 1: no groups."""
    group_shared_noise: bool = False
    """Groups start from one shared initial noise (their images then differ by the step noise only)."""
    group_std: bool = True
    """Divide group advantages by the group's reward std (GRPO); off: subtract the group mean only."""
    global_std: bool = False
    """With --group-std: divide by the std of all the epoch's rewards instead of the group's (Flow-GRPO's
    global_std), so that a group whose images barely differ gets small advantages, not unit ones."""

    # Policy
    finetune: Literal["lora", "full"] = "lora"
    """Train a LoRA adapter, or every UNet weight."""
    lora_rank: int = 8
    lora_alpha: float = 8.0
    lora_target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS
    logprob_reduction: Literal["mean", "sum"] = "mean"
    """Reduce a step's log-prob over latent dims by mean (as DDPO and RLCM) or sum (the true density)."""

    # Optimisation
    learning_rate: float = 1e-3
    lr_schedule: Literal["constant", "linear"] = "constant"
    """constant, or linear: from --learning-rate down to 0 over --epochs, stepped once an epoch."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    ema_decay: float = 0.0
    """EMA of the trainable weights after every optimizer step (diffusers' EMAModel, with its warm-up); the
    EMA weights sample the evaluation grids and are saved beside each checkpoint. 0: off."""

    # Advantages
    advantages: Literal["per_prompt", "batch"] = "per_prompt"
    """per_prompt: running statistics per prompt (DDPO, RLCM). batch: normalise over the epoch's batch.
    With --group-size > 1 advantages are relative to each group instead."""
    stat_buffer_size: int = 16
    stat_min_count: int = 4

    # Logging and checkpoints
    save_every: int = 5
    """Save a checkpoint every N epochs (and always after the last)."""
    keep_checkpoints: int = 2
    """How many checkpoints to keep on disk."""
    log_images_every: int = 5
    """Write a sample grid every N epochs (and at the first and last)."""
    log_with: tuple[TrackerName, ...] = ("tensorboard",)
    """Experiment trackers (accelerate's log_with) that get the configuration, the metrics and the sample grids, as
    metrics.jsonl and samples/ always do: tensorboard (RUN/tensorboard), wandb (files under RUN/wandb;
    WANDB_MODE=offline works), mlflow (MLFLOW_TRACKING_URI); several: --log-with tensorboard wandb."""

    # Evaluation
    eval_every: int = 10
    """Before training (epoch 0), after every N epochs and after the last, sample a fixed evaluation set (the same
    prompts and noise in every run, whatever --seed) and log eval_reward_mean, eval_reward_std, eval_time_s and
    eval_cpu_time_s (not counted in wall_time_s and cpu_time_s) and, on shapes-world prompts,
    eval_prompt_accuracy. 0: never."""
    eval_size: int = 32
    """Images in the evaluation set (a multiple of --sample-batch-size)."""
    eval_prompts: str | None = None
    """Prompt set the evaluation draws from (default: --prompts)."""
    eval_num_steps: int | None = None
    """Steps the evaluation set is sampled with (default: --num-steps). Flow-GRPO trains with 10 and evaluates with
    40; the family's other options (a flow --sde-window) hold for the evaluation too."""
    eval_ode: bool = False
    """--env flow: sample the evaluation set with the flow ODE (every step the deterministic Euler step, the SDE's
    noise level 0), as Flow-GRPO evaluates; training still samples the SDE. Default: the policy's own steps, with
    the evaluation set's fixed noise."""
    eval_ema: bool = False
    """Sample the evaluation set with the EMA weights (--ema-decay), as Flow-GRPO evaluates: its metrics, the best
    checkpoint's choice and early stopping then judge the EMA. Default: the trained weights."""
    keep_best: bool = False
    """Keep checkpoints/best: the checkpoint of the evaluation with the best eval reward among those that keep
    --accuracy-floor of the starting prompt accuracy (the untrained model at epoch 0 included). Needs --eval-every."""
    accuracy_floor: float = 0.8
    """The share of the starting eval prompt accuracy that an evaluation must keep to count as the best (for
    --keep-best and --early-stop-patience); without prompt accuracy (prompts outside the shapes world) all count."""
    early_stop_patience: int = 0
    """Stop (and save) after this many evaluations in a row without a new best (see --accuracy-floor); 0: never."""

    # The algorithm's own settings: an instance of its Config (``algorithm_config``), parsed as --NAME.FIELD flags
    # by the type ``config_type`` makes for it. None for an algorithm without settings.
    algo_config: tyro.conf.Suppress[Any] = field(default_factory=PPOConfig)

    @property
    def samples_per_epoch(self) -> int:
        return self.sample_batch_size * self.batches_per_epoch

    def validate(self) -> None:
        """Reject impossible combinations with a message that names the fix."""
        for f in dataclasses.fields(self):  # a NaN or inf anywhere ends as NaN weights a few epochs later
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise GenrlError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
        for name in ("adam_beta1", "adam_beta2"):  # torch.optim.AdamW's own domain, checked before any work
            if not 0 <= getattr(self, name) < 1:
                raise GenrlError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        if not self.adam_epsilon > 0 or self.adam_weight_decay < 0:
            raise GenrlError(
                f"--adam-epsilon must be positive and --adam-weight-decay 0 or more, got {self.adam_epsilon} and "
                f"{self.adam_weight_decay}"
            )
        if not 0 <= self.seed < 2**63:  # numpy's SeedSequence takes non-negative integers
            raise GenrlError(f"--seed must be a whole number from 0 to 2**63 - 1, got {self.seed}")
        if not self.lora_target_modules or not all(name.strip() for name in self.lora_target_modules):
            raise GenrlError(
                "--lora-target-modules needs at least one layer name, e.g. the default "
                f"{' '.join(DEFAULT_LORA_TARGETS)}"
            )
        if self.resolution is not None and self.resolution < 1:
            raise GenrlError(f"--resolution must be a positive number of pixels, got {self.resolution}")
        _check_device(self.device)
        check_installed(self.log_with)
        positive = [
            "epochs",
            "num_steps",
            "sample_batch_size",
            "batches_per_epoch",
            "lora_rank",
            "save_every",
            "keep_checkpoints",
            "log_images_every",
            "stat_buffer_size",
        ]
        for name in positive:
            if getattr(self, name) < 1:
                raise GenrlError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.eval_num_steps is not None and self.eval_num_steps < 1:
            raise GenrlError(
                f"--eval-num-steps must be at least 1 (or left out: --num-steps), got {self.eval_num_steps}"
            )
        if self.eval_ema and self.ema_decay == 0:
            raise GenrlError("--eval-ema evaluates the EMA weights; add --ema-decay (Flow-GRPO: 0.9) or drop it")
        if self.eval_ode and self.env != "flow":
            raise GenrlError(f"--eval-ode samples the flow ODE, and --env {self.env} is not a flow model; drop it")
        if self.eval_every < 0 or self.eval_size < 1 or self.eval_size % self.sample_batch_size:
            raise GenrlError(
                f"--eval-every must be 0 or more and --eval-size a positive multiple of --sample-batch-size "
                f"{self.sample_batch_size}, got {self.eval_every} and {self.eval_size}"
            )
        if not 0 <= self.accuracy_floor <= 1 or self.early_stop_patience < 0:
            raise GenrlError(
                f"--accuracy-floor must be in [0, 1] and --early-stop-patience 0 or more, got {self.accuracy_floor} "
                f"and {self.early_stop_patience}"
            )
        if (self.keep_best or self.early_stop_patience) and not self.eval_every:
            what = "--keep-best" if self.keep_best else "--early-stop-patience"
            raise GenrlError(f"{what} picks among evaluations: add --eval-every N (N epochs between evaluations)")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise GenrlError(f"--time-budget-s must be positive, got {self.time_budget_s}")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise GenrlError(
                f"--threads must be from 1 to {MAX_THREADS} (or left out: one per usable core, {usable_cpus()} here), "
                f"got {self.threads}"
            )
        for name in ["learning_rate", "lora_alpha"]:
            if not getattr(self, name) > 0:
                raise GenrlError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        check_sampler_settings(self)
        if self.fsdp and (self.finetune != "lora" or self.compile or self.algo not in ("ppo", "reinforce", "dpg")):
            raise GenrlError(
                f"--fsdp shards the frozen weights under LoRA for PPO, REINFORCE and DPG (not yet with full "
                f"fine-tuning, --compile or other algorithms); this run has --finetune {self.finetune} --algo "
                f"{self.algo}{' --compile' if self.compile else ''}: drop --fsdp or change those"
            )
        self._validate_extensions()

    def _validate_extensions(self) -> None:
        """Groups and EMA; the algorithm checks its own settings (``validate`` of its class)."""
        if self.group_size < 1 or self.sample_batch_size % self.group_size:
            raise GenrlError(
                f"--group-size {self.group_size} must be at least 1 and divide --sample-batch-size "
                f"{self.sample_batch_size}"
            )
        if not 0 <= self.ema_decay < 1:
            raise GenrlError(f"--ema-decay must be in [0, 1), got {self.ema_decay} (0 turns EMA off)")
        config = settings_class(self.algo)
        if config is not None and not isinstance(self.algo_config, config):
            raise GenrlError(f"--algo {self.algo} takes settings of type {config.__name__}, got {self.algo_config!r}")
        validate = getattr(make_algorithm(self.algo, self.algo_config), "validate", None)
        if validate is None:
            return
        try:
            validate(self)
        except GenrlError:
            raise
        except (Exception, SystemExit) as exc:  # a plug-in's check, as its update: one line; a built-in's is a bug
            if is_builtin(self.algo):
                raise
            raise GenrlError(
                f"algorithm '{self.algo}' refused the settings: {describe(exc)}; fix them or the algorithm's validate"
            ) from exc


def _check_device(device: str) -> None:
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise GenrlError(f"--device '{device}' is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cpu":
        return
    backend = getattr(torch, parsed.type, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise GenrlError(f"--device {device}: this torch or machine has no {parsed.type} device; use --device cpu")
    if parsed.index is not None and parsed.index >= backend.device_count():
        count = backend.device_count()
        raise GenrlError(f"--device {device}: this machine has {count} {parsed.type} devices; pick another index")


# --------------------------------------------------------------------------------------------------
# The algorithm's settings: its own Config, under its own name on the command line and in config.json
# --------------------------------------------------------------------------------------------------
# The run's own fields: every field but the algorithm's settings, which config.json keeps under their own name.
RUN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "algo_config")


def settings_class(algo: str) -> type | None:
    """The Config class of ``algo``'s settings; None for an algorithm without settings."""
    config = getattr(algorithm_class(algo), "Config", None)
    name = settings_name(algo)
    if config is not None and name in RUN_FIELDS:  # config.json's "epochs": {...} would replace the run's epochs
        raise GenrlError(
            f"algorithm '{algo}': its settings would be named '{name}', as the run's own --{name.replace('_', '-')}, "
            "and overwrite it in config.json; rename the class (or its entry point)"
        )
    return config


@functools.cache
def config_type(algo: str) -> type:
    """What tyro parses for ``--algo algo``: ``TrainConfig`` with the algorithm's Config as flags ``--NAME.FIELD``
    (``settings_name``), so that its fields, a plug-in's included, are listed by ``--help`` with their docstrings."""
    config = settings_class(algo)
    if config is None:
        return TrainConfig
    settings = Annotated[config, tyro.conf.arg(name=settings_name(algo))]
    return dataclasses.make_dataclass(
        "TrainConfig", [("algo_config", settings, dataclasses.field(default_factory=config))], bases=(TrainConfig,)
    )


def as_type(cfg: TrainConfig, cls: type) -> TrainConfig:
    """The same values as an instance of ``cls`` (``TrainConfig`` or a ``config_type``)."""
    return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)})


def replace_config(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    """``cfg`` with ``changes``: the run's fields, ``algo``, and the algorithm's own settings by name. A new ``algo``
    keeps the settings its Config shares with the old one (a preset's batch sizes), its defaults for the rest."""
    algo = changes.pop("algo", cfg.algo)
    run = {name: changes.pop(name) for name in list(changes) if name in RUN_FIELDS}
    config = settings_class(algo)
    names = {f.name for f in dataclasses.fields(config)} if config is not None else set()
    if set(changes) - names:
        raise GenrlError(f"{sorted(set(changes) - names)} are settings of neither the run nor algorithm '{algo}'")
    current = cfg.algo_config
    carried = {n: getattr(current, n) for n in names if current is not None and hasattr(current, n)}
    settings = config(**{**carried, **changes}) if config is not None else None
    values = {name: getattr(cfg, name) for name in RUN_FIELDS}
    return TrainConfig(**{**values, **run, "algo": algo, "algo_config": settings})


def setting(cfg: TrainConfig, name: str) -> Any:
    """A field of the run or of its algorithm's settings, by name (``learning_rate``, ``clip_range``)."""
    return getattr(cfg, name) if name in RUN_FIELDS else getattr(cfg.algo_config, name)
