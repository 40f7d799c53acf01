"""Finding an algorithm by name: the built-ins, the ``genrl.algorithms`` entry points, or ``package.module:Class``.

Kept apart from the interface (``base.py``) so that no algorithm module imports the registry that lists it.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from importlib.metadata import entry_points
from typing import Any

from genrl.errors import GenrlError
from genrl.plugins import describe, import_object, load_entry_point

BUILTIN_ALGORITHMS = {
    "ppo": "genrl.algos.ppo:PPO",
    "reinforce": "genrl.algos.reinforce:REINFORCE",
    "dpg": "genrl.algos.dpg:DPG",
    "nft": "genrl.algos.nft:NFT",
    "dpo": "genrl.algos.dpo:DPO",
}


def is_builtin(spec: str) -> bool:
    return spec in BUILTIN_ALGORITHMS


def algorithm_class(spec: str) -> type:
    """The class ``spec`` names, checked to be an algorithm (``update``, and ``Config`` a dataclass if it has one)."""
    plugins = {ep.name: ep for ep in entry_points(group="genrl.algorithms")}
    if spec in BUILTIN_ALGORITHMS:
        cls = import_object(BUILTIN_ALGORITHMS[spec], "algorithm")
    elif spec in plugins:
        cls = load_entry_point(plugins[spec], "algorithm")
    elif ":" in spec:
        cls = import_object(spec, "algorithm")
    else:
        names = ", ".join([*BUILTIN_ALGORITHMS, *plugins])
        raise GenrlError(f"unknown algorithm '{spec}'; use one of {names} or 'package.module:Class'")
    update = getattr(cls, "update", None)
    if not inspect.isclass(cls) or not callable(update):
        raise GenrlError(
            f"algorithm '{spec}' is not a class with an update(policy, optimizer, batch) method; see "
            "docs/algorithms.md, 'Write your own algorithm'"
        )
    config = getattr(cls, "Config", None)
    if config is not None and not (inspect.isclass(config) and dataclasses.is_dataclass(config)):
        raise GenrlError(f"algorithm '{spec}': its Config must be a dataclass of hyperparameters")
    return cls


def settings_name(spec: str) -> str:
    """Where an algorithm's settings sit on the command line and in config.json: ``--ppo.clip-range``,
    ``{"ppo": {...}}``. A name (built-in or entry point) as it is; ``package.module:SignOfAdvantage`` as
    ``sign_of_advantage``."""
    name = spec.rpartition(":")[2] if ":" in spec else spec
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
    return re.sub(r"\W", "_", snake) or "algo"


def make_algorithm(spec: str, config: Any) -> Any:
    """The algorithm ``spec`` names, built with ``config`` (an instance of its ``Config``; None if it has none)."""
    cls = algorithm_class(spec)
    try:
        return cls(config) if getattr(cls, "Config", None) is not None else cls()
    except GenrlError:
        raise
    except TypeError as exc:
        raise GenrlError(f"algorithm '{spec}' could not be built ({exc}); its __init__ takes its Config") from exc
    except (Exception, SystemExit) as exc:
        raise GenrlError(f"algorithm '{spec}' could not be built: it raised {describe(exc)}; fix it") from exc
