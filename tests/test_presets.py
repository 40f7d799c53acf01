"""The paper presets against the published configurations, field by field.

Sources (read at the commits of the official repositories):
- RLCM: the paper's Table 1 (../shared/reference/rlcm-paper.txt, appendix B.1) and github.com/Owen-Oertell/rlcm,
  lcm_rl_pytorch/conf/task/{compression,incompression,aesthetic,prompt_image_alignment}.yaml (the "yaml" below),
  core/ppo_training_loop.py and scripts/main.py.
- DDPO: github.com/kvablack/ddpo-pytorch, config/base.py and config/dgx.py (compressibility, incompressibility,
  aesthetic, prompt_image_alignment), scripts/train.py and diffusers_patch/ddim_with_logprob.py.
- Flow-GRPO: github.com/yifan123/flow_grpo, config/base.py, config/grpo.py general_ocr_sd3_1gpu() (the one-GPU
  layout) and pickscore_sd3() (its beta), scripts/train_sd3.py.

Batch layouts are per GPU, as both sources give them. One official RLCM "round" (sample num_sample_iters batches,
then one optimizer step) is one genrl epoch: see the comment above ``_RLCM`` in genrl/presets.py.
"""

import pytest

from genrl.adapters.sd3 import FLOW_GRPO_LORA_TARGETS
from genrl.algos.common import trained_steps
from genrl.config import DEFAULT_LORA_TARGETS, TrainConfig, setting
from genrl.config_sampler import sampler_settings
from genrl.presets import DEFAULT_PRESET, PRESETS

# Every RLCM task (yaml and Table 1, unless a line says otherwise).
_RLCM_COMMON = {
    "model": "SimianLuo/LCM_Dreamshaper_v7",  # yaml model; Table 1 "Pretrained Model: Dreamshaper v7"
    "env": "lcm",
    "algo": "ppo",
    "finetune": "lora",
    "guidance_scale": 8.0,  # conf/config.yaml training.guidance_scale (w = 7 in the w-embedding)
    "noise_last_step": True,  # diffusers_patch/lcm_scheduler.py step(): noise on every step, all H trained
    "train_batch_size": 2,  # yaml train_batch_size_per_gpu; Table 1 "Train Batch Size (per GPU)"
    "inner_epochs": 1,  # yaml num_inner_epochs
    "learning_rate": 1e-4,  # Table 1 "Learning Rate" (prompt_image_alignment.yaml says 4e-4: see presets.py)
    "adam_weight_decay": 0.0,  # ppo_training_loop.py: torch.optim.Adam(..., lr=lr), no weight decay
    "adam_beta1": 0.9,  # torch.optim.Adam defaults
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
    "clip_range": 1e-4,  # yaml clip_range; Table 1 "Clip Range"
    "adv_clip_max": 10.0,  # yaml adv_clip_max; Table 1 "Advantage Clip Maximum"
    "max_grad_norm": 5.0,  # yaml max_grad_norm; Table 1 "Max Grad Norm"
    "stat_min_count": 16,  # yaml stat_min_count; Table 1 "Rolling Statistics Min Count"
    "advantages": "per_prompt",  # ppo_training_loop.py: PerPromptStatTracker
    "logprob_reduction": "mean",  # lcm_scheduler.py step(): log_prob.mean over all but the batch dim
    "lora_target_modules": DEFAULT_LORA_TARGETS,  # scripts/main.py LoraConfig target_modules
    "kl_coef": 0.0,
    "timestep_fraction": 1.0,  # ppo_training_loop.py trains every one of the H steps
    "mixed_precision": "fp16",  # scripts/main.py Accelerator(mixed_precision="fp16"), pipeline fp16, LoRA cast fp32
    "group_size": 1,
}
_RLCM_JPEG = {
    **_RLCM_COMMON,
    "prompts": "imagenet_animals",  # yaml dataset ComplexAnimals (datasets/complex_animals.txt: ImageNet 0-397)
    "num_steps": 8,  # yaml num_inference_steps; Table 1 "Horizon"
    "sample_batch_size": 4,  # yaml sample_batch_size_per_gpu; Table 1 "Sample Batch Size (per GPU)"
    "batches_per_epoch": 1,  # yaml num_sample_iters 1; Table 1 "Number of Sample Inner Epochs" 1
    "gradient_accumulation_steps": 2,  # yaml; Table 1 "Gradient Accumulation Steps"
    "epochs": 100 * 10,  # yaml num_epochs 100 x batches_per_epoch 10 rounds; Table 1 "Number of Epochs", "Batches"
    "save_every": 10 * 10,  # conf/config.yaml training.save_interval 10 (official epochs)
    "stat_buffer_size": 16,  # yaml; Table 1 "Rolling Statistics Buffer Size"
    "lora_rank": 16,  # yaml lora_r; Table 1 "LoRA rank"
    "lora_alpha": 32.0,  # yaml lora_alpha; Table 1 "LoRA α"
}

