"""What the environment offers: knobs read on hot paths, the source commit, whether Triton is
installed (no heavy imports here)."""

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


def git_commit(dirty_suffix: bool = True):
    """The commit of this source tree, for run records and benchmark JSON.

    ``SKIPRNN_GIT_COMMIT`` wins when set (a copy whose git metadata is stale or missing, e.g.
    a working tree shipped to another machine); else ``git rev-parse HEAD`` in the package's
    directory, with ``-dirty`` appended when tracked files differ from it (``dirty_suffix``).
    ``None`` outside a git checkout."""
    import subprocess
    forced = env("SKIPRNN_GIT_COMMIT")
    if forced:
        return forced
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        if not sha:
            return None
        if dirty_suffix and subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                capture_output=True, text=True, timeout=5).stdout.strip():
            sha += "-dirty"
        return sha
    except Exception:
        return None


def triton_available() -> bool:
    """Whether Triton can be imported (it is then imported; nothing is compiled)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
