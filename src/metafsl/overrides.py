"""Configuration errors in one sentence: a group option that does not exist, an override without
a key, a key the composed config does not have (named with the keys it does have), and Hydra's or
OmegaConf's multi-line errors.  Stdlib only at import time (``metafsl --help`` stays instant)."""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional

from metafsl.conf import GROUPS, group_options
from metafsl.errors import UserError


def check_group_overrides(args: List[str]) -> Optional[str]:
    """A one-sentence error for `group=option` naming an option that does not exist."""
    from metafsl.arguments import split

    for arg in [a for a in args if not a.startswith("config=")]:
        if "=" in arg and not arg.lstrip("+~").split("=", 1)[0].strip():
            return f"Cannot parse the override '{arg}': it needs a key (key=value, e.g. seed=5)."
        pair = None if arg.startswith(("-", "~", "+")) else split(arg)
        if pair is None:
            continue
        key, value = pair
        if key not in GROUPS or "(" in value or value in ("null", ""):
            continue
        known = group_options(key)
        for option in value.strip("[]").split(","):  # logger=[csv,mlflow] selects several
            if option not in known:
                return f"Unknown {key} '{option}'; choose one of: {', '.join(known)}."
    return None


def user_error_inside(exc: BaseException):
    """The UserError that Hydra or OmegaConf wrapped (e.g. raised by a resolver), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def unknown_key_error(exc: Exception, args: List[str]) -> Optional[str]:
    """'Could not override a.b.c' (a key the composed config does not have): one sentence that
    names the key and the keys that ``a.b`` has."""
    import re

    match = re.search(r"Could not override '([^']+)'", str(exc))
    if not match:
        return None
    path = match.group(1)
    parent, _, key = path.rpartition(".")
    valid = sibling_keys(parent, [a for a in args if "=" in a and a.split("=", 1)[0] in GROUPS])
    where = f"'{parent}'" if parent else "the config"
    known = f"; {where} has: {', '.join(valid)}" if valid else ""
    return f"Unknown option '{path}'{known} (metafsl list shows the options)."


def sibling_keys(parent: str, group_args: List[str]) -> List[str]:
    """The keys of ``parent`` in the config composed with the user's group choices only."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="metafsl.conf", version_base=None):
            node = compose(config_name="train", overrides=group_args)
        for part in [p for p in parent.split(".") if p]:
            node = node[part]
        return sorted(k for k in node.keys() if not str(k).startswith("_"))
    except Exception:  # the listing is a courtesy: never let it hide the first error
        return []


def config_error(exc: Exception) -> Optional[str]:
    """One sentence for a Hydra/OmegaConf configuration error (None for any other exception)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(exc, (HydraException, OmegaConfBaseException)):
        return None
    first = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
    if getattr(exc, "override", None):  # OverrideParseException
        first = f"Cannot parse the override '{exc.override}' ({first})"
    cause = exc.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
        first += ": " + str(cause).strip().splitlines()[0].rstrip(".")
    return f"{first} (metafsl list shows the options; add --cfg job to print the composed config)."


#: the experiment name a ``config=<file>`` is composed under (never a shipped preset's name)
FILE_PREFIX = "file__"


@contextlib.contextmanager
def config_file(args: List[str]) -> Iterator[List[str]]:
    """``config=<file.yaml>`` (an experiment preset copied by ``metafsl cp`` and edited, or one
    written by hand: ``# @package _global_`` with its own ``defaults``) becomes an ``experiment``
    that Hydra finds in a temporary search path; yields the overrides to compose with."""
    from metafsl.arguments import split

    files = [split(a)[1] for a in args if a.startswith("config=")]
    rest = [a for a in args if not a.startswith("config=")]
    if not files:
        yield rest
        return
    path = Path(files[-1]).expanduser()
    if not path.is_file() or path.suffix not in (".yaml", ".yml"):
        raise UserError(f"config={path} is not a YAML file; make one with "
                        "metafsl cp experiment=<preset> <file.yaml>.")
    with tempfile.TemporaryDirectory(prefix="metafsl-config-") as tmp:
        (Path(tmp) / "experiment").mkdir()
        (Path(tmp) / "experiment" / f"{FILE_PREFIX}{path.stem}.yaml").write_text(path.read_text())
        yield [f"hydra.searchpath=[file://{tmp}]", f"experiment={FILE_PREFIX}{path.stem}", *rest]