# Every DDPO task: config/base.py, then config/dgx.py compressibility() (8 GPUs), which the others start from.
_DDPO_JPEG = {
    "model": "Lykon/dreamshaper-7",  # RLCM paper section 5: DDPO fine-tunes Dreamshaper v7 (dgx.py: SD v1.4)
    "env": "ddpm",
    "algo": "ppo",
    "finetune": "lora",  # base.py use_lora
    "mixed_precision": "fp16",  # base.py mixed_precision; scripts/train.py keeps the LoRA weights fp32
    "allow_tf32": True,  # base.py allow_tf32
    "prompts": "imagenet_animals",  # dgx.py prompt_fn "imagenet_animals"
    "num_steps": 50,  # base.py sample.num_steps
    "eta": 1.0,  # base.py sample.eta
    "guidance_scale": 5.0,  # base.py sample.guidance_scale
    "sample_batch_size": 8,  # dgx.py sample.batch_size
    "batches_per_epoch": 4,  # dgx.py sample.num_batches_per_epoch
    "train_batch_size": 4,  # dgx.py train.batch_size
    "gradient_accumulation_steps": 2,  # dgx.py train.gradient_accumulation_steps
    "inner_epochs": 1,  # base.py train.num_inner_epochs
    "learning_rate": 3e-4,  # base.py train.learning_rate
    "adam_beta1": 0.9,  # base.py train.adam_beta1
    "adam_beta2": 0.999,  # base.py train.adam_beta2
    "adam_weight_decay": 1e-4,  # base.py train.adam_weight_decay (AdamW)
    "adam_epsilon": 1e-8,  # base.py train.adam_epsilon
    "max_grad_norm": 1.0,  # base.py train.max_grad_norm
    "adv_clip_max": 5.0,  # base.py train.adv_clip_max
    "clip_range": 1e-4,  # base.py train.clip_range
    "epochs": 100,  # dgx.py num_epochs
    "save_every": 1,  # dgx.py save_freq
    "stat_buffer_size": 16,  # dgx.py per_prompt_stat_tracking buffer_size
    "stat_min_count": 16,  # dgx.py per_prompt_stat_tracking min_count
    "advantages": "per_prompt",
    "logprob_reduction": "mean",  # ddim_with_logprob.py: log_prob.mean over all but the batch dim
    "lora_rank": 4,  # scripts/train.py LoRAAttnProcessor(hidden_size, cross_attention_dim): its default rank 4
    "lora_alpha": 4.0,  # ... and no network_alpha: scale 1, i.e. alpha = rank
    "lora_target_modules": DEFAULT_LORA_TARGETS,  # LoRAAttnProcessor: to_q, to_k, to_v, to_out.0
    "kl_coef": 0.0,
    "timestep_fraction": 1.0,  # base.py train.timestep_fraction
    "group_size": 1,
}

