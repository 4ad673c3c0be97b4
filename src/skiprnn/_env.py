"""Reading environment knobs on hot paths (no heavy imports here)."""

from __future__ import annotations

import os

_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_KEY = getattr(os.environ, "encodekey", None)
_ENV_VALUE = getattr(os.environ, "decodevalue", None)


def env(name: str, default=None):
    """``os.environ.get(name, default)`` without the KeyError that ``Mapping.get`` raises and
    catches for a missing variable (~1.6 µs a call here, and the fast paths read a dozen knobs a
    step); falls back to ``os.environ.get`` where the mapping has another layout."""
    if _ENV_DATA is None or _ENV_KEY is None or _ENV_VALUE is None:
        return os.environ.get(name, default)
    v = _ENV_DATA.get(_ENV_KEY(name))
    return default if v is None else _ENV_VALUE(v)
