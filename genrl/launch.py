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

Several machines (nodes), as ``accelerate launch``: the same command on each, ``--num-processes`` counting all of
them, ``--machine-rank`` 0 to M - 1, the main machine's address and a port it can open; the run is defined on the
global batch as on one machine. The launchers must all meet within the run's ``--process-timeout-s`` (torch's
default is 30 minutes): a machine that never joins ends the others with one line, exit status 1.

    python -m genrl.launch --num-machines 2 --machine-rank 0 --main-process-ip 10.0.0.1 --main-process-port 29500 \
        --num-processes 16 --preset rlcm-compression              # and --machine-rank 1 on the other machine
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genrl.distributed import Machines

_USAGE = (
    "python -m genrl.launch [--num-processes N] [--num-machines M --machine-rank R --main-process-ip IP "
    "--main-process-port PORT] [genrl.train flags]"
)


def _import_torch_quietly() -> None:
    """torch, with its C++ log off in this process: c10d's retries and stack traces while the machines meet repeat
    the line this one ends with. torch reads the level as it loads, so the training processes, which get this
    process's environment, keep theirs (TORCH_CPP_LOG_LEVEL or LOGLEVEL set: as set)."""
    quiet = "TORCH_CPP_LOG_LEVEL" not in os.environ and "LOGLEVEL" not in os.environ
    if quiet:
        os.environ["TORCH_CPP_LOG_LEVEL"] = "FATAL"
    try:
        import torch  # noqa: F401
    finally:
        if quiet:
            del os.environ["TORCH_CPP_LOG_LEVEL"]


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


def _fail(message: str, status: int = 2):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


def _process_timeout_s(train_args: list[str]) -> float:
    """The run's --process-timeout-s: given, else the resumed run's, else the default."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--process-timeout-s", "--process_timeout_s", type=float, default=None)
    parser.add_argument("--resume", type=Path, default=None)
    known, _ = parser.parse_known_args(train_args)
    if known.process_timeout_s is None and known.resume is not None:
        try:
            known.process_timeout_s = json.loads((known.resume / "config.json").read_text())["process_timeout_s"]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # the run's processes say what is wrong with it
    if known.process_timeout_s is None:
        from genrl.config import TrainConfig

        return TrainConfig.process_timeout_s
    return known.process_timeout_s


def _machines(known: argparse.Namespace, processes: int) -> Machines | None:
    """Several machines' settings, checked; None on one machine."""
    from genrl.distributed import Machines

    if known.num_machines < 1:
        _fail(f"--num-machines must be at least 1, got {known.num_machines}")
    if known.num_machines == 1:
        return None
    if known.main_process_ip is None or known.main_process_port is None:
        _fail("--num-machines > 1 needs the main machine's --main-process-ip and --main-process-port, the same on each")
    if not 0 <= known.machine_rank < known.num_machines:
        _fail(f"--machine-rank must be from 0 to {known.num_machines - 1}, got {known.machine_rank}")
    if processes % known.num_machines:
        _fail(
            f"--num-processes counts the processes of all {known.num_machines} machines: a multiple of "
            f"{known.num_machines}, got {processes}"
        )
    return Machines(known.num_machines, known.machine_rank, known.main_process_ip, known.main_process_port)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m genrl.launch", usage=_USAGE, add_help=False, allow_abbrev=False)
    parser.add_argument("--num-processes", "--num_processes", type=int, default=None)
    parser.add_argument("--num-machines", "--num_machines", type=int, default=1)
    parser.add_argument("--machine-rank", "--machine_rank", type=int, default=0)
    parser.add_argument("--main-process-ip", "--main_process_ip", default=None)
    parser.add_argument("--main-process-port", "--main_process_port", type=int, default=None)
    known, train_args = parser.parse_known_args(argv)
    _import_torch_quietly()
    import torch

    from genrl.distributed import accelerate_args

    per_machine = max(1, torch.cuda.device_count())
    processes = known.num_processes if known.num_processes is not None else per_machine * known.num_machines
    if processes < 1:
        _fail(f"--num-processes must be at least 1, got {processes}")
    machines = _machines(known, processes)
    if processes == 1 or {"-h", "--help"} & set(train_args):
        if {"-h", "--help"} & set(train_args):
            print(
                f"usage: {_USAGE}\n--num-processes: of all machines; default, one per GPU (1 without) on each. "
                "The flags of genrl.train:\n"
            )
        from genrl.train import main as train

        train(train_args)
        return

    import torch.distributed.run
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    _quiet_launcher_logs()
    launch = accelerate_args(processes, "genrl.train", train_args, machines, _process_timeout_s(train_args))
    args = launch_command_parser().parse_args(launch)
    try:
        launch_command(args)
    except torch.distributed.DistError as exc:  # the launchers' rendezvous, before any training process started
        reason = " ".join(str(exc).split()).split(". ")[0][:200].rstrip(".")
        main_process = f"{known.main_process_ip}:{known.main_process_port}"
        _fail(
            f"the {known.num_machines} machines did not all join the run within --process-timeout-s "
            f"{_process_timeout_s(train_args):g} ({reason}); start the launch of every --machine-rank from 0 to "
            f"{known.num_machines - 1}, all with the main process at {main_process}, reachable from each",
            1,
        )
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
