"""Checks of split definitions shared by the loaders: every class in one split only
(no leakage between training and test), every image listed once."""
from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional

from metafsl.errors import UserError

LEAK = "a class must belong to one split only, or test accuracy measures leakage from training"


def check_disjoint(classes: Mapping[str, Iterable[str]], where: Optional[Mapping[str, str]] = None,
                   source: str = "") -> None:
    """Refuse a class listed in two splits.  ``classes``: {split: class names}; ``where``:
    {split: the file or folder defining it}, named in the sentence; ``source``: the dataset's
    location when ``where`` is not given."""
    seen: Dict[str, str] = {}
    for split, names in classes.items():
        for name in names:
            first = seen.setdefault(str(name), split)
            if first != split:
                if where:
                    place = f"{where.get(first, first)} and {where.get(split, split)}"
                else:
                    place = f"both the {first} and {split} splits" + (f" of {source}" if source else "")
                raise UserError(f"Class '{name}' is in {place}; {LEAK}.")


def check_each_once(items: Mapping[str, Iterable[str]], what: str = "Image") -> None:
    """Refuse an item listed twice. ``items``: {place (file, split): item names}."""
    seen: Dict[str, str] = {}
    for place, names in items.items():
        for name in names:
            first = seen.get(str(name))
            if first is not None:
                again = f"twice in {place}" if first == place else f"in both {first} and {place}"
                raise UserError(f"{what} {name} is listed {again}; remove the duplicate.")
            seen[str(name)] = place


def check_split_spec(spec: Mapping[str, Iterable[str]], path: object) -> None:
    """A split file {split: [class names]}: each class listed once, in one split."""
    splits = {s: list(spec[s]) for s in ("train", "val", "test") if s in spec}
    check_each_once({f"the {s} list of {path}": names for s, names in splits.items()}, what="Class")
