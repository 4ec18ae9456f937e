"""The single place where learn2learn is imported (a thin adapter).

learn2learn 0.2.0 imports ``gym`` and friends at import time; we import it lazily and
keep third-party warnings off the console unless ``verbose=true``.
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings

_module = None


def learn2learn(verbose: bool = False):
    """Return the imported ``learn2learn`` package."""
    global _module
    if _module is not None:
        return _module
    os.environ.setdefault("GYM_DISABLE_WARNINGS", "1")
    sink = io.StringIO()
    with warnings.catch_warnings():
        if not verbose:
            warnings.simplefilter("ignore")
        redirect = contextlib.nullcontext() if verbose else contextlib.redirect_stderr(sink)
        with redirect:
            try:
                import learn2learn as l2l
            except ImportError as exc:  # pragma: no cover - depends on the environment
                from metafsl.errors import UserError

                raise UserError(
                    f"learn2learn is not installed ({exc}); run `make setup`, which builds "
                    "its wheel with scripts/build_learn2learn.sh."
                ) from exc
    _module = l2l
    return l2l
