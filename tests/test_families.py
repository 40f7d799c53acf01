"""The --env names: each pairs a registered sampler with the models it samples, and is a Gymnasium id; a sampler's
settings are its own, and a setting of another sampler is refused in one line."""

import dataclasses
import typing

import gymnasium as gym
import pytest

from genrl.adapters import ADAPTERS, adapter_class
from genrl.config import TrainConfig
from genrl.config_sampler import SAMPLER_FIELDS
from genrl.errors import GenrlError
from genrl.families import ENV_IDS, FAMILIES, FamilyName, family
from genrl.presets import PRESETS
from genrl.samplers import SAMPLERS, sampler_class
from genrl.samplers.base import Sampler, settings_fields
from genrl.train import parse_config
from tests.helpers import expect_error


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_a_sampler_module_holds_its_settings_and_maths(name):
    cls = sampler_class(name)
    assert issubclass(cls, Sampler) and cls.name == name and dataclasses.is_dataclass(cls.Settings)
    assert cls.model_kind in {"consistency", "diffusion", "flow"} and cls.default_steps >= 1
    # Every setting is a TrainConfig flag of that name, with the sampler's default as its default (or unset).
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for setting in dataclasses.fields(cls.Settings):
        assert setting.name in SAMPLER_FIELDS, setting.name
        assert fields[setting.name] in (setting.default, None), setting.name
    cls.validate(cls.Settings(), cls.default_steps)  # the defaults are valid


def test_every_sampler_setting_flag_belongs_to_a_sampler():
    owned = {field for name in SAMPLERS for field in settings_fields(sampler_class(name).Settings)}
    assert owned == set(SAMPLER_FIELDS)


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_every_adapter_is_a_model_kind_some_sampler_samples(name):
    kinds = {sampler_class(s).model_kind for s in SAMPLERS}
    assert adapter_class(name).model_kind in kinds


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_is_registered_with_gymnasium(name):
    spec = gym.spec(ENV_IDS[name])
    assert spec.entry_point == "genrl.envs.single:SingleImageEnv"
    assert spec.vector_entry_point == "genrl.envs.make:batched_env"
    assert spec.kwargs == {"kind": name} and family(name).sampler in SAMPLERS


def test_env_takes_exactly_the_registered_names():
    assert typing.get_args(FamilyName) == tuple(FAMILIES)
    assert ENV_IDS == {"lcm": "genrl/LCM-v0", "ddpm": "genrl/DDPM-v0", "flow": "genrl/FLOW-v0"}
    with pytest.raises(ValueError, match="env kind must be one of"):
        family("ddim")


def test_every_preset_names_a_registered_family():
    assert {preset.env for preset in PRESETS.values()} <= set(FAMILIES)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(env="lcm", num_steps=51), "too many for the LCM schedule"),
        (dict(env="lcm", num_steps=1), "no stochastic step"),
        (dict(env="ddpm", noise_last_step=True), "--noise-last-step is a setting of the lcm sampler"),
        (dict(env="ddpm", eta=0.0), "makes DDIM deterministic"),
        (dict(env="ddpm", sde_window=(3, 2)), "not a window"),
        (dict(env="flow", noise_level=0.0), "deterministic Euler step"),
        (dict(env="flow", noise_last_step=True), "--noise-last-step is a setting of the lcm sampler"),
        (dict(env="lcm", eta=0.5), "--eta is a setting of the ddim sampler"),
        (dict(env="lcm", noise_level=0.3), "--noise-level is a setting of the flow_sde and cps samplers"),
        (dict(env="lcm", sde_window=(0, 2)), "--sde-window is a setting of the ddim, flow_sde and cps samplers"),
        (dict(env="flow", sampler="cps", noise_mode="constant"), "--noise-mode is a setting of the flow_sde"),
        (dict(env="flow", sampler="cps", noise_level=1.5), "must be in \\(0, 1\\]"),
        (dict(env="flow", sampler="ddim"), "--sampler ddim samples diffusion models and --env flow loads flow"),
        (dict(env="lcm", sampler="flow_sde"), "--sampler flow_sde samples flow models"),
    ],
)
def test_the_configuration_checks_of_each_sampler_are_its_own(overrides, message):
    with pytest.raises(GenrlError, match=message):
        TrainConfig(**overrides).validate()


def test_a_flag_of_another_sampler_is_refused_even_at_its_default(capsys):
    """--eta 1.0 is DDIM's default: given to an LCM run it would be silently ignored, so it is an error."""
    expect_error(capsys, ["--eta", "1.0"], "--eta is a setting of the ddim sampler")
    expect_error(capsys, ["--env", "flow", "--no-noise-last-step"], "--noise-last-step is a setting of the lcm")
    assert parse_config(["--env", "ddpm", "--eta", "1.0"]).eta == 1.0


def test_dpg_keeps_every_lcm_step_and_the_last_ddim_and_flow_step_by_default():
    assert sampler_class("lcm").default_grad_steps(4) == 4
    assert sampler_class("ddim").default_grad_steps(20) == 1
    assert sampler_class("flow_sde").default_grad_steps(10) == 1
    assert sampler_class("cps").default_grad_steps(10) == 1


def test_an_old_config_json_with_every_samplers_settings_resumes(tmp_path):
    """Runs saved before the samplers owned their settings carried all of them: an LCM run's config.json with the
    flow sampler's noise level and an --eta it ignored still reads, those settings unset."""
    import json

    from genrl.config_file import config_to_json, read_config

    saved = config_to_json(TrainConfig())
    saved.update(eta=0.5, noise_level=0.7, sde_window=[0, 2])
    saved.pop("sampler")  # written before --sampler existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    cfg = read_config(tmp_path / "config.json")
    assert (cfg.eta, cfg.noise_level, cfg.sde_window, cfg.sampler) == (1.0, None, None, None)
    cfg.validate()
