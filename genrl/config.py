"""The training configuration: one flat dataclass (its docstrings are the CLI's help) and the presets.

A preset fills every field; flags given on the command line override it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro

from genrl.algos.ppo import PPOConfig
from genrl.algos.registry import algorithm_class, is_builtin, make_algorithm, settings_name
from genrl.cpu import MAX_THREADS, usable_cpus
from genrl.errors import GenrlError
from genrl.families import FamilyName, family
from genrl.families.flow import FLOW_GRPO_LORA_TARGETS
from genrl.plugins import describe
from genrl.precision import MixedPrecision

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
    an SD3-style model)."""
    algo: str = "ppo"
    """ppo: clipped PPO (RLCM, DDPO). reinforce: one unclipped pass. dpg: backpropagate a differentiable reward
    through the sampling chain (AlignProp, DRaFT-K). Or your own: 'package.module:Class', or the name of a
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

    # Sampling
    num_steps: int = 4
    """Inference steps H (LCM: 1-50 on the skipping-step schedule; DDPM: DDIM steps; flow: SDE steps)."""
    guidance_scale: float = 8.0
    """LCM: fed as the w-embedding (w = scale - 1). DDPM, flow: classifier-free guidance by a doubled batch."""
    eta: float = 1.0
    """DDPM only: DDIM eta (> 0 makes every step stochastic)."""
    noise_last_step: bool = False
    """LCM only: noise the last step too, as the reference RLCM code does (default: diffusers' noiseless last step)."""
    noise_level: float = 0.7
    """Flow only: the SDE's noise level a (0 < a < sqrt(2); Flow-GRPO's 0.7; 0 would be the deterministic Euler
    step)."""
    noise_mode: Literal["flow_grpo", "constant"] = "flow_grpo"
    """Flow only: the noise scale g = a sqrt(sigma / (1 - sigma)) (Flow-GRPO), or a constant a (DanceGRPO)."""
    sde_window: tuple[int, int] | None = None
    """Flow only: steps START to END - 1 (counted from 0, the noisiest) take the SDE and are trained; the others take
    the ODE's deterministic Euler step and cost no training (Flow-GRPO-Fast, MixGRPO). Default: every step."""
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
        family(self.env).validate(self)
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
        config = _config_class(self.algo)
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


# --------------------------------------------------------------------------------------------------
# The algorithm's settings: its own Config, under its own name on the command line and in config.json
# --------------------------------------------------------------------------------------------------
_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "algo_config")


def _config_class(algo: str) -> type | None:
    config = getattr(algorithm_class(algo), "Config", None)
    name = settings_name(algo)
    if config is not None and name in _RUN_FIELDS:  # config.json's "epochs": {...} would replace the run's epochs
        raise GenrlError(
            f"algorithm '{algo}': its settings would be named '{name}', as the run's own --{name.replace('_', '-')}, "
            "and overwrite it in config.json; rename the class (or its entry point)"
        )
    return config


@functools.cache
def config_type(algo: str) -> type:
    """What tyro parses for ``--algo algo``: ``TrainConfig`` with the algorithm's Config as flags ``--NAME.FIELD``
    (``settings_name``), so that its fields, a plug-in's included, are listed by ``--help`` with their docstrings."""
    config = _config_class(algo)
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
    run = {name: changes.pop(name) for name in list(changes) if name in _RUN_FIELDS}
    config = _config_class(algo)
    names = {f.name for f in dataclasses.fields(config)} if config is not None else set()
    if set(changes) - names:
        raise GenrlError(f"{sorted(set(changes) - names)} are settings of neither the run nor algorithm '{algo}'")
    current = cfg.algo_config
    carried = {n: getattr(current, n) for n in names if current is not None and hasattr(current, n)}
    settings = config(**{**carried, **changes}) if config is not None else None
    values = {name: getattr(cfg, name) for name in _RUN_FIELDS}
    return TrainConfig(**{**values, **run, "algo": algo, "algo_config": settings})


