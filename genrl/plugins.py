"""Loading the user's code named on the command line as ``package.module:name`` or by an entry point (rewards,
algorithms). Whatever goes wrong in it is one line that names the plug-in, never a traceback inside genrl."""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint
from typing import Any

from genrl.errors import GenrlError


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``, or the bare type where the message is empty (``sys.exit()``)."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message[:300]}" if message else type(exc).__name__


def import_object(spec: str, kind: str) -> Any:
    """The object ``name`` of ``package.module`` for ``spec`` 'package.module:name'; ``kind`` names it in errors."""
    module_name, _, attr = spec.partition(":")
    if not module_name.strip() or not attr.strip():
        raise GenrlError(
            f"{kind} '{spec}' names no {'module' if not module_name.strip() else 'object'}; write package.module:name"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise GenrlError(
            f"{kind} '{spec}': cannot import module '{module_name}' ({exc}); check it is on PYTHONPATH"
        ) from exc
    except (Exception, SystemExit) as exc:  # the module's own code failed as it was imported
        raise GenrlError(f"{kind} '{spec}': importing '{module_name}' raised {describe(exc)}; fix the module") from exc
    found = getattr(module, attr, None)
    if found is None:
        raise GenrlError(f"{kind} '{spec}': module '{module_name}' has no '{attr}'; check the name")
    return found


def load_entry_point(entry_point: EntryPoint, kind: str) -> Any:
    """What an installed package's entry point names, or one line naming the entry point and its package."""
    try:
        return entry_point.load()
    except (Exception, SystemExit) as exc:
        raise GenrlError(
            f"{kind} '{entry_point.name}' (entry point {entry_point.value}) cannot be loaded ({describe(exc)}); "
            "fix or reinstall the package that declares it"
        ) from exc
