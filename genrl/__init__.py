"""genrl: reinforcement learning for generative image policies (README.md)."""
