"""Loading the pickled dataset files people have (learn2learn caches, CIFAR-100 batches).

Pickles can run arbitrary code when loaded; this unpickler only rebuilds plain containers
and numpy arrays, and refuses everything else.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, BinaryIO, Union

from metafsl.errors import UserError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("collections", "OrderedDict"), ("collections", "defaultdict"),
    ("builtins", "list"), ("builtins", "dict"), ("builtins", "set"), ("builtins", "tuple"),
    ("builtins", "bytes"), ("builtins", "bytearray"), ("builtins", "object"),
    ("_codecs", "encode"), ("copyreg", "_reconstructor"),
}
#: Python 2 names of the same modules (pickles written with protocol <= 2)
_PY2 = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (_PY2.get(module, module), name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def load_pickle(source: Union[Path, BinaryIO, bytes], where: str) -> Any:
    """Unpickle data (arrays, dicts, lists) from a path, file object or bytes.

    Python 2 pickles (CIFAR-100, tieredImageNet) are read with ``encoding='latin1'``.
    ``where`` names the file in the one-sentence error raised when it cannot be read.
    """
    try:
        if isinstance(source, (str, Path)):
            with open(source, "rb") as f:
                return _DataUnpickler(f, encoding="latin1").load()
        if isinstance(source, bytes):
            source = io.BytesIO(source)
        return _DataUnpickler(source, encoding="latin1").load()
    except FileNotFoundError:
        raise UserError(f"File {where} does not exist.") from None
    except Exception as exc:
        raise UserError(f"Could not read {where} as a pickled dataset file ({exc.__class__.__name__}: {exc}).") from None
