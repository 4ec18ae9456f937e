"""The single place where learn2learn is imported (a thin adapter).

learn2learn 0.2.0's package ``__init__`` imports every part of it: ``vision.datasets`` pulls in
torchvision, ``vision.models`` requests and (``cnn4``) scipy.stats, plus gym and the text
datasets, seconds of every training process.  metafsl uses its ``algorithms``, ``nn``, ``utils``
and the ``cnn4`` and ``resnet12`` modules of ``vision.models``, so those are imported on their
own: ``learn2learn``, ``learn2learn.vision`` and ``learn2learn.vision.models`` are registered
without running their ``__init__``, and the first name one lacks (a part such as ``l2l.data`` is
imported on request) runs that ``__init__`` after all, so every name of the real package stays
reachable.  The same classes and functions run: the numbers do not change.  Third-party
warnings stay off the console unless ``verbose=true``.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import sys
import types
import warnings

_module = None

#: the packages registered without their ``__init__`` (parents first), and the parts imported
_SKIPPED_INITS = ("learn2learn", "learn2learn.vision", "learn2learn.vision.models")
_PARTS = ("learn2learn.utils", "learn2learn.algorithms", "learn2learn.nn", "learn2learn.vision.models.cnn4",
          "learn2learn.vision.models.resnet12")


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
                l2l = sys.modules.get("learn2learn") or _import_parts()
            except ImportError as exc:  # pragma: no cover - depends on the environment
                from metafsl.errors import UserError

                raise UserError(
                    f"learn2learn is not installed ({exc}); run `make setup`, which builds "
                    "its wheel with scripts/build_learn2learn.sh."
                ) from exc
    _module = l2l
    return l2l


def _import_parts() -> types.ModuleType:
    """``learn2learn`` with the parts metafsl uses imported (see the module docstring)."""
    added = []
    try:
        for name in _SKIPPED_INITS:
            added.append(name)
            _package_without_init(name)
        with _on_first_use("scipy.stats"):
            for name in _PARTS:
                importlib.import_module(name)
    except BaseException:
        for name in added:  # leave no half-imported package behind
            sys.modules.pop(name, None)
        raise
    return sys.modules["learn2learn"]


def _package_without_init(name: str) -> types.ModuleType:
    """Register package ``name`` without running its ``__init__``: a missing attribute imports the
    submodule of that name, or else runs the ``__init__`` (once) and is looked up again."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ImportError(f"No module named '{name}'")
    module = importlib.util.module_from_spec(spec)

    def __getattr__(attr: str):
        try:
            return importlib.import_module(f"{name}.{attr}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{name}.{attr}":
                raise
        if module.__dict__.pop("__getattr__", None) is not None:
            spec.loader.exec_module(module)
        return getattr(module, attr)

    module.__getattr__ = __getattr__
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


class _OnFirstUse:
    """Stands for ``getattr(<module>, name)`` and imports that module when first used."""

    def __init__(self, module: str, name: str):
        self._where = (module, name)

    def _target(self):
        module, name = self._where
        return getattr(importlib.import_module(module), name)

    def __getattr__(self, attr: str):
        return getattr(self._target(), attr)

    def __call__(self, *args, **kwargs):
        return self._target()(*args, **kwargs)


def _stand_in_names(module: str):
    """A module ``__getattr__`` giving an ``_OnFirstUse`` for each public name of ``module``."""
    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _OnFirstUse(module, name)

    return __getattr__


@contextlib.contextmanager
def _on_first_use(module: str):
    """While in this block (the parts' import), ``module`` is a stand-in whose names import the
    real module when first used; it is gone from ``sys.modules`` afterwards.  For ``scipy.stats``:
    learn2learn's ``vision.models.cnn4`` imports its ``truncnorm`` (a slow import) for the initialisation
    of its full classifiers (``fc_init_``), never of the backbones metafsl builds."""
    if module in sys.modules:
        yield
        return
    stand_in = types.ModuleType(module)
    stand_in.__getattr__ = _stand_in_names(module)
    sys.modules[module] = stand_in
    try:
        yield
    finally:
        if sys.modules.get(module) is stand_in:
            del sys.modules[module]
