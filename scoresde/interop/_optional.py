"""The optional dependency of the diffusers adapters: one import, one clear error."""

from __future__ import annotations

import importlib

__all__ = ["EXTRA_HINT", "require_diffusers"]

EXTRA_HINT = "pip install 'scoresde[diffusers]'"


def require_diffusers():
    """The `diffusers` module; ImportError naming the extra when it is not installed.

    Imported on call, never at import time, so that `import scoresde` and `import scoresde.interop`
    work (and stay light) without it.
    """
    try:
        return importlib.import_module("diffusers")
    except ImportError as err:
        raise ImportError(
            f"this function needs the optional package diffusers, which is not installed ({err}); "
            f"install the extra: {EXTRA_HINT}"
        ) from err