def setting(cfg: TrainConfig, name: str) -> Any:
    """A field of the run or of its algorithm's settings, by name (``learning_rate``, ``clip_range``)."""
    return getattr(cfg, name) if name in _RUN_FIELDS else getattr(cfg.algo_config, name)


def config_to_json(cfg: TrainConfig) -> dict:
    """config.json: the run's fields, and the algorithm's settings under its name (``"ppo": {...}``)."""
    data = {name: getattr(cfg, name) for name in _RUN_FIELDS}
    if cfg.algo_config is not None:
        data[settings_name(cfg.algo)] = dataclasses.asdict(cfg.algo_config)
    return json.loads(json.dumps(data, default=str))


# Fields added after runs were saved without them, and the value that reproduces those runs.
_ADDED_SINCE = {
    **{"lr_schedule": "constant", "eval_every": 0, "eval_size": 32, "eval_prompts": None},
    **{"mixed_precision": "no", "allow_tf32": True, "threads": None},  # threads: chosen again for the resume
    **{"compile": False},
    **{"keep_best": False, "accuracy_floor": 0.8, "early_stop_patience": 0},
    **{"noise_level": 0.7, "noise_mode": "flow_grpo"},
    **{"sde_window": None, "eval_num_steps": None, "global_std": False},
}
# Settings that config.json held among the run's fields before each algorithm owned its own, and their names there.
_FLAT_ALGORITHM_FIELDS = {
    **{name: name for name in ("train_batch_size", "gradient_accumulation_steps", "steps_per_forward")},
    **{name: name for name in ("inner_epochs", "clip_range", "adv_clip_max", "max_grad_norm", "kl_coef")},
    "dpg_truncation": "truncation",
    "gradient_checkpointing": "gradient_checkpointing",
}


def read_config(path: Path) -> TrainConfig:
    """A run's saved config.json; every field must be there, as a resume has to repeat the run exactly."""
    if not path.is_file():
        raise GenrlError(f"--resume {path.parent}: no config.json there; pass a run directory made by genrl.train")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise GenrlError(f"{path} is unreadable ({exc}); restore it or start a new run") from None
    if not isinstance(data, dict):
        raise GenrlError(f"{path} holds {type(data).__name__}, not a configuration; restore it or start a new run")
    algo = data.get("algo")
    if not isinstance(algo, str):
        raise GenrlError(f"{path}: algo is {json.dumps(algo)[:60]}, not a string; restore it or start a new run")
    name = settings_name(algo)
    flat = {key: data.pop(key) for key in list(data) if key in _FLAT_ALGORITHM_FIELDS and key != name}
    settings = data.pop(name, None)
    config = _config_class(algo)
    if settings is None and config is not None and flat:  # written before the algorithm owned its settings
        known = {f.name for f in dataclasses.fields(config)}
        settings = {_FLAT_ALGORITHM_FIELDS[k]: v for k, v in flat.items() if _FLAT_ALGORITHM_FIELDS[k] in known}
    data = {**_ADDED_SINCE, **data}  # runs saved before a field existed ran as its value here says
    values = _checked_fields(path, data, TrainConfig, _RUN_FIELDS, "")
    if config is not None:
        if not isinstance(settings, dict):
            raise GenrlError(f"{path} has no '{name}' object of algorithm settings; restore it or start a new run")
        fields = tuple(f.name for f in dataclasses.fields(config))
        values["algo_config"] = config(**_checked_fields(path, settings, config, fields, f"{name}."))
    return TrainConfig(**values)


