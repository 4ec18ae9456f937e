"""Turn every torch optimiser's ``step`` into a no-op, in every process that starts with this
folder on ``PYTHONPATH`` (Python imports ``sitecustomize`` at start-up).

Used by ``make check-noop``: with it, every test of tests/test_learning.py must fail, which shows
that those tests can only pass when training changes the weights.  torch is not imported here
(``metafsl --help`` must stay free of heavy imports); the patch is applied when ``torch.optim``
is first imported, to the optimisers it defines and to any subclass defined later.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

MARK = "METAFSL_NOOP_OPTIM"


def _noop_step(self, closure=None):
    """A no-op optimiser step (evaluates the closure, as ``step`` would, but moves nothing)."""
    return closure() if closure is not None else None


_noop_step.noop = True


def _patch(cls) -> None:
    cls.step = _noop_step


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


def patch_optim(module) -> None:
    base = module.Optimizer
    _patch(base)
    for cls in _all_subclasses(base):
        _patch(cls)
    original = base.__dict__.get("__init_subclass__")

    def __init_subclass__(cls, **kwargs):  # optimisers defined after torch.optim (e.g. by a library)
        if original is not None:
            original.__func__(cls, **kwargs)
        else:
            super(base, cls).__init_subclass__(**kwargs)
        _patch(cls)

    base.__init_subclass__ = classmethod(__init_subclass__)


class _Loader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        patch_optim(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torch.optim":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


os.environ[MARK] = "1"  # lets a test tell (and say) that it runs under the no-op optimisers
if "torch.optim" in sys.modules:
    patch_optim(sys.modules["torch.optim"])
else:
    sys.meta_path.insert(0, _Finder())
