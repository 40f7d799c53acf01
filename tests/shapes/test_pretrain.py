"""`python -m genrl.shapes.pretrain` end to end at toy scale, and the shapes reward on what it builds."""

import copy
import json
import shutil

import pytest
import torch
from diffusers import LatentConsistencyModelPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline

from genrl.errors import GenrlError
from genrl.rewards.shapes import ShapesAlignment
from genrl.shapes import components
from genrl.shapes import evaluate as evaluate_module
from genrl.shapes.pretrain import (
    Average,
    PretrainConfig,
    _train_loop,
    consistency_distance,
    main,
    zero_tokens_counted,
)
from genrl.shapes.world import ATTRIBUTES, parse_prompt, train_scenes

_generate = evaluate_module._generate


def _sampled_in_one_step(pipe, scenes: list, **kwargs) -> torch.Tensor:
    """evaluate's sampler at one step for every figure: the same pipelines and options in a fraction of the time (a
    toy model's accuracy means nothing; the pipelines' own sampling is tested below)."""
    return _generate(pipe, scenes, **{**kwargs, "num_inference_steps": 1})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A toy pretraining run; ``work / "figures.json"`` holds what its closing evaluate returned."""
    work = tmp_path_factory.mktemp("pretrain")
    evaluate = evaluate_module.evaluate

    def recorded(*args, **kwargs) -> dict:
        figures = evaluate(*args, **kwargs)
        (work / "figures.json").write_text(json.dumps(figures))
        return figures

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate_module, "_generate", _sampled_in_one_step)
        patch.setattr(evaluate_module, "evaluate", recorded)
        main(["--scale", "toy", "--work-dir", str(work), "--out-dir", str(work / "out")])
    return work


@pytest.mark.slow  # the toy pretraining run (module fixture `built`)
def test_pretraining_ends_with_every_evaluation_figure(built):
    figures = json.loads((built / "figures.json").read_text())
    for name in ("teacher_ddim50", "lcm1", "lcm8", "lcm4_heldout", "flow10", "flow40", "flow40_heldout"):
        assert 0 <= figures[f"{name}_accuracy"] <= 1
    assert figures["vae_psnr_db"] > 0 and figures["lcm4_batch8_seconds"] > 0


@pytest.mark.slow  # the toy pretraining run (module fixture `built`)
def test_pretrain_builds_pipelines_that_plain_diffusers_loads(built):
    out = built / "out"
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert size <= 45e6
    assert not list(out.rglob("*.bin")) and list(out.rglob("*.safetensors"))
    prompt = train_scenes()[0].prompt
    lcm = LatentConsistencyModelPipeline.from_pretrained(out / "lcm")
    images = lcm([prompt] * 2, num_inference_steps=2, output_type="pt").images
    assert images.shape == (2, 3, 64, 64)
    sd = StableDiffusionPipeline.from_pretrained(out / "teacher")
    assert sd([prompt], num_inference_steps=3, output_type="pt").images.shape == (1, 3, 64, 64)
    assert lcm.unet.config.time_cond_proj_dim and sd.unet.config.time_cond_proj_dim is None
    assert (
        json.loads((out / "lcm" / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "LCMScheduler"
    )


@pytest.mark.slow  # the toy pretraining run (module fixture `built`)
def test_the_flow_model_is_a_plain_sd3_pipeline_on_the_teachers_vae_and_text_encoder(built):
    out = built / "out"
    flow = StableDiffusion3Pipeline.from_pretrained(out / "flow")
    teacher = StableDiffusionPipeline.from_pretrained(out / "teacher")
    assert flow.vae.config.shift_factor == 0.0
    for name, weight in teacher.vae.state_dict().items():
        assert torch.equal(flow.vae.state_dict()[name], weight), name
    for encoder in (flow.text_encoder, flow.text_encoder_2):
        for name, weight in getattr(teacher.text_encoder, "text_model", teacher.text_encoder).state_dict().items():
            assert torch.equal(encoder.text_model.state_dict()[name], weight), name
    prompt = train_scenes()[0].prompt
    embeds = flow.encode_prompt([prompt], None, None, do_classifier_free_guidance=False)[0]
    assert embeds.shape[1] == flow.tokenizer_max_length + 256 and not embeds[:, flow.tokenizer_max_length :].any()
    images = flow([prompt], num_inference_steps=2, output_type="pt").images  # diffusers' defaults, 256 zero tokens
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()


@pytest.mark.slow  # the toy pretraining run (module fixture `built`)
def test_genrl_samples_the_flow_model_with_one_zero_t5_token(built):
    from genrl.envs import make_env
    from genrl.models import load_pipeline

    pipe = load_pipeline(str(built / "out" / "flow"), "flow")
    env = make_env("flow", 2, pipe, None, num_steps=2)
    # The prompt's CLIP tokens, one zero T5 token (its tokenizer's model_max_length), the pooled row.
    assert env.text_shape() == (pipe.tokenizer_max_length + 1 + 1, pipe.transformer.config.joint_attention_dim)
    packed = env.encode_prompts([train_scenes()[0].prompt])
    assert not packed[:, pipe.tokenizer_max_length].any()


def test_one_zero_token_counted_as_many_is_that_many_zero_tokens():
    """What the flow stage trains with: one zero T5 token whose attention logit gains log n computes what n zero
    tokens compute, for the image tokens (up to float rounding)."""
    torch.manual_seed(0)
    net = components.build_flow_transformer().eval()
    latents, sigma = torch.randn(2, 4, 16, 16), torch.tensor([300.0, 800.0])
    clip = torch.randn(2, 16, net.config.joint_attention_dim)
    pooled = torch.randn(2, net.config.pooled_projection_dim)

    def velocity(zero_tokens: int) -> torch.Tensor:
        context = torch.cat([clip, torch.zeros(2, zero_tokens, clip.shape[-1])], dim=1)
        return net(latents, context, pooled, sigma).sample

    with torch.no_grad():
        many = velocity(256)
        with zero_tokens_counted(torch.tensor([256, 256])):
            counted = velocity(1)
        with zero_tokens_counted(torch.tensor([1, 256])):
            mixed = velocity(1)
        one = velocity(1)
    torch.testing.assert_close(counted, many, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixed, torch.cat([one[:1], many[1:]]), rtol=1e-4, atol=1e-5)
    assert (one - many).abs().max() > 1e-3  # the count matters, so the check above could fail


@pytest.mark.slow  # the toy pretraining run (module fixture `built`)
def test_the_flow_stage_trains_on_an_exported_teacher_alone(built, tmp_path):
    """A fresh work directory (no vae or teacher stage): the flow stage takes both from --out-dir's teacher."""
    out = tmp_path / "out"
    shutil.copytree(built / "out" / "teacher", out / "teacher")
    main(["flow", "--scale", "toy", "--work-dir", str(tmp_path / "work"), "--out-dir", str(out)])
    assert (out / "flow" / "model_index.json").exists()
    assert not (tmp_path / "work" / "vae").exists() and not (tmp_path / "work" / "teacher").exists()
    flow = StableDiffusion3Pipeline.from_pretrained(out / "flow")
    assert flow.transformer.config.in_channels == flow.vae.config.latent_channels