# Every Flow-GRPO task: config/grpo.py general_ocr_sd3_1gpu() on config/base.py, and scripts/train_sd3.py.
_FLOW_GRPO = {
    "model": "stabilityai/stable-diffusion-3.5-medium",  # pretrained.model
    "env": "flow",
    "algo": "ppo",
    "finetune": "lora",  # base.py use_lora
    "mixed_precision": "fp16",  # base.py mixed_precision
    "allow_tf32": True,  # base.py allow_tf32
    "num_steps": 10,  # sample.num_steps
    "eval_num_steps": 40,  # sample.eval_num_steps
    "eval_ode": True,  # train_sd3.py eval(): pipeline_with_logprob(..., noise_level=0)
    "ema_decay": 0.9,  # flow_grpo/ema.py: min((1 + step) / (10 + step), 0.9); config.train.ema = True
    "eval_ema": True,  # train_sd3.py eval(): ema.copy_ema_to(...) before sampling
    "guidance_scale": 4.5,  # sample.guidance_scale
    "noise_level": 0.7,  # base.py sample.noise_level
    "noise_mode": "flow_grpo",  # sd3_sde_with_logprob.py: std_dev_t = a sqrt(sigma / (1 - sigma))
    "resolution": 512,  # resolution
    "sample_batch_size": 8,  # sample.train_batch_size
    "group_size": 8,  # sample.num_image_per_prompt
    "group_std": True,  # stat_tracking.py: (r - group mean) / std
    "global_std": True,  # sample.global_std: the std of all the epoch's rewards
    "batches_per_epoch": 8,  # sample.num_batches_per_epoch = 8 / (1 x 8 / 8)
    "train_batch_size": 8,  # train.batch_size = sample.train_batch_size
    "gradient_accumulation_steps": 4,  # train.gradient_accumulation_steps = num_batches_per_epoch // 2
    "inner_epochs": 1,  # train.num_inner_epochs
    "learning_rate": 3e-4,  # base.py train.learning_rate
    "adam_beta1": 0.9,  # base.py
    "adam_beta2": 0.999,
    "adam_weight_decay": 1e-4,  # base.py train.adam_weight_decay (AdamW)
    "adam_epsilon": 1e-8,
    "max_grad_norm": 1.0,  # base.py train.max_grad_norm
    "adv_clip_max": 5.0,  # base.py train.adv_clip_max
    "clip_range": 1e-4,  # base.py train.clip_range
    "kl_coef": 0.04,  # train.beta
    "kl_form": "flow_grpo",  # train_sd3.py: mean_CHW (mean - mean_ref)^2 / (2 std_dev_t^2), std_dev_t without sqrt(-dt)
    "ratio_norm": False,  # train_sd3.py: ratio = exp(log_prob - old log_prob)
    "step_weight": "none",  # ... and every step's loss weighs the same
    "timestep_fraction": 0.99,  # grpo.py train.timestep_fraction: train_sd3.py trains j < int(10 x 0.99) = 9
    "logprob_reduction": "mean",  # sd3_sde_with_logprob.py: log_prob.mean over all but the batch dim
    "lora_rank": 32,  # train_sd3.py LoraConfig(r=32)
    "lora_alpha": 64.0,  # lora_alpha=64
    "lora_target_modules": FLOW_GRPO_LORA_TARGETS,  # target_modules: both streams of every joint attention
    "save_every": 60,  # save_freq
    "eval_every": 60,  # eval_freq
}

