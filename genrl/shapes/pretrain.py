"""``python -m genrl.shapes.pretrain``: build the embedded shapes models from scratch.

    python -m genrl.shapes.pretrain                 # every stage, resuming where the work directory left off
    python -m genrl.shapes.pretrain evaluate        # the quality figures of the shipped (or --out-dir) models
    python -m genrl.shapes.pretrain --scale toy     # a one-minute end-to-end run (what the test does)

Stages, in order, each checkpointed every ``--checkpoint-every`` steps into ``--work-dir`` and resumed from there:
  vae         AutoencoderKL, 64x64x3 <-> 16x16x4, MSE + a small KL
  classifier  the reward model: every attribute of an image, trained on renders and their VAE reconstructions
  teacher     text encoder + epsilon-prediction UNet on VAE latents, SD's schedule, 10% prompt dropout, EMA
  lcm         latent consistency distillation from the teacher (w sampled and embedded, DDIM solver on the
              50-step skipping grid spanning 2 of its intervals a step, EMA target network, pseudo-Huber)
  flow        an SD3-style MMDiT trained with the rectified-flow objective on the same latents and prompts, with the
              teacher's VAE and text encoder frozen (from the work directory, or else from --out-dir's teacher, so it
              can be trained on the shipped models alone); EMA; writes --out-dir/flow when it finishes
  export      pipeline folders (StableDiffusionPipeline, LatentConsistencyModelPipeline, and
              StableDiffusion3Pipeline if the flow stage finished) and the classifier
"""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import contextlib
import copy
import dataclasses
import json
import math
import shutil
import sys
import time
import unittest.mock
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import tyro
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from genrl.errors import GenrlError
from genrl.samplers.ddim import ddim_step
from genrl.samplers.lcm import lcm_step
from genrl.shapes import components, shipped_dir
from genrl.shapes.world import ATTRIBUTES, sample_dataset

SHIPPED = shipped_dir()
Stage = Literal["all", "vae", "classifier", "teacher", "lcm", "flow", "export", "evaluate"]
STAGES = ("vae", "classifier", "teacher", "lcm", "flow", "export")


@dataclass
class PretrainConfig:
    stage: tyro.conf.Positional[Stage] = "all"
    """Which stage to run; 'all' runs every stage not yet finished, then evaluates."""
    work_dir: Path = Path("pretrain-work")
    """Checkpoints and caches; a rerun resumes from here."""
    out_dir: Path = SHIPPED
    """Where export writes the pipeline folders (default: inside the package) and evaluate reads them."""
    scale: Literal["full", "toy"] = "full"
    """toy: a few steps of everything, for a quick end-to-end check."""
    seed: int = 0
    checkpoint_every: int = 250
    """Steps between checkpoints within a stage."""

    vae_steps: int = 2000
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    vae_scale_images: int = 256
    """Images whose latents' std sets the VAE's scaling_factor (SD's convention: latents of unit variance)."""

    classifier_steps: int = 1200
    classifier_batch: int = 64
    classifier_lr: float = 2e-3

    latent_dataset: int = 30000
    """Images rendered and encoded once for teacher and LCM training."""
    teacher_steps: int = 14000
    teacher_batch: int = 64
    teacher_lr: float = 5e-4
    teacher_ema: float = 0.999
    prompt_dropout: float = 0.1

    lcm_steps: int = 12000
    lcm_batch: int = 32
    lcm_lr: float = 2e-4
    lcm_w_min: float = 2.0
    """Range of the guidance weight w (guidance scale - 1) that the LCM learns to take as input."""
    lcm_w_max: float = 9.0
    lcm_target_ema: float = 0.95
    lcm_solver_span: int = 2
    """Intervals of the 50-step skipping grid that one teacher DDIM step spans (t -> t - span * 20). Fewer,
    longer solver steps chain fewer consistency targets from t = 999 down to the boundary, so less of the
    target network's error piles up where colour and count are decided; 2 beat 1 and 4 here."""
    lcm_loss: Literal["l2", "huber"] = "huber"
    """Distance between the student's and the target's consistency outputs (see ``consistency_distance``)."""
    lcm_huber_c: float = 0.001
    """c of the pseudo-Huber distance, in latent units."""

    flow_steps: int = 20000
    """The shipped flow model took 14000 steps of a 14000-step schedule, then was resumed with this length (the cosine
    recomputed for it): at 14000 its 40-step accuracy was 88.7%, short of the 90% bar."""
    flow_batch: int = 64
    flow_lr: float = 5e-4
    flow_ema: float = 0.999

    eval_images: int = 256
    """Images per figure in evaluate: each prompt accuracy and the VAE's PSNR; the classifier's accuracies take 4x as
    many."""
    grid: Path | None = None
    """evaluate also writes a sample grid (teacher 50 steps; LCM 1, 2, 4, 8 steps) to this PNG."""

    def scaled(self) -> PretrainConfig:
        if self.scale == "full":
            return self
        return dataclasses.replace(
            self,
            checkpoint_every=2,
            vae_steps=3,
            vae_batch=4,
            classifier_steps=3,
            classifier_batch=8,
            latent_dataset=32,
            teacher_steps=3,
            teacher_batch=8,
            lcm_steps=3,
            lcm_batch=4,
            flow_steps=3,
            flow_batch=4,
            eval_images=4,
            vae_scale_images=16,
        )