@pytest.mark.slow  # the toy pretraining run (module fixture `built`)
def test_pretrain_resumes_finished_and_checkpointed_stages(built, capsys):
    main(["vae", "--scale", "toy", "--work-dir", str(built), "--out-dir", str(built / "out")])
    assert "vae: resuming at step 3" in capsys.readouterr().out


def test_a_stage_needs_the_stages_before_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["lcm", "--scale", "toy", "--work-dir", str(tmp_path)])
    assert info.value.code == 2
    assert "has not finished" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--lcm-solver-span", "0"],
            "--lcm-solver-span 0 is not a number of intervals of the 50-step grid; pass 1 to 50 (2 is the default)",
        ),
        (["--lcm-huber-c", "0"], "--lcm-huber-c 0.0 must be above 0; pass e.g. 0.001 (the default)"),
    ],
)
def test_a_bad_distillation_flag_is_a_one_line_error(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as info:
        main(["lcm", "--scale", "toy", "--work-dir", str(tmp_path / "w"), *flags])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]
    assert not (tmp_path / "w").exists()


def test_an_average_copies_then_decays_at_a_fixed_rate_across_a_resume(tmp_path):
    """A copy for ``copy_steps`` steps, then (1 - decay) of the way to the source every step, the first one and the
    first after a resume included (diffusers' EMAModel, left to its defaults, would warm its decay up)."""
    torch.manual_seed(0)
    source = torch.nn.Linear(3, 2)
    modules = {"source": source, "target": copy.deepcopy(source).requires_grad_(False)}
    optimizer = torch.optim.SGD(source.parameters(), lr=0.1)
    decay, copy_steps, steps = 0.75, 2, 7
    moved = [p.detach().double().clone() for p in source.parameters()]
    expected = [p.clone() for p in moved]
    for i in range(steps):
        moved = [p + (1.0 + i) for p in moved]
        expected = [m.clone() if i < copy_steps else e + (1 - decay) * (m - e) for e, m in zip(expected, moved)]

    interrupt_at = [4]  # after the checkpoint of step 2: the second run resumes at step 3

    def step_fn(i: int) -> dict[str, float]:
        if i in interrupt_at:
            raise KeyboardInterrupt
        with torch.no_grad():
            for p in source.parameters():
                p.add_(1.0 + i)
        return {}

    def train() -> None:
        cfg = PretrainConfig(work_dir=tmp_path, checkpoint_every=3)
        averages = {"target": Average("source", decay, copy_steps)}
        _train_loop("average", cfg, modules, optimizer, steps, step_fn, averages)

    with pytest.raises(KeyboardInterrupt):
        train()
    interrupt_at.clear()
    train()
    for p, e in zip(modules["target"].parameters(), expected):
        torch.testing.assert_close(p.double(), e)