def _checked_fields(path: Path, data: dict, cls: type, fields: tuple[str, ...], prefix: str) -> dict:
    """``data``'s values of ``cls``'s ``fields``, checked against their types and converted from JSON; every field
    must be there, as a resume has to repeat the run exactly."""
    unknown, missing = set(data) - set(fields), set(fields) - set(data)
    if unknown or missing:
        what = f"unknown fields {sorted(unknown)}" if unknown else f"no fields {sorted(missing)}"
        where = f" in '{prefix[:-1]}'" if prefix else ""
        raise GenrlError(f"{path} has {what}{where}; was it written by another version? Restore it or start a new run")
    hints = typing.get_type_hints(cls, include_extras=False)
    values = {}
    for name in fields:
        if not _json_fits(data[name], hints[name]):
            raise GenrlError(
                f"{path}: {prefix}{name} is {json.dumps(data[name])[:60]}, not {_describe_type(hints[name])}; restore "
                "it (the run must repeat its configuration) or start a new run"
            )
        values[name] = _from_json(data[name], hints[name])
    return values


def _from_json(value: Any, hint: Any) -> Any:
    """A JSON value as the field's type holds it: lists as tuples, strings as paths."""
    if value is None:
        return None
    if typing.get_origin(hint) is tuple:
        return tuple(value)
    if hint is Path or Path in typing.get_args(hint):
        return Path(value)
    return value