# --------------------------------------------------------------------------------------------------
# Resumable training loop shared by the stages
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Average:
    """A module that follows the exponential moving average of another's weights, ``source`` (a key of the
    loop's modules), at a fixed ``decay``; in the first ``copy_steps`` steps, while the weights move fast, it is a
    copy of them instead."""

    source: str
    decay: float
    copy_steps: int = 0


def _train_loop(
    name: str,
    cfg: PretrainConfig,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    steps: int,
    step_fn: Callable[[int], dict[str, float]],
    averages: dict[str, Average] | None = None,
) -> None:
    """Runs ``step_fn(step)`` for step in [start, steps), checkpointing ``modules`` and the optimizer atomically.
    After each step, each module named in ``averages`` takes its average's next value (diffusers' EMAModel). The
    module holds the averaged weights, so a checkpoint (weights and step) is all a resumed average needs."""
    folder = cfg.work_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / "state.pt"
    base_lrs = [group["lr"] for group in optimizer.param_groups]  # before a resumed state overwrites them
    start = 0
    if state_path.exists():
        state = torch.load(state_path, weights_only=True)
        for key, module in modules.items():
            module.load_state_dict(state["modules"][key])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
        print(f"{name}: resuming at step {start}", flush=True)

    def save(step: int) -> None:
        tmp = folder / "state.pt.tmp"
        state = {
            "modules": {k: m.state_dict() for k, m in modules.items()},
            "optimizer": optimizer.state_dict(),
            "step": step,
        }
        torch.save(state, tmp)
        os.replace(tmp, state_path)

    log = (folder / "log.jsonl").open("a")
    bar = tqdm(range(start, steps), desc=name, initial=start, total=steps, mininterval=5, disable=None)
    began = time.perf_counter()
    emas: dict[str, EMAModel] = {}  # each made at its first averaging step, from its module (resumed or copied)
    for step in bar:
        # Linear warm-up over 50 steps, then a cosine decay to a tenth of the learning rate.
        scale = min(1.0, (step + 1) / 50) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * scale
        stats = step_fn(step)
        for key, average in (averages or {}).items():
            target, source = modules[key], modules[average.source]
            if step < average.copy_steps:
                target.load_state_dict(source.state_dict())
                continue
            if key not in emas:
                # A fixed decay from the first update on: min_decay = decay (no warm-up), update_after_step -1 (0
                # would copy on the first update). foreach: the same rounding as torch.lerp_.
                emas[key] = EMAModel(
                    target.parameters(),
                    decay=average.decay,
                    min_decay=average.decay,
                    update_after_step=-1,
                    foreach=True,
                )
            emas[key].step(source.parameters())
            emas[key].copy_to(target.parameters())
        if step % 25 == 0 or step == steps - 1:
            log.write(json.dumps({"step": step, "time_s": time.perf_counter() - began, **stats}) + "\n")
            log.flush()
            bar.set_postfix({k: f"{v:.4g}" for k, v in stats.items()})
        if (step + 1) % cfg.checkpoint_every == 0 or step == steps - 1:
            save(step + 1)
    bar.close()
    log.close()