def test_consistency_distance_is_squared_error_or_pseudo_huber():
    goal = torch.randn(4, 4, 16, 16)
    far, near = goal + torch.randn_like(goal), goal + 1e-6 * torch.randn_like(goal)
    assert consistency_distance(far, goal, "l2", 0.001) == torch.nn.functional.mse_loss(far, goal)
    # Linear in large errors: within c of the absolute error ...
    huber_far = consistency_distance(far, goal, "huber", 0.001)
    assert abs(huber_far - torch.nn.functional.l1_loss(far, goal)) <= 0.001
    # ... and quadratic in small ones, d^2 / 2c.
    huber_near = consistency_distance(near.double(), goal.double(), "huber", 0.001)
    expected = torch.nn.functional.mse_loss(near.double(), goal.double()) / 0.002
    torch.testing.assert_close(huber_near, expected, rtol=1e-5, atol=0)
    assert consistency_distance(goal, goal, "huber", 0.001) == 0


@pytest.mark.slow  # the toy pretraining run (module fixture `built`)
def test_shapes_reward_is_the_probability_of_every_prompted_attribute(built):
    reward = ShapesAlignment(built / "out" / "reward")
    scenes = train_scenes()[:3]
    images = torch.rand(3, 3, 64, 64, requires_grad=True)
    value = reward(images, [s.prompt for s in scenes], [{}] * 3)
    logits = reward.classifier(images)
    expected = torch.ones(3)
    for name in ATTRIBUTES:
        probs = torch.softmax(logits[name], dim=-1)
        expected = expected * torch.stack([probs[i, s.label()[name]] for i, s in enumerate(scenes)])
    torch.testing.assert_close(value, expected)
    value.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert parse_prompt(scenes[0].prompt) == scenes[0]
    with pytest.raises(GenrlError, match="not a shapes-world prompt"):
        reward(images, ["a cat", "a dog", "a cow"], [{}] * 3)