def _json_fits(value: object, hint: object) -> bool:
    """Whether a config.json value is what ``config_to_json`` writes for a field of type ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return value in args and not isinstance(value, bool)
    if origin in (typing.Union, types.UnionType):
        return any(_json_fits(value, arg) for arg in args)
    if origin is tuple:  # tuple[str, ...], written as a JSON list
        return isinstance(value, list) and all(_json_fits(v, args[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # JSON writes 1.0 as 1.0, but a hand edit may write 1
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint in (str, Path):
        return isinstance(value, str)
    return False


def _describe_type(hint: object) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe_type(a) for a in args)
    if origin is tuple:
        return "a list of strings"
    names = {type(None): "null", bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    return names.get(hint, "a path")


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


def with_alignment_term(reward: str, weight: float) -> str:
    """``reward`` plus ``weight`` times the shapes alignment reward: a composite that pays for keeping the shapes
    (each part is logged on its own, the task's reward among them)."""
    return f"{reward}=1,shapes_alignment={weight}"


def _preset(**fields: Any) -> TrainConfig:
    """The field defaults with ``fields``: the run's, ``algo`` and its settings, by name."""
    return replace_config(TrainConfig(), **fields)


# RLCM: the paper's Table 1 (per GPU; it used 4 GPUs, 3 for alignment) as the official code runs it
# (github.com/Owen-Oertell/rlcm: lcm_rl_pytorch/conf/task/*.yaml, core/ppo_training_loop.py, scripts/main.py).
# Its loop: for each of num_epochs epochs, batches_per_epoch rounds of [sample num_sample_iters batches of
# sample_batch_size_per_gpu, then train on them: num_inner_epochs 1, minibatches of train_batch_size_per_gpu,
# gradient_accumulation_steps of them per optimizer step]; every yaml makes those exactly one optimizer step per
# round, taken after all its minibatches, so every PPO ratio is 1. A genrl epoch samples all its batches and then
# trains on them, so one official round is one epoch here: batches_per_epoch = num_sample_iters,
# epochs = num_epochs x batches_per_epoch, and train_batch_size x gradient_accumulation_steps = the epoch's
# samples (tests/test_presets.py). Reward queries and optimizer steps per run are the official ones; so are
# the per-prompt statistics, which it updates once a round.
# Also as the official code: torch.optim.Adam, no weight decay; every one of the H steps noised and trained (its
# LCMScheduler.step noises the last step too); a checkpoint every 10 of its epochs (save_interval).
# fp16 mixed precision (accelerate's, with the LoRA weights in fp32), as here. Not representable here: its LinearLR
# schedule (lr to 0 over 3 x num_epochs, stepped once an official epoch, so the lr ends at 2/3 of its start).
_RLCM_ROUNDS = 10  # the yaml's batches_per_epoch (Table 1's "Batches Per Epoch"): rounds per official epoch
_RLCM_JPEG = dict(
    model="SimianLuo/LCM_Dreamshaper_v7",
    env="lcm",
    algo="ppo",
    prompts="imagenet_animals",  # dataset ComplexAnimals: the ImageNet classes 0-397
    finetune="lora",
    num_steps=8,
    guidance_scale=8.0,
    noise_last_step=True,
    sample_batch_size=4,
    batches_per_epoch=1,  # num_sample_iters
    train_batch_size=2,
    gradient_accumulation_steps=2,
    inner_epochs=1,
    learning_rate=1e-4,
    adam_weight_decay=0.0,
    clip_range=1e-4,
    adv_clip_max=10.0,
    max_grad_norm=5.0,
    stat_buffer_size=16,
    stat_min_count=16,
    group_size=1,  # PerPromptStatTracker
    lora_rank=16,
    lora_alpha=32.0,
    epochs=100 * _RLCM_ROUNDS,
    save_every=10 * _RLCM_ROUNDS,
    mixed_precision="fp16",
)
# DDPO: ddpo-pytorch's config/dgx.py (per GPU, 8 GPUs; 6 for alignment), whose hyperparameters the RLCM paper
# ran DDPO with (section 5), on Dreamshaper v7 rather than dgx.py's CompVis/stable-diffusion-v1-4. The rest is
# config/base.py: 50 DDIM steps, eta 1, guidance 5, AdamW (lr 3e-4, weight decay 1e-4), grad clip 1, advantage
# clip 5, clip range 1e-4, 1 inner epoch, LoRA rank 4 (diffusers' LoRAAttnProcessor default, scale 1).
# Its epochs make several optimizer steps, as DDPO does: (sample batch x batches) / (train batch x accumulation).
_DDPO_JPEG = dict(
    model="Lykon/dreamshaper-7",
    env="ddpm",
    algo="ppo",
    prompts="imagenet_animals",
    finetune="lora",
    num_steps=50,
    eta=1.0,
    guidance_scale=5.0,
    sample_batch_size=8,
    batches_per_epoch=4,
    train_batch_size=4,
    gradient_accumulation_steps=2,
    inner_epochs=1,
    learning_rate=3e-4,
    adam_weight_decay=1e-4,
    clip_range=1e-4,
    adv_clip_max=5.0,
    max_grad_norm=1.0,
    stat_buffer_size=16,
    stat_min_count=16,
    group_size=1,  # PerPromptStatTracker
    lora_rank=4,
    lora_alpha=4.0,
    epochs=100,
    save_every=1,
    mixed_precision="fp16",  # base.py; allow_tf32 True, the default here too
)

# Flow-GRPO: github.com/yifan123/flow_grpo, config/base.py and config/grpo.py general_ocr_sd3_1gpu(), its one-GPU layout
# (the others spread each prompt's images over 4-32 GPUs): per epoch 8 sampling batches of 8 images, 8 of one prompt
# (num_image_per_prompt), trained in minibatches of 8 with 4 of them per optimizer step, so 2 steps an epoch; SD3.5
# Medium at 512 px, 10 SDE steps at noise level 0.7, guidance 4.5, beta 0.04 (the KL to the frozen model, the same
# closed form as here: the squared mean difference over 2 std^2, averaged over the latent), AdamW (lr 3e-4, weight
# decay 1e-4), grad clip 1, advantage clip 5, clip range 1e-4; scripts/train_sd3.py: LoRA rank 32, alpha 64 on both
# streams of every joint attention, fp16. PickScore's config has beta 0.01: so has the aesthetic preset here.
# Not representable here: its evaluation samples the ODE (here the policy's SDE with the evaluation set's fixed noise),
# it trains on the first 9 of the 10 noised steps (timestep_fraction 0.99; here all 10), samples its evaluations
# from an EMA of the LoRA (decay 0.9 every 8 steps), tokenizes 128 T5 tokens (here diffusers' 256), and runs until
# stopped (here 1000 epochs).
_FLOW_GRPO = dict(
    model="stabilityai/stable-diffusion-3.5-medium",
    env="flow",
    algo="ppo",
    finetune="lora",
    num_steps=10,
    eval_num_steps=40,
    guidance_scale=4.5,
    noise_level=0.7,
    noise_mode="flow_grpo",
    resolution=512,
    sample_batch_size=8,
    batches_per_epoch=8,
    group_size=8,
    group_std=True,
    global_std=True,
    train_batch_size=8,
    gradient_accumulation_steps=4,
    inner_epochs=1,
    learning_rate=3e-4,
    adam_weight_decay=1e-4,
    clip_range=1e-4,
    adv_clip_max=5.0,
    max_grad_norm=1.0,
    kl_coef=0.04,
    lora_rank=32,
    lora_alpha=64.0,
    lora_target_modules=FLOW_GRPO_LORA_TARGETS,
    mixed_precision="fp16",
    epochs=1000,
    save_every=60,
    eval_every=60,
)

# CPU scale on the embedded shapes models (the benchmark's; the default run is shapes-quickstart). Each method keeps
# its published update structure: RLCM Table 1's, one optimizer step per sampling round of 32 images (on-policy),
# Adam, clip range 1e-4, advantage clip 10, grad clip 5; DDPO ddpo-pytorch's, several optimizer steps per epoch of 64
# images, AdamW, clip range 1e-4, advantage clip 5, grad clip 1. The same for both: LoRA rank 8 on the attention
# projections, and per-prompt advantages from 4 images of each prompt in every sampling batch (--group-size 4: its
# statistics exist from the first epoch, where a running per-prompt tracker over 456 prompts never reaches its
# min_count). The settings in _SHAPES_SWEPT are the winners of `python -m benchmarks.sweep` (its table:
# docs/benchmark/sweep/sweep.md; its rule: docs/benchmark/PROTOCOL.md): the fewest reward queries to a gain of 0.05
# with 80% of the prompt accuracy kept.
_SHAPES = {
    "rlcm": dict(env="lcm", num_steps=4, guidance_scale=8.0),
    "ddpo": dict(
        env="ddpm",
        num_steps=20,
        guidance_scale=5.0,
        batches_per_epoch=4,
        gradient_accumulation_steps=8,  # an update batch of 64: one optimizer step per epoch
        adam_weight_decay=1e-4,
        adv_clip_max=5.0,
        max_grad_norm=1.0,
    ),
    # Flow-GRPO's structure at this scale (docs/benchmark/PROTOCOL.md, the addendum): 10 SDE steps, guidance 4.5, two
    # optimizer steps an epoch, AdamW, advantage clip 5, grad clip 1, LoRA on both streams of every joint attention.
    "flow": dict(
        env="flow",
        num_steps=10,
        guidance_scale=4.5,
        gradient_accumulation_steps=2,
        adam_weight_decay=1e-4,
        adv_clip_max=5.0,
        max_grad_norm=1.0,
        lora_target_modules=FLOW_GRPO_LORA_TARGETS,
    ),
}
_SHAPES_SWEPT = {  # benchmarks/sweep.py at the benchmark's budget, sweep seeds 0-1 (docs/benchmark/sweep/sweep.md)
    # 2/2 seeds at the target after 64 and 192 queries; it wrecks the pictures after.
    ("rlcm", "jpeg"): dict(learning_rate=3e-3),
    # 2/2 at 192 and 384 queries; 1e-2, KL 0.1, the alignment term and the published structure reach it on 1 or 0.
    ("ddpo", "jpeg"): dict(learning_rate=3e-3),
    ("rlcm", "alignment"): dict(learning_rate=3e-4),
    ("dpg", "alignment"): dict(learning_rate=1e-3),
    # Not swept: on alignment the suite only evaluates DDPO's untrained model; its JPEG settings.
    ("ddpo", "alignment"): dict(learning_rate=3e-3),
    # The protocol's addendum. No setting reaches the target on compression (0/2 each); 1e-3 has the largest final
    # gain (+0.019), 3e-3 lowers the reward and the prompt accuracy.
    ("flow", "jpeg"): dict(learning_rate=1e-3),
    # 2/2 seeds at 192 and 512 queries; 1e-3 without the KL and the SDE window reach it on 2/2 later.
    ("flow", "alignment"): dict(learning_rate=1e-3, kl_coef=0.04),
}


def _shapes_preset(name: str, reward: str, method: dict, swept: dict) -> TrainConfig:
    """A shapes preset: the method's structure and its sweep winner, whose ``alignment_term`` (a weight) adds the
    shapes alignment reward to the task's."""
    swept = dict(swept)
    weight = swept.pop("alignment_term", 0.0)
    return _preset(preset=name, reward=with_alignment_term(reward, weight) if weight else reward, **method, **swept)


# The random-weight tiny pipelines barely respond to a LoRA: these train every weight, with a large step.
_TINY = dict(
    model="tiny",
    prompts="simple_animals",
    finetune="full",
    learning_rate=3e-2,
    clip_range=0.2,
    adv_clip_max=5.0,
    max_grad_norm=1.0,
    adam_weight_decay=1e-4,
    group_size=1,
    gradient_accumulation_steps=1,
)

# Table 1's aesthetic and prompt-alignment columns (aesthetic.yaml, prompt_image_alignment.yaml) differ from the
# JPEG tasks in these fields only.
_RLCM_AESTHETIC = {
    **_RLCM_JPEG,
    "prompts": "simple_animals",
    "sample_batch_size": 8,
    "gradient_accumulation_steps": 4,
    "stat_buffer_size": 32,
    "lora_rank": 8,
    "lora_alpha": 8.0,
}
# Table 1's "Number of Sample Inner Epochs" 5 is the yaml's num_sample_iters: 5 sampling batches before each
# optimizer step (2 x 20 = 40 = 5 x 8 images), with num_inner_epochs 1. The yaml's lr is 4e-4, Table 1's 1e-4;
# this follows the table (and the sweep range [1e-5, 3e-4] of the paper's appendix B.2, which 4e-4 is outside).
_RLCM_ALIGNMENT_ROUNDS = 6  # the yaml's batches_per_epoch
_RLCM_ALIGNMENT = {
    **_RLCM_JPEG,
    "prompts": "animals_activities",
    "sample_batch_size": 8,
    "batches_per_epoch": 5,  # num_sample_iters
    "gradient_accumulation_steps": 20,
    "num_steps": 16,
    "epochs": 118 * _RLCM_ALIGNMENT_ROUNDS,
    "save_every": 10 * _RLCM_ALIGNMENT_ROUNDS,
    "inner_epochs": 1,
    "stat_buffer_size": 32,
}
# dgx.py aesthetic(): 200 epochs, (8 x 4) / (4 x 4) = 2 optimizer steps an epoch.
_DDPO_AESTHETIC = {
    **_DDPO_JPEG,
    "prompts": "simple_animals",
    "gradient_accumulation_steps": 4,
    "epochs": 200,
    "stat_buffer_size": 32,
}
# dgx.py prompt_image_alignment(): 6 GPUs (2 more served LLaVA), 200 epochs, (8 x 6) / (4 x 6) = 2 optimizer
# steps an epoch; prompts "a/an {simple animal} {activity}" (simple_animals.txt, activities.txt).
_DDPO_ALIGNMENT = {
    **_DDPO_JPEG,
    "prompts": "animals_activities",
    "batches_per_epoch": 6,
    "gradient_accumulation_steps": 6,
    "epochs": 200,
    "stat_buffer_size": 32,
}
# The paper's prompt-alignment reward (LLaVA + BERTScore) ran as a server on its own GPU; so does this one:
#   python -m genrl.rewards.serve --reward vlm_bertscore --port 8000
_ALIGNMENT_SERVER = "http://127.0.0.1:8000"
_RLCM_ALIGNMENT["async_rewards"] = _DDPO_ALIGNMENT["async_rewards"] = True

PRESETS: dict[str, TrainConfig] = {
    "rlcm-aesthetic": _preset(preset="rlcm-aesthetic", reward="aesthetic", **_RLCM_AESTHETIC),
    "rlcm-alignment": _preset(preset="rlcm-alignment", reward=_ALIGNMENT_SERVER, **_RLCM_ALIGNMENT),
    "ddpo-aesthetic": _preset(preset="ddpo-aesthetic", reward="aesthetic", **_DDPO_AESTHETIC),
    "ddpo-alignment": _preset(preset="ddpo-alignment", reward=_ALIGNMENT_SERVER, **_DDPO_ALIGNMENT),
    "rlcm-compression": _preset(preset="rlcm-compression", reward="jpeg_compressibility", **_RLCM_JPEG),
    "rlcm-incompression": _preset(preset="rlcm-incompression", reward="jpeg_incompressibility", **_RLCM_JPEG),
    "ddpo-compression": _preset(preset="ddpo-compression", reward="jpeg_compressibility", **_DDPO_JPEG),
    "ddpo-incompression": _preset(preset="ddpo-incompression", reward="jpeg_incompressibility", **_DDPO_JPEG),
    **{
        f"shapes-{method}-{task}": _shapes_preset(
            f"shapes-{method}-{task}",
            reward,
            _SHAPES[method],
            _SHAPES_SWEPT[method, "alignment" if task == "alignment" else "jpeg"],
        )
        for method in ("rlcm", "ddpo", "flow")
        for task, reward in (
            ("compression", "jpeg_compressibility"),
            ("incompression", "jpeg_incompressibility"),
            ("alignment", "shapes_alignment"),
        )
    },
    # RLCM by reward backpropagation through its 4 steps (DPG needs no advantages, so no groups).
    "shapes-dpg-alignment": _shapes_preset(
        "shapes-dpg-alignment",
        "shapes_alignment",
        {**_SHAPES["rlcm"], "algo": "dpg", "group_size": 1},
        _SHAPES_SWEPT["dpg", "alignment"],
    ),
    # The default run: RLCM on JPEG compressibility, 10 epochs at a learning rate that keeps the shapes throughout
    # (seeds 0-2 end at 95%, 82% and 105% of their starting prompt accuracy). The benchmark's shapes-rlcm-compression
    # reaches the protocol's target sooner, then wrecks the pictures: use it with --keep-best.
    "shapes-quickstart": _preset(
        preset="shapes-quickstart", reward="jpeg_compressibility", **_SHAPES["rlcm"], learning_rate=1e-3
    ),
    **{
        f"flow-grpo-{task}": _preset(
            preset=f"flow-grpo-{task}", reward=reward, prompts=prompts, **{**_FLOW_GRPO, "kl_coef": beta}
        )
        for task, reward, prompts, beta in (
            ("compression", "jpeg_compressibility", "imagenet_animals", 0.04),
            ("incompression", "jpeg_incompressibility", "imagenet_animals", 0.04),
            ("aesthetic", "aesthetic", "simple_animals", 0.01),  # pickscore_sd3's beta
        )
    },
    "flow-grpo-alignment": _preset(
        preset="flow-grpo-alignment",
        reward=_ALIGNMENT_SERVER,
        prompts="animals_activities",
        async_rewards=True,
        **_FLOW_GRPO,
    ),
    "tiny-compression": _preset(preset="tiny-compression", **_TINY),
    "tiny-ddpo-compression": _preset(
        preset="tiny-ddpo-compression", env="ddpm", num_steps=10, guidance_scale=5.0, **_TINY
    ),
}
DEFAULT_PRESET = "shapes-quickstart"
assert PRESETS[DEFAULT_PRESET] == TrainConfig(), "the field defaults are the default preset"


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise GenrlError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