def _clipped_step(loss: torch.Tensor, params: Iterable[torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
    """Backpropagate ``loss``, clip the gradient of ``params`` to norm 1 and take the optimizer step."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _done(cfg: PretrainConfig, name: str) -> Path:
    return cfg.work_dir / name / "final"


def _finish(cfg: PretrainConfig, name: str, save: Callable[[Path], None]) -> None:
    final = _done(cfg, name)
    tmp = final.with_name("final.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def _images(num: int, seed: int, split: str = "train") -> tuple[torch.Tensor, list]:
    images, scenes = sample_dataset(num, seed, split)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, scenes


# --------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------
def stage_vae(cfg: PretrainConfig) -> None:
    torch.manual_seed(cfg.seed)
    vae = components.build_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, fused=True)

    def step(i: int) -> dict[str, float]:
        images, _ = _images(cfg.vae_batch, seed=cfg.seed * 1_000_003 + i)
        x = images * 2 - 1
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=torch.Generator().manual_seed(i))).sample
        mse = F.mse_loss(recon, x)
        loss = mse + cfg.vae_kl_weight * posterior.kl().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        # PSNR on [0, 1] images: the [-1, 1] MSE is 4x larger.
        return {"loss": loss.item(), "psnr": 10 * np.log10(4 / max(mse.item(), 1e-10))}

    _train_loop("vae", cfg, {"vae": vae}, optimizer, cfg.vae_steps, step)
    with torch.no_grad():  # SD's convention: scale latents to unit variance
        images, _ = _images(cfg.vae_scale_images, seed=cfg.seed + 7)
        latents = vae.encode(images * 2 - 1).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1 / latents.std()))
    _finish(cfg, "vae", lambda p: vae.save_pretrained(p, safe_serialization=True))


def _require(cfg: PretrainConfig, name: str) -> Path:
    path = _done(cfg, name)
    if not path.exists():
        raise GenrlError(
            f"stage '{name}' has not finished in {cfg.work_dir}; run `python -m genrl.shapes.pretrain {name}` first"
        )
    return path


def _load_vae(cfg: PretrainConfig):
    from diffusers import AutoencoderKL

    _require(cfg, "vae")
    return AutoencoderKL.from_pretrained(_done(cfg, "vae")).eval().requires_grad_(False)


def _labels(scenes: list) -> dict[str, torch.Tensor]:
    return {name: torch.tensor([s.label()[name] for s in scenes]) for name in ATTRIBUTES}


def stage_classifier(cfg: PretrainConfig) -> None:
    torch.manual_seed(cfg.seed)
    vae = _load_vae(cfg)
    model = components.ShapesClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.classifier_lr, fused=True)

    def step(i: int) -> dict[str, float]:
        # The classifier is the judge, not a generator: it sees every scene, the held-out ones included, so
        # that it can score a generator on prompts the generator never saw.
        images, scenes = _images(cfg.classifier_batch, seed=10_000_019 + cfg.seed * 1_000_003 + i, split="all")
        g = torch.Generator().manual_seed(i)
        # Half the batch goes through the VAE, as generated images do; all of it gets a little noise.
        half = len(images) // 2
        with torch.no_grad():
            recon = vae.decode(vae.encode(images[:half] * 2 - 1).latent_dist.mean).sample
            images[:half] = (recon / 2 + 0.5).clamp(0, 1)
        images = (images + 0.03 * torch.randn(images.shape, generator=g)).clamp(0, 1)
        logits = model(images)
        labels = _labels(scenes)
        loss = sum(F.cross_entropy(logits[n], labels[n]) for n in ATTRIBUTES)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        accuracy = np.mean([(logits[n].argmax(1) == labels[n]).float().mean().item() for n in ATTRIBUTES])
        return {"loss": loss.item(), "accuracy": float(accuracy)}

    _train_loop("classifier", cfg, {"classifier": model}, optimizer, cfg.classifier_steps, step)
    _finish(cfg, "classifier", lambda p: model.save_pretrained(p, safe_serialization=True))


def _latent_cache(cfg: PretrainConfig, vae=None) -> dict[str, torch.Tensor]:
    """Render and encode the training set once: latent mean and std, and the prompt of each image (encoded by
    ``vae``, by default the work directory's)."""
    path = cfg.work_dir / "latents.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    vae = vae or _load_vae(cfg)
    means, stds, prompts = [], [], []
    for start in tqdm(range(0, cfg.latent_dataset, 256), desc="encoding", disable=None):
        images, scenes = _images(min(256, cfg.latent_dataset - start), seed=20_000_003 + cfg.seed * 1_000_003 + start)
        with torch.no_grad():
            dist = vae.encode(images * 2 - 1).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
        prompts += [s.prompt for s in scenes]
    cache = {
        "mean": torch.cat(means),
        "std": torch.cat(stds),
        "prompts": prompts,
        "scaling_factor": vae.config.scaling_factor,
    }
    torch.save(cache, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    return cache


def _token_ids(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def stage_teacher(cfg: PretrainConfig) -> None:
    torch.manual_seed(cfg.seed)
    cache = _latent_cache(cfg)
    tokenizer = components.build_tokenizer()
    text_encoder = components.build_text_encoder(tokenizer)
    unet = components.build_unet(lcm=False)
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    scheduler = components.teacher_scheduler()
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.teacher_lr, weight_decay=1e-4, fused=True)
    unique = sorted(set(cache["prompts"]))
    ids_of = dict(zip(unique, _token_ids(tokenizer, unique)))
    empty_ids = _token_ids(tokenizer, [""])[0]
    prompt_ids = torch.stack([ids_of[p] for p in cache["prompts"]])
    n = len(prompt_ids)

    def step(i: int) -> dict[str, float]:
        g = torch.Generator().manual_seed(30_000_001 + cfg.seed * 1_000_003 + i)
        idx = torch.randint(n, (cfg.teacher_batch,), generator=g)
        x0 = cache["mean"][idx] + cache["std"][idx] * torch.randn(cache["mean"][idx].shape, generator=g)
        x0 = x0 * cache["scaling_factor"]
        ids = prompt_ids[idx].clone()
        ids[torch.rand(len(idx), generator=g) < cfg.prompt_dropout] = empty_ids
        t = torch.randint(0, 1000, (len(idx),), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        noisy = scheduler.add_noise(x0, noise, t)
        pred = unet(noisy, t, text_encoder(ids)[0]).sample
        # Min-SNR-5 weighting (Hang et al., 2023) for epsilon prediction: converges several times faster.
        weight = snr[t].clamp(max=5.0) / snr[t]
        loss = (weight * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        _clipped_step(loss, params, optimizer)
        return {"loss": loss.item()}

    modules = {"unet": unet, "text_encoder": text_encoder, "ema_unet": ema_unet, "ema_text": ema_text}
    averages = {
        "ema_unet": Average("unet", cfg.teacher_ema, copy_steps=201),
        "ema_text": Average("text_encoder", cfg.teacher_ema, copy_steps=201),
    }
    _train_loop("teacher", cfg, modules, optimizer, cfg.teacher_steps, step, averages)

    def save(path: Path) -> None:
        ema_unet.save_pretrained(path / "unet", safe_serialization=True)
        ema_text.save_pretrained(path / "text_encoder", safe_serialization=True)
        tokenizer.save_pretrained(path / "tokenizer")

    _finish(cfg, "teacher", save)


def consistency_distance(
    prediction: torch.Tensor, goal: torch.Tensor, kind: Literal["l2", "huber"], huber_c: float
) -> torch.Tensor:
    """Mean squared error, or the pseudo-Huber distance sqrt(d^2 + c^2) - c per latent element (a distance the LCM
    paper names; diffusers' LCD examples use c = 0.001). Pseudo-Huber grows linearly in large errors, so the few
    latents whose target says another colour or count do not dominate the step as they do under squared error;
    here it lifted the 4-step prompt accuracy of a resumed distillation by about 7 points over squared error."""
    if kind == "huber":
        return ((prediction - goal).square() + huber_c**2).sqrt().sub(huber_c).mean()
    return F.mse_loss(prediction, goal)


def stage_lcm(cfg: PretrainConfig) -> None:
    """Latent consistency distillation (Luo et al., 2023, Algorithm 1), in the teacher's latent space."""
    from diffusers import LatentConsistencyModelPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(cfg.seed)
    cache = _latent_cache(cfg)
    teacher_dir = _require(cfg, "teacher")
    teacher = UNet2DConditionModel.from_pretrained(teacher_dir / "unet").eval().requires_grad_(False)
    text_encoder = CLIPTextModel.from_pretrained(teacher_dir / "text_encoder").eval().requires_grad_(False)
    tokenizer = components.build_tokenizer()
    student = components.build_unet(lcm=True)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all("cond_proj" in k for k in missing), (missing, unexpected)
    with torch.no_grad():  # the guidance embedding starts as a no-op, so the student starts as the teacher
        student.time_embedding.cond_proj.weight.zero_()
    target = copy.deepcopy(student).requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.lcm_lr, weight_decay=1e-4, fused=True)

    scheduler = components.lcm_scheduler()
    alphas = scheduler.alphas_cumprod
    skip = scheduler.config.num_train_timesteps // scheduler.config.original_inference_steps
    grid = torch.arange(1, scheduler.config.original_inference_steps + 1) * skip - 1  # 19, 39, ..., 999

    def consistency_function(net, x: torch.Tensor, t: torch.Tensor, cond, w_embed) -> torch.Tensor:
        eps = net(x, t, cond, timestep_cond=w_embed).sample
        never = torch.zeros(len(t), dtype=torch.bool)
        return lcm_step(eps, x, t, t, alphas, never, scheduler.config.timestep_scaling).pred_original

    unique = sorted(set(cache["prompts"]))
    with torch.no_grad():
        embeds_of = dict(zip(unique, text_encoder(_token_ids(tokenizer, unique))[0]))
        empty = text_encoder(_token_ids(tokenizer, [""]))[0][0]
    embeds = torch.stack([embeds_of[p] for p in cache["prompts"]])
    n = len(embeds)

    def step(i: int) -> dict[str, float]:
        g = torch.Generator().manual_seed(40_000_003 + cfg.seed * 1_000_003 + i)
        b = cfg.lcm_batch
        idx = torch.randint(n, (b,), generator=g)
        x0 = cache["mean"][idx] + cache["std"][idx] * torch.randn(cache["mean"][idx].shape, generator=g)
        x0 = x0 * cache["scaling_factor"]
        cond = embeds[idx]
        t = grid[torch.randint(len(grid), (b,), generator=g)]
        t_prev = (t - cfg.lcm_solver_span * skip).clamp(min=0)
        noisy = scheduler.add_noise(x0, torch.randn(x0.shape, generator=g), t)
        w = cfg.lcm_w_min + (cfg.lcm_w_max - cfg.lcm_w_min) * torch.rand(b, generator=g)
        # The embedding the exported pipeline feeds its UNet (a method that reads nothing of its pipeline).
        w_embed = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, components.GUIDANCE_EMBED_DIM)

        prediction = consistency_function(student, noisy, t, cond, w_embed)

        with torch.no_grad():
            # The ODE solver of LCD: one DDIM step (eta 0) of the guided teacher from t to t_prev.
            eps_u, eps_c = teacher(
                torch.cat([noisy] * 2), torch.cat([t] * 2), torch.cat([empty.expand_as(cond), cond])
            ).sample.chunk(2)
            guided_eps = eps_c + w.view(-1, 1, 1, 1) * (eps_c - eps_u)
            x_prev = ddim_step(guided_eps, noisy, t, t_prev, alphas, alphas[0], eta=0.0).mean
            goal = consistency_function(target, x_prev, t_prev, cond, w_embed)

        loss = consistency_distance(prediction, goal, cfg.lcm_loss, cfg.lcm_huber_c)
        _clipped_step(loss, student.parameters(), optimizer)
        return {"loss": loss.item()}

    modules = {"student": student, "target": target}
    averages = {"target": Average("student", cfg.lcm_target_ema)}
    _train_loop("lcm", cfg, modules, optimizer, cfg.lcm_steps, step, averages)
    _finish(cfg, "lcm", lambda p: target.save_pretrained(p / "unet", safe_serialization=True))


def _teacher_part(cfg: PretrainConfig, part: Literal["vae", "text_encoder"]) -> Path:
    """The teacher's ``part``: this work directory's if its stage finished, else the one in --out-dir's teacher
    pipeline (the shipped one by default), so that the flow model can be trained on the shipped models alone."""
    work = _done(cfg, "vae") if part == "vae" else _done(cfg, "teacher") / part
    if work.exists():
        return work
    shipped = cfg.out_dir / "teacher" / part
    if shipped.exists():
        return shipped
    raise GenrlError(
        f"there is no {part} in {work} nor in {shipped}; run `python -m genrl.shapes.pretrain vae` and `teacher` "
        "first, or pass --out-dir with a teacher pipeline"
    )


def _flow_pipeline(cfg: PretrainConfig, transformer: torch.nn.Module):
    """A StableDiffusion3Pipeline of ``transformer`` with the teacher's VAE, its text encoder in both CLIP places, and
    a T5 that returns zeros (``components.FLOW_ZERO_TOKENS``)."""
    from diffusers import AutoencoderKL, StableDiffusion3Pipeline
    from transformers import CLIPTextModel

    vae = AutoencoderKL.from_pretrained(_teacher_part(cfg, "vae")).eval().requires_grad_(False)
    vae.register_to_config(shift_factor=0.0)  # SD3's decoder adds it to the latents, and reads None as an error
    text_encoder = components.with_projection(CLIPTextModel.from_pretrained(_teacher_part(cfg, "text_encoder")))
    text_encoder.eval().requires_grad_(False)
    tokenizer = components.build_tokenizer()
    t5_tokenizer = components.build_t5_tokenizer(max_length=min(components.FLOW_ZERO_TOKENS))
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=components.flow_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder,
        tokenizer_2=tokenizer,
        text_encoder_3=components.build_zero_t5(t5_tokenizer, transformer.config.joint_attention_dim),
        tokenizer_3=t5_tokenizer,
    )


def _encode_for_flow(pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The token and pooled embeddings that the pipeline itself conditions on when it samples ``prompts`` with one
    zero T5 token."""
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompts, None, None, do_classifier_free_guidance=False, max_sequence_length=1
        )
    return embeds, pooled


@contextlib.contextmanager
def zero_tokens_counted(counts: torch.Tensor):
    """Within it, the last key of every attention of a batch stands for ``counts`` (B,) identical keys: its logit
    gains log(count). The last context token of the flow model is its one zero T5 token, and n identical tokens
    are one token with n times its attention weight: the context stream computes the same for each of them, and a
    softmax over n equal logits s sums to exp(s + log n). So a batch with one zero token computes, up to rounding,
    what it would with ``counts`` of them (tests/shapes/test_pretrain.py), at the cost of one."""
    attend = F.scaled_dot_product_attention
    log_counts = counts.float().log()

    def counted(query, key, value, attn_mask=None, **options):
        assert attn_mask is None, "SD3's joint attention passes no mask"
        bias = torch.zeros(len(counts), 1, 1, key.shape[-2], dtype=query.dtype)
        bias[..., -1] = log_counts.view(-1, 1, 1).to(query.dtype)
        return attend(query, key, value, attn_mask=bias, **options)

    with unittest.mock.patch.object(F, "scaled_dot_product_attention", counted):
        yield


def stage_flow(cfg: PretrainConfig) -> None:
    """Rectified flow as SD3 trains it (Esser et al., 2024): x_sigma = (1 - sigma) x0 + sigma eps, the transformer
    regresses the velocity eps - x0 at sigma drawn from the logit-normal density, 10% prompt dropout, EMA. Each
    sample reads its one zero T5 token as 1 or as 256 of them (``components.FLOW_ZERO_TOKENS``), half and half."""
    torch.manual_seed(cfg.seed)
    transformer = components.build_flow_transformer()
    ema = copy.deepcopy(transformer).requires_grad_(False)
    pipe = _flow_pipeline(cfg, transformer)
    cache = _latent_cache(cfg, pipe.vae)
    unique = sorted(set(cache["prompts"]))
    embeds, pooled = _encode_for_flow(pipe, unique)
    empty_embeds, empty_pooled = _encode_for_flow(pipe, [""])
    row = {prompt: i for i, prompt in enumerate(unique)}
    prompt_rows = torch.tensor([row[p] for p in cache["prompts"]])
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=cfg.flow_lr, weight_decay=1e-4, fused=True)
    num_train_timesteps = pipe.scheduler.config.num_train_timesteps

    def step(i: int) -> dict[str, float]:
        g = torch.Generator().manual_seed(50_000_017 + cfg.seed * 1_000_003 + i)
        idx = torch.randint(len(prompt_rows), (cfg.flow_batch,), generator=g)
        x0 = cache["mean"][idx] + cache["std"][idx] * torch.randn(cache["mean"][idx].shape, generator=g)
        x0 = x0 * cache["scaling_factor"]
        dropped = torch.rand(len(idx), generator=g) < cfg.prompt_dropout
        cond = torch.where(dropped.view(-1, 1, 1), empty_embeds, embeds[prompt_rows[idx]])
        cond_pooled = torch.where(dropped.view(-1, 1), empty_pooled, pooled[prompt_rows[idx]])
        # SD3's logit-normal sigma (mean 0, std 1): most of the training where the velocity is hardest to predict.
        sigma = torch.sigmoid(torch.randn(len(idx), generator=g))
        noise = torch.randn(x0.shape, generator=g)
        s = sigma.view(-1, 1, 1, 1)
        few, many = components.FLOW_ZERO_TOKENS
        counts = torch.where(torch.rand(len(idx), generator=g) < 0.5, few, many)
        with zero_tokens_counted(counts):
            velocity = transformer(
                hidden_states=(1 - s) * x0 + s * noise,
                timestep=sigma * num_train_timesteps,  # the scheduler's timesteps are sigma x 1000
                encoder_hidden_states=cond,
                pooled_projections=cond_pooled,
            ).sample
        loss = F.mse_loss(velocity, noise - x0)
        _clipped_step(loss, transformer.parameters(), optimizer)
        return {"loss": loss.item()}

    modules = {"transformer": transformer, "ema": ema}
    averages = {"ema": Average("transformer", cfg.flow_ema, copy_steps=201)}
    _train_loop("flow", cfg, modules, optimizer, cfg.flow_steps, step, averages)
    _finish(cfg, "flow", lambda p: ema.save_pretrained(p / "transformer", safe_serialization=True))
    out = cfg.out_dir / "flow"
    staging = out.with_name("flow.staging")
    shutil.rmtree(staging, ignore_errors=True)
    _save_flow_pipeline(cfg, staging)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)
    print(f"flow: exported to {out}")


def _save_flow_pipeline(cfg: PretrainConfig, folder: Path) -> None:
    """The finished flow stage's pipeline folder."""
    from diffusers import SD3Transformer2DModel

    transformer = SD3Transformer2DModel.from_pretrained(_done(cfg, "flow") / "transformer")
    _flow_pipeline(cfg, transformer).save_pretrained(folder, safe_serialization=True)


def stage_export(cfg: PretrainConfig) -> None:
    """Two standard pipeline folders and the reward model, safetensors only."""
    from diffusers import (
        AutoencoderKL,
        LatentConsistencyModelPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import AutoTokenizer, CLIPTextModel

    teacher_dir = _require(cfg, "teacher")
    for name in ("vae", "lcm", "classifier"):
        _require(cfg, name)
    parts = dict(
        vae=AutoencoderKL.from_pretrained(_done(cfg, "vae")),
        text_encoder=CLIPTextModel.from_pretrained(teacher_dir / "text_encoder"),
        tokenizer=AutoTokenizer.from_pretrained(teacher_dir / "tokenizer"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out = cfg.out_dir
    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    StableDiffusionPipeline(
        unet=UNet2DConditionModel.from_pretrained(teacher_dir / "unet"),
        scheduler=components.teacher_scheduler(),
        **parts,
    ).save_pretrained(staging / "teacher", safe_serialization=True)
    LatentConsistencyModelPipeline(
        unet=UNet2DConditionModel.from_pretrained(_done(cfg, "lcm") / "unet"),
        scheduler=components.lcm_scheduler(),
        **parts,
    ).save_pretrained(staging / "lcm", safe_serialization=True)
    components.ShapesClassifier.from_pretrained(_done(cfg, "classifier")).save_pretrained(
        staging / "reward", safe_serialization=True
    )
    if _done(cfg, "flow").exists():
        _save_flow_pipeline(cfg, staging / "flow")
    else:
        print(f"export: the flow stage has not finished in {cfg.work_dir}; {out} gets no flow model")
    (staging / "README.md").write_text(
        "Trained by `python -m genrl.shapes.pretrain` (genrl's own code, genrl's procedural shapes world); "
        "see the genrl README.\n"
    )
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    print(f"exported to {out} ({size:.1f} MB)")


STAGE_FUNCTIONS = {
    "vae": stage_vae,
    "classifier": stage_classifier,
    "teacher": stage_teacher,
    "lcm": stage_lcm,
    "flow": stage_flow,
    "export": stage_export,
}


def run(cfg: PretrainConfig) -> None:
    cfg = cfg.scaled()
    grid = components.LCM_ORIGIN_STEPS
    if not 1 <= cfg.lcm_solver_span <= grid:
        raise GenrlError(
            f"--lcm-solver-span {cfg.lcm_solver_span} is not a number of intervals of the {grid}-step grid; "
            f"pass 1 to {grid} (2 is the default)"
        )
    if cfg.lcm_loss == "huber" and not cfg.lcm_huber_c > 0:
        # c = 0 is the absolute error, whose gradient at a zero difference is NaN.
        raise GenrlError(f"--lcm-huber-c {cfg.lcm_huber_c} must be above 0; pass e.g. 0.001 (the default)")
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    if cfg.stage == "evaluate":
        from genrl.shapes.evaluate import evaluate

        evaluate(cfg.out_dir, cfg.eval_images, cfg.seed)
        if cfg.grid is not None:
            from genrl.shapes.evaluate import sample_grid

            print(f"sample grid: {sample_grid(cfg.out_dir, cfg.grid, cfg.seed)}")
        return
    todo = STAGES if cfg.stage == "all" else (cfg.stage,)
    started = time.perf_counter()
    for name in todo:
        if name != "export" and cfg.stage == "all" and _done(cfg, name).exists():
            print(f"{name}: done already ({_done(cfg, name)})")
            continue
        begun = time.perf_counter()
        STAGE_FUNCTIONS[name](cfg)
        print(f"{name}: finished in {time.perf_counter() - begun:.0f} s", flush=True)
    print(f"pretraining took {time.perf_counter() - started:.0f} s")
    if cfg.stage == "all":
        from genrl.shapes.evaluate import evaluate

        evaluate(cfg.out_dir, cfg.eval_images, cfg.seed)


def main(argv: list[str] | None = None) -> None:
    cfg = tyro.cli(PretrainConfig, args=sys.argv[1:] if argv is None else argv, description=__doc__)
    try:
        run(cfg)
    except GenrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