PUBLISHED: dict[str, dict] = {
    "rlcm-compression": {**_RLCM_JPEG, "reward": "jpeg_compressibility"},  # compression.yaml
    "rlcm-incompression": {**_RLCM_JPEG, "reward": "jpeg_incompressibility"},  # incompression.yaml
    "rlcm-aesthetic": {  # aesthetic.yaml; Table 1 "Aesthetic"
        **_RLCM_JPEG,
        "reward": "aesthetic",
        "prompts": "simple_animals",  # dataset SimpleAnimals
        "sample_batch_size": 8,  # sample_batch_size_per_gpu
        "gradient_accumulation_steps": 4,
        "stat_buffer_size": 32,
        "lora_rank": 8,  # lora_r
        "lora_alpha": 8.0,
    },
    "rlcm-alignment": {  # prompt_image_alignment.yaml; Table 1 "Prompt Image Alignment" (3 GPUs + 1 server)
        **_RLCM_JPEG,
        "prompts": "animals_activities",  # dataset AnimalsWithActions: simple_animals x actions.txt
        "num_steps": 16,  # num_inference_steps; Table 1 "Horizon" 16
        "sample_batch_size": 8,  # sample_batch_size_per_gpu
        "batches_per_epoch": 5,  # num_sample_iters 5; Table 1 "Number of Sample Inner Epochs" 5
        "gradient_accumulation_steps": 20,  # 20 x 2 = 40 = 5 x 8: one optimizer step a round
        "inner_epochs": 1,  # num_inner_epochs 1
        "epochs": 118 * 6,  # num_epochs 118 x batches_per_epoch 6 rounds; Table 1 "Number of Epochs" 118, "Batches" 6
        "save_every": 10 * 6,  # config.yaml save_interval 10 (official epochs)
        "stat_buffer_size": 32,
        "async_rewards": True,  # ppo_training_loop.py: rewards come from a ThreadPoolExecutor while sampling goes on
    },
    "ddpo-compression": {**_DDPO_JPEG, "reward": "jpeg_compressibility"},  # dgx.py compressibility()
    "ddpo-incompression": {**_DDPO_JPEG, "reward": "jpeg_incompressibility"},  # dgx.py incompressibility()
    "ddpo-aesthetic": {  # dgx.py aesthetic()
        **_DDPO_JPEG,
        "reward": "aesthetic",  # reward_fn "aesthetic_score"
        "prompts": "simple_animals",  # prompt_fn "simple_animals"
        "epochs": 200,  # num_epochs
        "gradient_accumulation_steps": 4,  # train.gradient_accumulation_steps
        "stat_buffer_size": 32,  # per_prompt_stat_tracking buffer_size (min_count 16)
    },
    "ddpo-alignment": {  # dgx.py prompt_image_alignment() (6 GPUs for DDPO, 2 for LLaVA)
        **_DDPO_JPEG,
        "prompts": "animals_activities",  # prompt_fn nouns_activities(simple_animals.txt, activities.txt)
        "epochs": 200,  # num_epochs
        "sample_batch_size": 8,  # sample.batch_size
        "batches_per_epoch": 6,  # sample.num_batches_per_epoch
        "train_batch_size": 4,  # train.batch_size
        "gradient_accumulation_steps": 6,  # train.gradient_accumulation_steps
        "stat_buffer_size": 32,  # per_prompt_stat_tracking buffer_size (min_count 16)
        "async_rewards": True,
    },
    "flow-grpo-compression": {**_FLOW_GRPO, "reward": "jpeg_compressibility", "prompts": "imagenet_animals"},
    "flow-grpo-incompression": {**_FLOW_GRPO, "reward": "jpeg_incompressibility", "prompts": "imagenet_animals"},
    "flow-grpo-aesthetic": {  # pickscore_sd3(): a learned preference score, beta 0.01
        **_FLOW_GRPO,
        "reward": "aesthetic",
        "prompts": "simple_animals",
        "kl_coef": 0.01,
    },
    "flow-grpo-alignment": {**_FLOW_GRPO, "prompts": "animals_activities", "async_rewards": True},
    # GRPO-Guard (arXiv 2510.22319): Flow-GRPO's configuration with RatioNorm and the 1/|dt| step weights
    "flow-grpo-guard-compression": {
        **_FLOW_GRPO,
        "reward": "jpeg_compressibility",
        "prompts": "imagenet_animals",
        "ratio_norm": True,
        "step_weight": "inverse_dt",
    },
}
RLCM = [name for name in PUBLISHED if name.startswith("rlcm-")]


