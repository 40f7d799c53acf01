"""The embedded shapes world: a procedural text-to-image world and the small models trained on it.

The trained models ship in ``weights/``: ``teacher`` (a StableDiffusionPipeline folder), ``lcm`` (a
LatentConsistencyModelPipeline folder distilled from it) and ``reward`` (the attribute classifier).
``python -m genrl.shapes.pretrain`` rebuilds them. ``tiny`` builds the random-weight pipelines of ``--model tiny``
from the same components.
"""

from pathlib import Path


def shipped_dir() -> Path:
    return Path(__file__).parent / "weights"
