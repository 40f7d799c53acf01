"""Whether a results.json holds what the suite writes, so that ``--report-only`` fails before it writes anything."""

from __future__ import annotations

import json

from benchmarks.methods import DDPO_PPO, HEADLINE, METHODS
from benchmarks.runs import Malformed, check_metrics, expect, field, subscript


def check_results(results: object) -> None:
    """``Malformed`` naming the first place where ``results`` (results.json) departs from what ``main`` writes and
    ``summarise``, the figures and the report read, so that ``--report-only`` fails before it writes anything."""
    tasks = field(results, "tasks", "an object", "")
    if not tasks:
        raise Malformed('["tasks"] names no task')
    for task, data in tasks.items():
        at = subscript("", "tasks", task)
        runs = field(data, "runs", "an object", at)
        for method in HEADLINE:
            field(runs, method.name, "a list", subscript(at, "runs"))
        for name, seeds in runs.items():
            if name not in METHODS:  # the summary looks each method up by its name
                known = ", ".join(METHODS)
                raise Malformed(f"{subscript(at, 'runs')} names the method {json.dumps(name)}, not one of {known}")
            where = subscript(at, "runs", name)
            if not expect(seeds, "a list", where):
                raise Malformed(f"{where} holds no run")
            for seed, metrics in enumerate(seeds):
                # Only the baseline may be a reference, evaluated once untrained; the ratios read a fast method's
                # second evaluation where it starts past the target.
                check_metrics(metrics, subscript(where, seed), 1 if METHODS[name].role == "baseline" else 2)
        configs = field(data, "configs", "an object", at)
        ddpo = field(configs, DDPO_PPO.name, "an object", subscript(at, "configs"))
        field(ddpo, "eval_size", "a positive whole number", subscript(at, "configs", DDPO_PPO.name))
        if field(data, "evaluation", "an object", at, optional=True):
            _check_evaluation(data, at)
    meta = field(results, "meta", "an object", "")
    for key in ("suite", "command", "machine", "date", "protocol"):
        field(meta, key, "a string", '["meta"]')
    field(meta, "eval_images", "a positive whole number", '["meta"]')
    for key in ("seeds", "sweep_seeds"):
        for i, seed in enumerate(field(meta, key, "a list", '["meta"]')):
            expect(seed, "a whole number", subscript('["meta"]', key, i))
    if not meta["seeds"]:
        raise Malformed('["meta"]["seeds"] names no seed')
    for task, data in tasks.items():
        for name, seeds in data["runs"].items():
            if len(seeds) != len(meta["seeds"]):
                where = subscript("", "tasks", task, "runs", name)
                raise Malformed(f'{where} holds {len(seeds)} runs, but ["meta"]["seeds"] names {len(meta["seeds"])}')
    field(meta, "total_s", "a number", '["meta"]')
    queries = field(meta, "queries", "an object", '["meta"]')
    eval_queries = field(meta, "eval_queries", "an object", '["meta"]')
    for task in queries:
        field(queries, task, "a number", '["meta"]["queries"]')
        field(eval_queries, task, "a number", '["meta"]["eval_queries"]')


def _check_evaluation(data: dict, at: str) -> None:
    """A task's evaluations of the final models (``data`` at ``at``): the headline methods' at their training
    horizons, which the inference speed-up divides, and every point at a whole step count (Fig. 7 reads it as a
    number)."""
    evaluation = data["evaluation"]
    for method in HEADLINE:
        field(evaluation, method.name, "an object", subscript(at, "evaluation"))
        config = field(data["configs"], method.name, "an object", subscript(at, "configs"))
        horizon = field(config, "num_steps", "a positive whole number", subscript(at, "configs", method.name))
        steps = field(evaluation[method.name], "steps", "an object", subscript(at, "evaluation", method.name))
        field(steps, str(horizon), "an object", subscript(at, "evaluation", method.name, "steps"))
    for method, result in evaluation.items():
        where = subscript(at, "evaluation", method)
        for count, point in field(result, "steps", "an object", where).items():
            if not count.isdigit():
                raise Malformed(f"{subscript(where, 'steps')} has the key {json.dumps(count)}, not a number of steps")
            field(point, "reward", "a number", subscript(where, "steps", count))
            field(point, "seconds_per_image", "a positive number", subscript(where, "steps", count))  # a divisor
        if field(result, "heldout_reward", "a number", where, optional=True) is not None:
            field(result, "trained_reward", "a number", where)