def _optimizer_steps_per_epoch(cfg: TrainConfig) -> float:
    """genrl's semantics (genrl/algos/common.py): a step every gradient_accumulation_steps minibatches of
    train_batch_size trajectories, over inner_epochs passes."""
    ppo = cfg.algo_config
    return ppo.inner_epochs * cfg.samples_per_epoch / (ppo.train_batch_size * ppo.gradient_accumulation_steps)


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [(name, field, value) for name, fields in PUBLISHED.items() for field, value in fields.items()],
)
def test_preset_field_is_the_published_value(name, field, value):
    assert setting(PRESETS[name], field) == value


def test_the_alignment_presets_query_a_reward_server():
    for name in ("rlcm-alignment", "ddpo-alignment", "flow-grpo-alignment"):
        assert PRESETS[name].reward.startswith("http://127.0.0.1:")


@pytest.mark.parametrize("name", RLCM)
def test_rlcm_presets_make_one_optimizer_step_per_epoch(name):
    """The official loop samples, then makes exactly one optimizer step on those samples: every ratio is 1."""
    cfg = PRESETS[name]
    assert cfg.samples_per_epoch == cfg.algo_config.train_batch_size * cfg.algo_config.gradient_accumulation_steps
    assert cfg.algo_config.inner_epochs == 1
    assert _optimizer_steps_per_epoch(cfg) == 1


@pytest.mark.parametrize(
    ("name", "steps"),
    # dgx.py's own comments: "(8 * 4) / (4 * 2) = 4 gradient updates per epoch", "I used 2 gradient updates per
    # epoch" (aesthetic), "(8 * 6) / (4 * 6) = 2 gradient updates per epoch" (alignment).
    [("ddpo-compression", 4), ("ddpo-incompression", 4), ("ddpo-aesthetic", 2), ("ddpo-alignment", 2)],
)
def test_ddpo_presets_make_dgx_pys_optimizer_steps_per_epoch(name, steps):
    assert _optimizer_steps_per_epoch(PRESETS[name]) == steps


@pytest.mark.parametrize("name", [name for name in PUBLISHED if name.startswith("flow-grpo-")])
def test_flow_grpo_presets_update_twice_an_epoch_on_whole_groups(name):
    """grpo.py's own assertion: "gradients are updated twice per epoch"; each group is one sampling batch."""
    cfg = PRESETS[name]
    assert _optimizer_steps_per_epoch(cfg) == 2
    assert cfg.sample_batch_size == cfg.group_size


@pytest.mark.parametrize("name", [name for name in PUBLISHED if name.startswith("flow-grpo-")])
def test_flow_grpo_presets_train_all_but_the_last_of_their_10_steps(name):
    """train_sd3.py: num_train_timesteps = int(sample.num_steps x train.timestep_fraction) = 9, j = 0 .. 8."""
    cfg = PRESETS[name]
    assert trained_steps(cfg.num_steps, cfg.algo_config.timestep_fraction) == 9 == cfg.num_steps - 1


@pytest.mark.parametrize(
    ("name", "per_gpu_images"),
    # yaml num_epochs x batches_per_epoch x num_sample_iters x sample_batch_size_per_gpu
    [
        ("rlcm-compression", 100 * 10 * 1 * 4),
        ("rlcm-incompression", 100 * 10 * 1 * 4),
        ("rlcm-aesthetic", 100 * 10 * 1 * 8),
        ("rlcm-alignment", 118 * 6 * 5 * 8),
    ],
)
def test_rlcm_presets_query_the_reward_as_often_as_the_official_runs(name, per_gpu_images):
    cfg = PRESETS[name]
    assert cfg.epochs * cfg.samples_per_epoch == per_gpu_images


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_paper_presets_validate(name):
    PRESETS[name].validate()


def test_default_preset_is_the_field_defaults():
    assert PRESETS[DEFAULT_PRESET] == TrainConfig()


