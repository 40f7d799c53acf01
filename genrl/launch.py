"""``python -m genrl.launch --num-processes N [genrl.train flags]``: genrl.train on N local processes.

It is ``accelerate launch --multi_gpu --num_processes N -m genrl.train`` (one process per GPU; gloo on a CPU), with
one difference: when a process fails, the run ends with one ``error:`` line rather than a traceback. accelerate's
multi-GPU launcher (torch elastic) raises ``ChildFailedError`` with its traceback and report whenever a process
exits with a non-zero status, whatever the status, and has no option against it (``--quiet`` covers single-process
and DeepSpeed launches only). Here the same launcher runs in this process: each training process prints its own
``error: ...`` line as it stops, and this one ends with a line naming how each process stopped, and exits with the
largest exit status of theirs (2: an error in the configuration or the data, as ``python -m genrl.train``; 1: a
process stopped because another did, or crashed).

    python -m genrl.launch --num-processes 4 --preset rlcm-compression
    python -m genrl.launch --num-processes 2                        # on a CPU too (gloo)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from genrl.distributed import accelerate_args

_USAGE = "python -m genrl.launch [--num-processes N] [genrl.train flags]"


def _quiet_launcher_logs() -> None:
    """The launcher's own warnings as it stops the processes repeat what the final line says (LOGLEVEL: keep them)."""
    if "LOGLEVEL" in os.environ:
        return
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher", "torch.distributed.run")):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _status(exitcode: int) -> str:
    if exitcode >= 0:
        return f"exit status {exitcode}"
    if exitcode == -signal.SIGTERM:  # what the launcher sends the others once one process has failed
        return "stopped by the launcher"
    try:
        return f"killed by {signal.Signals(-exitcode).name}"
    except ValueError:
        return f"killed by signal {-exitcode}"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m genrl.launch", usage=_USAGE, add_help=False, allow_abbrev=False)
    parser.add_argument("--num-processes", "--num_processes", type=int, default=None)
    known, train_args = parser.parse_known_args(argv)
    import torch

    processes = known.num_processes if known.num_processes is not None else max(1, torch.cuda.device_count())
    if processes < 1:
        print(f"error: --num-processes must be at least 1, got {processes}", file=sys.stderr)
        raise SystemExit(2)
    if processes == 1 or {"-h", "--help"} & set(train_args):
        if {"-h", "--help"} & set(train_args):
            print(f"usage: {_USAGE}\n--num-processes: default, one per GPU (1 without). The flags of genrl.train:\n")
        from genrl.train import main as train

        train(train_args)
        return

    import torch.distributed.run
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    _quiet_launcher_logs()
    args = launch_command_parser().parse_args(accelerate_args(processes, "genrl.train", train_args))
    try:
        launch_command(args)
    except ChildFailedError as exc:
        codes = {rank: failure.exitcode for rank, failure in sorted(exc.failures.items())}
        stopped = "; ".join(f"process {rank}: {_status(code)}" for rank, code in codes.items())
        print(f"error: the run stopped ({stopped}); the errors above say why", file=sys.stderr)
        raise SystemExit(max([code for code in codes.values() if code > 0] + [1])) from None
    except (SignalException, KeyboardInterrupt):
        print("interrupted; the latest complete checkpoint is kept: continue with --resume RUN_DIR", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
