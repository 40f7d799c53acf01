"""The benchmark report's figures: training curves (Figs. 4-5) and the final models' evaluations (Figs. 6-8)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from benchmarks.methods import METHODS, RLCM_PPO
from benchmarks.summary import TASK_REWARD, curve, evaluations, with_task_reward


@contextmanager
def _figure(path: Path, rows: int, columns: int, height: float) -> Iterator[np.ndarray]:
    """A grid of axes, one column per task, saved to ``path`` when the block ends."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, height), squeeze=False)
    yield axes
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mean_curve(runs: list[list[dict]], x: str, key: str, points: int = 60) -> tuple[np.ndarray, ...]:
    """``key`` against ``x``, interpolated on a grid up to the shortest run; mean and std over seeds."""
    curves = [curve(m, x, key) for m in runs]
    grid = np.linspace(0.0, min(c[0][-1] for c in curves), points)
    values = np.array([np.interp(grid, cx, cy) for cx, cy in curves])
    return grid, values.mean(axis=0), values.std(axis=0)


def plot_curves(results: dict, x: str, xlabel: str, path: Path) -> None:
    """Eval task reward and prompt accuracy against ``x`` per task: each method's mean and std band over seeds."""
    tasks = list(results["tasks"])
    rows = [(TASK_REWARD, "eval task reward"), ("eval_prompt_accuracy", "eval prompt accuracy")]
    with _figure(path, 2, len(tasks), 6.4) as axes:
        for column, task in enumerate(tasks):
            for row, (key, label) in enumerate(rows):
                ax = axes[row][column]
                for name, runs in with_task_reward(results["tasks"][task]["runs"], task).items():
                    if not all(curve(m, x, key)[1] for m in runs):
                        continue
                    if all(len(m) == 1 for m in runs):  # a reference, not trained: its start
                        start = np.mean([curve(m, x, key)[1][0] for m in runs])
                        ax.axhline(start, ls="--", c="gray", label=f"{name} start")
                        continue
                    grid, mean, std = mean_curve(runs, x, key)
                    ax.plot(grid, mean, label=name)
                    ax.fill_between(grid, mean - std, mean + std, alpha=0.2)
                ax.set_title(task if row == 0 else "")
                ax.set_xlabel(xlabel)
                ax.set_ylabel(label)
                ax.grid(alpha=0.3)
            axes[0][column].legend(fontsize=8)  # the methods differ between tasks


def plot_frontier(results: dict, path: Path) -> None:
    """Per task and method, the mean over seeds of the task-reward gain against the prompt accuracy as a share of
    the start, one point per evaluation (the start at (1, 0)); the protocol's 80% floor as a line."""
    tasks = list(results["tasks"])
    # One colour a method in every panel: matplotlib's cycle restarts per panel, and the panels list other methods.
    colours = {method.name: f"C{index}" for index, method in enumerate(METHODS.values())}
    with _figure(path, 1, len(tasks), 3.8) as axes:
        for column, task in enumerate(tasks):
            ax = axes[0][column]
            for name, runs in with_task_reward(results["tasks"][task]["runs"], task).items():
                if all(len(m) == 1 for m in runs):  # a reference, not trained
                    continue
                curves = [(evaluations(m)[2], evaluations(m, "eval_prompt_accuracy")[2]) for m in runs]
                if not all(accuracy for _, accuracy in curves):
                    continue
                length = min(len(reward) for reward, _ in curves)
                gain = np.mean([np.subtract(r[:length], r[0]) for r, _ in curves], axis=0)
                kept = np.mean([np.divide(a[:length], a[0]) for _, a in curves], axis=0)
                ax.plot(kept, gain, marker=".", label=name, color=colours.get(name))
            ax.axvline(0.8, ls="--", c="gray", lw=0.8, label="80% of the start")
            ax.invert_xaxis()
            ax.set_title(task)
            ax.set_xlabel("eval prompt accuracy / start")
            ax.set_ylabel("eval task reward gain")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)


def plot_evaluations(results: dict, out: Path) -> None:
    """Figs. 6-8 into ``out``, for the tasks whose final models were evaluated."""
    evaluated = {task: data["evaluation"] for task, data in results["tasks"].items() if data.get("evaluation")}
    if not evaluated:
        return
    plot_inference_budget(evaluated, out / "fig6_inference_budget.png")
    plot_lcm_steps(evaluated, out / "fig7_lcm_steps.png")
    plot_heldout(evaluated, out / "fig8_heldout.png")


def plot_inference_budget(evaluated: dict[str, dict], path: Path) -> None:
    """Fig. 6: reward against inference time per image, the final models at several step counts."""
    with _figure(path, 1, len(evaluated), 3.6) as axes:
        for ax, (task, evaluation) in zip(axes[0], evaluated.items()):
            for method in (m for m in METHODS.values() if m.shown and m.name in evaluation):
                sweep = evaluation[method.name]["steps"]
                xs = [v["seconds_per_image"] for v in sweep.values()]
                ys = [v["reward"] for v in sweep.values()]
                ax.plot(xs, ys, "o-", label=method.name)
                for steps, x, y in zip(sweep, xs, ys):
                    ax.annotate(steps, (x, y), fontsize=7)
            ax.set_title(task)
            ax.set_xlabel("seconds per image")
            ax.set_ylabel("reward of the final model")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)


def plot_lcm_steps(evaluated: dict[str, dict], path: Path) -> None:
    """Fig. 7: RLCM's reward and inference time against the number of LCM steps H."""
    with _figure(path, 1, len(evaluated), 3.6) as axes:
        for ax, (task, evaluation) in zip(axes[0], evaluated.items()):
            sweep = evaluation[RLCM_PPO.name]["steps"]
            hs = [int(h) for h in sweep]
            ax.plot(hs, [v["reward"] for v in sweep.values()], "o-", color="C0")
            ax.set_xlabel("LCM steps H")
            ax.set_ylabel("reward", color="C0")
            twin = ax.twinx()
            twin.plot(hs, [v["seconds_per_image"] for v in sweep.values()], "s--", color="C1")
            twin.set_ylabel("seconds per image", color="C1")
            ax.set_title(task)


def plot_heldout(evaluated: dict[str, dict], path: Path) -> None:
    """Fig. 8: each final model's reward on trained and on held-out prompts."""
    with _figure(path, 1, len(evaluated), 3.6) as axes:
        for ax, (task, evaluation) in zip(axes[0], evaluated.items()):
            names = [n for n in evaluation if evaluation[n].get("heldout_reward") is not None]
            xs = np.arange(len(names))
            ax.bar(xs - 0.2, [evaluation[n]["trained_reward"] for n in names], 0.4, label="trained prompts")
            ax.bar(xs + 0.2, [evaluation[n]["heldout_reward"] for n in names], 0.4, label="held-out prompts")
            ax.set_xticks(xs, [n.replace(" ", "\n", 1) for n in names], fontsize=7)
            ax.set_title(task)
            ax.set_ylabel("reward of the final model")
        axes[0][0].legend(fontsize=8)
