"""The family registry: every --env name leads to one module that holds all its family's parts."""

import dataclasses
import inspect
import typing

import gymnasium as gym
import pytest

from genrl.config import TrainConfig
from genrl.envs import DenoisingEnv, SingleImageEnv
from genrl.errors import GenrlError
from genrl.families import ENV_IDS, FAMILIES, FamilyName, family
from genrl.policy import DenoisingPolicy
from genrl.presets import PRESETS


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_family_module_holds_every_part_the_registry_names(name):
    module = family(name)
    assert issubclass(module.Env, DenoisingEnv) and issubclass(module.SingleEnv, SingleImageEnv)
    assert module.SingleEnv.kind == name and module.SingleEnv.default_num_steps >= 1
    policy_class = typing.get_type_hints(module.make_policy)["return"]
    assert issubclass(policy_class, DenoisingPolicy)
    for part in ("SCHEDULER", "SHAPES_MODEL", "TINY_MODEL", "GUIDANCE_EMBEDDED"):
        assert hasattr(module, part), part
    # Each env option is a TrainConfig field of that name and a keyword of the family's env.
    for option in module.ENV_OPTIONS:
        assert option in {f.name for f in dataclasses.fields(TrainConfig)}, option
        assert option in inspect.signature(module.Env.__init__).parameters, option
    hooks = ("check_pipeline", "policy_options", "validate", "default_grad_steps", "evaluation_steps")
    for hook in hooks:
        assert callable(getattr(module, hook)), hook


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_is_registered_with_gymnasium_from_its_module(name):
    spec = gym.spec(ENV_IDS[name])
    assert spec.entry_point == f"{FAMILIES[name]}:SingleEnv"
    assert spec.vector_entry_point == f"{FAMILIES[name]}:Env"


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
        (dict(env="ddpm", noise_last_step=True), "is an LCM option"),
        (dict(env="ddpm", eta=0.0), "makes DDIM deterministic"),
        (dict(env="flow", noise_level=0.0), "deterministic Euler step"),
        (dict(env="flow", noise_last_step=True), "is an LCM option"),
    ],
)
def test_the_configuration_checks_of_each_family_are_its_own(overrides, message):
    with pytest.raises(GenrlError, match=message):
        TrainConfig(**overrides).validate()


def test_dpg_keeps_every_lcm_step_and_the_last_ddim_and_flow_step_by_default():
    assert family("lcm").default_grad_steps(4) == 4
    assert family("ddpm").default_grad_steps(20) == 1
    assert family("flow").default_grad_steps(10) == 1
