"""The algorithms: PPO (``ppo.py``), REINFORCE (``reinforce.py``), DPG (``dpg.py``), DiffusionNFT (``nft.py``) and
Diffusion-DPO (``dpo.py``), each a class with its own typed ``Config`` and ``update(policy, optimizer, batch) ->
stats`` (the interface: ``base.py``; lookup by name: ``registry.py``)."""

from genrl.algos.base import Algorithm, EpochBatch
from genrl.algos.registry import make_algorithm

__all__ = ["Algorithm", "EpochBatch", "make_algorithm"]
