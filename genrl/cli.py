"""The command line of ``python -m genrl.train``: its arguments to a checked ``TrainConfig``, the preset (or, on
--resume, the run's saved config.json) first and the flags on top."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
import typing
from pathlib import Path

import tyro

from genrl.algos.registry import settings_name
from genrl.config import TrainConfig, as_type, config_type, replace_config
from genrl.config_file import FIXED_ON_RESUME, read_config
from genrl.config_sampler import flags_of_other_samplers
from genrl.errors import GenrlError
from genrl.presets import DEFAULT_PRESET, preset

USAGE = """``python -m genrl.train``: fine-tune an LCM (RLCM) or a diffusion model (DDPO) against a reward.

python -m genrl.train                                  # the default preset, a few minutes on a CPU
python -m genrl.train --preset rlcm-compression        # the paper's hyperparameters
python -m genrl.train --resume runs/NAME --epochs 20   # continue a run exactly
"""
"""The head of ``--help``."""


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """``argv`` (default: the process's) as a checked configuration; a mistake is a ``GenrlError`` naming the fix."""
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=None)
    pre.add_argument("--resume", type=Path, default=None)
    pre.add_argument("--algo", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.resume is not None:
        if known.preset is not None:
            raise GenrlError("--preset cannot change on --resume (the run keeps its saved configuration); drop it")
        base = read_config(known.resume / "config.json")
    else:
        base = preset(known.preset or DEFAULT_PRESET)
    # The algorithm is resolved before parsing, as the preset is: its settings are flags of their own.
    if known.algo is not None and known.algo != base.algo:
        if known.resume is not None:
            raise GenrlError(f"--algo cannot change on --resume (the run trains with {base.algo!r}); drop it")
        base = replace_config(base, algo=known.algo)
    parser = config_type(base.algo)
    _check_flags(argv, base)
    cfg = as_type(tyro.cli(parser, default=as_type(base, parser), args=argv, description=USAGE), TrainConfig)
    if known.resume is not None:
        for name in FIXED_ON_RESUME:
            if getattr(cfg, name) != getattr(base, name):
                raise GenrlError(
                    f"--{name.replace('_', '-')} cannot change on --resume (the checkpoint fits "
                    f"{getattr(base, name)!r}); start a new run instead"
                )
    cfg.validate()
    # A sampler flag left at its default passes validate; given on the command line, it would be silently ignored.
    given = {token.split("=", 1)[0][2:].replace("-", "_") for token in argv if token.startswith("--")}
    flags_of_other_samplers(cfg, given | {name.removeprefix("no_") for name in given})
    return cfg


def _check_flags(argv: list[str], base: TrainConfig) -> None:
    """An unknown flag (a misspelt ``--ppo.clip-rang``, a setting of another algorithm) is one line that names the
    nearest known one; tyro's own answer is a box of several lines."""
    groups = [("", TrainConfig)]
    if base.algo_config is not None:
        groups.append((f"{settings_name(base.algo)}.", type(base.algo_config)))
    known = {"--help", "-h"}
    for prefix, cls in groups:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name == "algo_config":
                continue
            flag = "--" + (prefix + f.name).replace("_", "-")
            known.add(flag)
            if hints[f.name] is bool:  # tyro's --no-FLAG
                head, dot, tail = flag[2:].rpartition(".")
                known.add(f"--{head}{dot}no-{tail}")
    for token in argv:
        flag = token.split("=", 1)[0].replace("_", "-")
        if flag.startswith("--") and flag not in known:
            near = difflib.get_close_matches(flag, sorted(known), n=1)
            hint = f"did you mean {near[0]}?" if near else "see --help"
            raise GenrlError(f"unknown flag {flag} (with --algo {base.algo}); {hint}")
