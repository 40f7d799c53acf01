"""Whether a results.json holds what the suite writes, so that ``--report-only`` fails before it writes anything."""

from __future__ import annotations

import json

from benchmarks.methods import DDPO_PPO, HEADLINE, METHODS
from benchmarks.runs import Malformed, check_metrics, describe, expect, field, is_number, subscript
from benchmarks.summary import NOT_ESTIMABLE, NOT_REACHED


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


def check_summaries(results: dict) -> None:
    """``Malformed`` naming the first comparison in ``results``' task summaries whose protocol v3 object
    (``benchmarks.summary.v3``) departs from what the report reads: every number finite (a NaN in results.json
    reads as a measurement), None only where v3 says "not reached" or "unbounded", and no headline where v3 calls
    the speedup not estimable. Every comparison has one: the RLCM-over-DDPO pair where DDPO trained, and each of
    the contender's."""
    for task, data in field(results, "tasks", "an object", "").items():
        at = subscript("", "tasks", task, "summary")
        summary = field(data, "summary", "an object", subscript("", "tasks", task))
        if "fidelity_speedup" in summary:
            check_v3(field(summary, "v3", "an object", at), subscript(at, "v3"))
        for name, comparison in field(summary, "versus", "an object", at).items():
            where = subscript(at, "versus", name)
            check_v3(field(comparison, "v3", "an object", where), subscript(where, "v3"))


def _check_interval(entry: dict, where: str, nullable: bool) -> None:
    interval = field(entry, "ci95", "a list", where)
    if len(interval) != 2:
        raise Malformed(f"{subscript(where, 'ci95')} should hold 2 ends, not {len(interval)}")
    for i, end in enumerate(interval):
        expect(end, "a number or null" if nullable else "a number", subscript(where, "ci95", i))


def _check_median(entry: object, where: str) -> None:
    expect(entry, "an object", where)
    if "median" not in entry:
        raise Malformed(f'{where} has no "median"')
    value = entry["median"]
    if value != NOT_REACHED and not (is_number(value) and value > 0):
        raise Malformed(
            f'{subscript(where, "median")} should be a positive number or "{NOT_REACHED}", not {describe(value)}'
        )


def check_v3(v3: object, where: str) -> None:
    """One comparison's v3 object at ``where`` (see ``check_summaries``)."""
    names = [field(v3, key, "a string", where) for key in ("slow", "fast")]
    field(v3, "pairs", "a positive whole number", where)
    methods = field(v3, "methods", "an object", where)
    for name in names:
        at = subscript(where, "methods", name)
        method = field(methods, name, "an object", subscript(where, "methods"))
        field(method, "reached", "a whole number", at)
        field(method, "seeds", "a positive whole number", at)
        for measure, entry in field(method, "median", "an object", at).items():
            there = subscript(at, "median", measure)
            _check_median(entry, there)
            _check_interval(entry, there, nullable=True)
            for key in ("followed", "budget"):
                field(entry, key, "a number", there)
        learned = field(method, "learned", "an object", at)
        for i, gain in enumerate(field(learned, "gains", "a list", subscript(at, "learned"))):
            expect(gain, "a number", subscript(at, "learned", "gains", i))
        field(learned, "gain", "a number", subscript(at, "learned"))
        field(learned, "gain_standard_errors", "a number or null", subscript(at, "learned"))
        field(learned, "learned", "true or false", subscript(at, "learned"))
    for measure, entry in field(v3, "restricted", "an object", where).items():
        at = subscript(where, "restricted", measure)
        field(entry, "tau", "a positive number", at)
        means = field(entry, "means", "an object", at)
        for name in names:
            field(means, name, "a positive number", subscript(at, "means"))
        field(entry, "ratio", "a positive number", at)
        if field(entry, "ci95", "a list or null", at) is None:
            field(entry, "why_no_interval", "a string", at)
        else:
            _check_interval(entry, at, nullable=False)
    estimable = v3.get("median_ratio") != NOT_ESTIMABLE
    if estimable:
        for measure, entry in field(v3, "median_ratio", "an object", where).items():
            at = subscript(where, "median_ratio", measure)
            field(entry, "ratio", "a number or null", at)
            _check_interval(entry, at, nullable=True)
    else:
        field(v3, "median_ratio_why_not", "a string", where)
    test = field(v3, "sign_test", "an object", where)
    at = subscript(where, "sign_test")
    wins = field(test, "wins", "an object", at)
    for name in names:
        field(wins, name, "a whole number", subscript(at, "wins"))
    for key in ("ties", "both_censored", "informative"):
        field(test, key, "a whole number", at)
    field(test, "p", "a number or null", at)
    headline = field(v3, "headline", "true or false", where)
    why = field(v3, "headline_why_none", "a string or null", where)
    if headline and not estimable:
        raise Malformed(f'{where} is a headline, but its speedup is "{NOT_ESTIMABLE}"')
    if headline and not all(methods[name]["learned"]["learned"] for name in names):
        raise Malformed(f"{where} is a headline, but a method in it did not learn")
    if headline == (why is not None):
        raise Malformed(f'{where} should say why it is not a headline in "headline_why_none", and only then')
