"""The one ``key=value`` parser of the command line (no heavy imports: used by ``metafsl --help``).

Commands take two kinds of arguments: their own keys (``run=``, ``out=``, ``table=`` ...) and Hydra
overrides of the run config, which pass through untouched.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

from metafsl.errors import UserError

TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


def split(arg: str) -> Optional[Tuple[str, str]]:
    """``key=value`` -> (key, value) with surrounding quotes removed from the value; None otherwise."""
    if "=" not in arg:
        return None
    key, value = arg.split("=", 1)
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return key, value


def parse(args: Iterable[str], own: Iterable[str], command: str,
          overrides: bool = True) -> Tuple[Dict[str, str], List[str]]:
    """(the command's own ``key=value`` pairs, the remaining arguments); the last of a key wins.
    With ``overrides=False`` every argument must be one of the command's own keys."""
    keys = tuple(own)
    mine: Dict[str, str] = {}
    rest: List[str] = []
    for arg in args:
        pair = split(arg)
        if pair is not None and pair[0] in keys:
            mine[pair[0]] = pair[1]
        elif overrides:
            rest.append(arg)
        else:
            raise UserError(f"Unknown argument '{arg}' for metafsl {command}; use "
                            f"{', '.join(k + '=' for k in keys)}.")
    return mine, rest


def boolean(key: str, text: Optional[str], default: bool = False) -> bool:
    if text is None:
        return default
    if text.lower() in TRUE:
        return True
    if text.lower() in FALSE:
        return False
    raise UserError(f"{key} must be true or false (got '{text}').")


def last_value(args: Iterable[str], key: str) -> Optional[str]:
    """The value of the last ``key=value`` among ``args`` (None when absent)."""
    found = None
    for arg in args:
        pair = split(arg.lstrip("+~"))
        if pair is not None and pair[0] == key:
            found = pair[1]
    return found
