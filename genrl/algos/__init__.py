"""The algorithms: PPO (``ppo.py``), REINFORCE (``reinforce.py``) and DPG (``dpg.py``), each a class with a typed
``Config`` and ``update(policy, optimizer, batch) -> stats`` (the interface: ``base.py``)."""

from genrl.algos.base import Algorithm, EpochBatch, make_algorithm

__all__ = ["Algorithm", "EpochBatch", "make_algorithm"]
