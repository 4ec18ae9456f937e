"""metafsl imports only the parts of learn2learn it uses (src/metafsl/_l2l.py); here the two
mechanisms on a throw-away package (tests/test_contract.py checks, in a fresh process, that a
learn2learn backbone brings no torchvision, scipy or gym)."""
from __future__ import annotations

import importlib
import sys

import pytest

from metafsl import _l2l


@pytest.fixture
def package(tmp_path, monkeypatch):
    """``fakepkg``: an ``__init__`` that counts its runs and imports ``heavy``; a part ``light``
    that imports ``fakeheavy.double`` at import time, as learn2learn's cnn4 imports scipy.stats."""
    root = tmp_path / "fakepkg"
    root.mkdir()
    (root / "__init__.py").write_text("import builtins\nbuiltins.fakepkg_inits += 1\n"
                                      "from . import heavy\nfrom .light import twice\nVERSION = '1'\n")
    (root / "heavy.py").write_text("")
    (root / "light.py").write_text("from fakeheavy import double\n\ndef twice(x):\n    return double(x)\n")
    (tmp_path / "fakeheavy.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("builtins.fakepkg_inits", 0, raising=False)
    yield
    for name in [m for m in sys.modules if m.split(".")[0] in ("fakepkg", "fakeheavy")]:
        del sys.modules[name]


def test_a_package_without_its_init_runs_the_init_for_a_name_it_lacks(package):
    import builtins

    pkg = _l2l._package_without_init("fakepkg")
    with _l2l._on_first_use("fakeheavy"):
        light = importlib.import_module("fakepkg.light")
    assert builtins.fakepkg_inits == 0 and "fakepkg.heavy" not in sys.modules
    assert pkg.light is light and pkg.heavy is sys.modules["fakepkg.heavy"]  # a part: imported on request
    assert builtins.fakepkg_inits == 0
    assert pkg.VERSION == "1" and pkg.twice is light.twice  # a name of the __init__: it runs, once
    assert builtins.fakepkg_inits == 1 and pkg.VERSION == "1" and builtins.fakepkg_inits == 1
    assert not hasattr(pkg, "nothing")


def test_a_stand_in_imports_the_real_module_when_first_used(package):
    with _l2l._on_first_use("fakeheavy"):
        stand_in = sys.modules["fakeheavy"]
        assert not hasattr(stand_in, "__path__")  # a plain module to the import system
        light = importlib.import_module("fakepkg.light")
    assert "fakeheavy" not in sys.modules  # the stand-in is gone, the real module not imported
    assert light.twice(21) == 42 and sys.modules["fakeheavy"] is not stand_in
    assert light.double.__name__ == "double"  # attributes too come from the real function
