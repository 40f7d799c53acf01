"""Loading the user's code named on the command line as ``package.module:name`` (rewards, algorithms)."""

from __future__ import annotations

import importlib
from typing import Any

from genrl.errors import GenrlError


def import_object(spec: str, kind: str) -> Any:
    """The object ``name`` of ``package.module`` for ``spec`` 'package.module:name'; ``kind`` names it in errors."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise GenrlError(
            f"{kind} '{spec}': cannot import module '{module_name}' ({exc}); check it is on PYTHONPATH"
        ) from exc
    found = getattr(module, attr, None)
    if found is None:
        raise GenrlError(f"{kind} '{spec}': module '{module_name}' has no '{attr}'; check the name")
    return found