def test_shapes_presets_keep_each_methods_update_structure_on_equal_terms():
    for task in ("compression", "incompression", "alignment"):
        rlcm, ddpo = PRESETS[f"shapes-rlcm-{task}"], PRESETS[f"shapes-ddpo-{task}"]
        r, d = rlcm.algo_config, ddpo.algo_config
        # RLCM as Table 1: one optimizer step per sampling round. DDPO: update batches of at least 32 trajectories.
        assert r.train_batch_size * r.gradient_accumulation_steps == rlcm.samples_per_epoch
        assert d.train_batch_size * d.gradient_accumulation_steps >= 32
        assert (r.clip_range, r.adv_clip_max, r.max_grad_norm, rlcm.adam_weight_decay) == (1e-4, 10, 5, 0)
        assert (d.clip_range, d.adv_clip_max, d.max_grad_norm, ddpo.adam_weight_decay) == (1e-4, 5, 1, 1e-4)
        # The same LoRA and the same advantage estimator: per-prompt statistics over groups of one prompt's images.
        for field in ("lora_rank", "lora_alpha", "lora_target_modules", "advantages", "group_size", "group_std"):
            assert getattr(rlcm, field) == getattr(ddpo, field), field
        assert rlcm.group_size > 1 and rlcm.sample_batch_size % rlcm.group_size == 0


@pytest.mark.parametrize("task", ["compression", "incompression", "alignment"])
def test_the_shapes_flow_presets_keep_flow_grpos_update_structure(task):
    """docs/benchmark/PROTOCOL.md's addendum: RLCM's epochs and groups, Flow-GRPO's two optimizer steps an epoch and
    its LoRA layers, 10 SDE steps at noise level 0.7, guidance 4.5."""
    flow, rlcm = PRESETS[f"shapes-flow-{task}"], PRESETS[f"shapes-rlcm-{task}"]
    flow.validate()
    noise_level = sampler_settings(flow).noise_level  # the flow_sde sampler's default where the preset leaves it
    assert (flow.env, flow.num_steps, noise_level, flow.guidance_scale) == ("flow", 10, 0.7, 4.5)
    assert _optimizer_steps_per_epoch(flow) == 2 and flow.samples_per_epoch == rlcm.samples_per_epoch
    assert flow.lora_target_modules == FLOW_GRPO_LORA_TARGETS
    for field in ("lora_rank", "lora_alpha", "group_size", "group_std", "reward", "prompts"):
        assert getattr(flow, field) == getattr(rlcm, field), field


def test_shapes_presets_are_the_committed_sweeps_winners():
    import json
    from pathlib import Path

    sweep = json.loads((Path(__file__).parents[1] / "docs" / "benchmark" / "sweep" / "sweep.json").read_text())
    presets = {
        ("jpeg", "RLCM (PPO)"): ["shapes-rlcm-compression", "shapes-rlcm-incompression"],
        ("jpeg", "DDPO (PPO)"): ["shapes-ddpo-compression", "shapes-ddpo-incompression"],
        ("alignment", "RLCM (PPO)"): ["shapes-rlcm-alignment"],
        ("alignment", "RLCM (DPG)"): ["shapes-dpg-alignment"],
        ("jpeg", "Flow-GRPO"): ["shapes-flow-compression", "shapes-flow-incompression"],
        ("alignment", "Flow-GRPO"): ["shapes-flow-alignment"],
    }
    assert {(family, method) for family in sweep for method in sweep[family]} == set(presets)
    for (family, method), names in presets.items():
        winner = dict(sweep[family][method]["winner"]["settings"])
        weight = winner.pop("alignment_term", 0)
        for name in names:
            cfg = PRESETS[name]
            if weight:  # the composite: the task's reward plus the shapes alignment term at the winner's weight
                assert cfg.reward.endswith(f",shapes_alignment={weight}"), (name, cfg.reward)
            else:
                assert "," not in cfg.reward, (name, cfg.reward)
            for field, value in winner.items():
                assert setting(cfg, field) == pytest.approx(value), (name, field)
