"""The experiment trackers a run logs to beside metrics.jsonl and samples/ (``--log-with``, the name of accelerate's
``Accelerator(log_with=...)``): TensorBoard, the default, written by ``RunDir`` into RUN/tensorboard; wandb and
mlflow through accelerate's own tracker classes (``WandBTracker``, ``MLflowTracker``), started by the main process
once the run directory exists, each given the run's configuration, every epoch's metrics (the TensorBoard tags:
``loss``, ``reward_parts/NAME``) and the sample grids (``samples``, ``samples-eval``, ``samples-ema``).

wandb writes its files under RUN/wandb (offline too, ``WANDB_MODE=offline``) in project ``WANDB_PROJECT`` (default
genrl); mlflow logs to ``MLFLOW_TRACKING_URI`` in experiment ``MLFLOW_EXPERIMENT_NAME`` (default genrl). Each run
and each resumed segment of it is a new tracker run named as the run directory.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from genrl.errors import GenrlError

TrackerName = Literal["tensorboard", "wandb", "mlflow"]

_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
"""The module each tracker needs, and the genrl extra that installs it."""

_SETTINGS = {
    "wandb": "run wandb login, or set WANDB_MODE=offline",
    "mlflow": "set MLFLOW_TRACKING_URI to a server (http://HOST:PORT), or file:PATH with MLFLOW_ALLOW_FILE_STORE=true",
}
"""How a tracker that cannot start is set up."""


def _first_sentence(exc: Exception) -> str:
    """A tracker's exception in a few words: its message's first sentence on one line, or its type."""
    return " ".join(str(exc).split()).split(". ")[0][:200] or type(exc).__name__


@contextmanager
def _one_line(name: str) -> Iterator[None]:
    """A tracker that fails mid-run (its server gone, its disk full) ends the run in one line, the checkpoints kept."""
    try:
        yield
    except Exception as exc:
        reason = _first_sentence(exc)
        raise GenrlError(
            f"--log-with {name} failed while logging ({reason}); fix it and continue with --resume RUN, or resume "
            f"without --log-with {name}"
        ) from None


def check_installed(names: tuple[str, ...]) -> None:
    """A tracker whose package is missing is refused in one line, before any work."""
    for name in names:
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            extra = f"'genrl[{name}]'" if name != "tensorboard" else "tensorboard"
            raise GenrlError(f"--log-with {name} needs the {name} package: pip install {extra}")


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """An epoch's record as tracker scalars, TensorBoard's tags: every number but the epoch (the step), and a dict's
    numbers as ``KEY/NAME`` (a composite reward's parts)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if key != "epoch" and isinstance(value, (int, float)):
            flat[key] = value
        elif isinstance(value, dict):
            flat.update({f"{key}/{name}": v for name, v in value.items()})
    return flat


def _flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """config.json's values, an algorithm's settings as ``ppo.clip_range``; lists as text (mlflow's params)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value) if isinstance(value, list) else value
    return flat


class Trackers:
    """The wandb and mlflow trackers of a run (TensorBoard is ``RunDir``'s own writer), on the main process."""

    def __init__(self, names: tuple[str, ...], run_path: Path):
        self.names = [name for name in names if name != "tensorboard"]
        self.run_path = run_path
        self._started: list[Any] = []

    def start(self, config: dict[str, Any]) -> None:
        from accelerate.tracking import MLflowTracker, WandBTracker

        run_name = self.run_path.name
        for name in self.names:
            try:
                if name == "wandb":
                    # accelerate's tracker names the wandb project after its first argument.
                    tracker = WandBTracker(
                        os.environ.get("WANDB_PROJECT", "genrl"), name=run_name, dir=str(self.run_path)
                    )
                else:  # MLFLOW_EXPERIMENT_NAME, where set, overrides the experiment
                    tracker = MLflowTracker(experiment_name="genrl", run_name=run_name)
                tracker.start()
                tracker.store_init_configuration(config if name == "wandb" else _flat_config(config))
            except Exception as exc:  # no login, no server, a refused store: the tracker's own words, one line
                self.finish(failed=True)
                reason = _first_sentence(exc)
                raise GenrlError(
                    f"--log-with {name} could not start its run ({reason}); {_SETTINGS[name]}, or drop it"
                ) from None
            self._started.append(tracker)

    def log(self, values: dict[str, float], step: int) -> None:
        for tracker in self._started:
            with _one_line(tracker.name):
                tracker.log(values, step=step)

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        """One HWC uint8 image (a sample grid) under ``tag`` at ``step``."""
        for tracker in self._started:
            with _one_line(tracker.name):
                if tracker.name == "wandb":
                    tracker.log_images({tag: [image]}, step=step)
                else:
                    import mlflow

                    mlflow.log_image(image, key=tag, step=step)

    def finish(self, failed: bool = False) -> None:
        """Ends each tracker's run, marked failed where the training run failed."""
        for tracker in self._started:
            if tracker.name == "wandb":
                tracker.run.finish(exit_code=1 if failed else 0)
            else:
                import mlflow

                mlflow.end_run(status="FAILED" if failed else "FINISHED")
        self._started = []
