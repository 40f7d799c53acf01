"""The algorithms. ``ppo`` and ``reinforce`` are ``update(policy, optimizer, buffer, cfg, generator)`` over the
shared ``TrajectoryBuffer`` of sampled trajectories; ``dpg`` samples and backpropagates in one pass
(``dpg.update(env, policy, optimizer, batches, cfg)``). Each returns the epoch's training statistics."""

from genrl.algos import dpg, ppo, reinforce

BUFFER_ALGORITHMS = {"ppo": ppo.update, "reinforce": reinforce.update}

__all__ = ["BUFFER_ALGORITHMS", "dpg"]
