"""genrl: reinforcement learning for generative image policies (README.md)."""

from genrl.cpu import spin_briefly

spin_briefly()  # before anything imports torch, which loads libgomp and reads its settings once (genrl/cpu.py)
