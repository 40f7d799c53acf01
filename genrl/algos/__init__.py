"""Policy-gradient algorithms over the shared ``TrajectoryBuffer``: each is an ``update(policy, optimizer,
buffer, cfg, generator)`` that returns the epoch's training statistics."""

from genrl.algos import ppo, reinforce

ALGORITHMS = {"ppo": ppo.update, "reinforce": reinforce.update}

__all__ = ["ALGORITHMS"]
