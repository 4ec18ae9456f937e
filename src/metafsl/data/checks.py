"""Checks of split definitions shared by the loaders: every class in one split only
(no leakage between training and test), every image listed once, class fractions that leave no
split empty."""
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


def check_fractions(train_fraction: float, val_fraction: float) -> None:
    """``dataset.train_fraction`` and ``dataset.val_fraction`` of the classes (the rest is test)."""
    if train_fraction > 0 and val_fraction >= 0 and train_fraction + val_fraction < 1:
        return
    problem = ("leave no training classes" if train_fraction <= 0 else
               "leave no test classes" if train_fraction + val_fraction >= 1 else "are not fractions")
    raise UserError(f"dataset.train_fraction={train_fraction} and dataset.val_fraction={val_fraction} {problem}; "
                    "they accept a train_fraction above 0, a val_fraction of 0 or more, and a sum below 1 "
                    "(the rest of the classes is test).")


def class_split_sizes(n_classes: int, train_fraction: float, val_fraction: float) -> Dict[str, int]:
    """{split: number of classes}: round(train_fraction * K) train, round(val_fraction * K) val,
    the rest test."""
    n_train, n_val = round(train_fraction * n_classes), round(val_fraction * n_classes)
    return {"train": n_train, "val": n_val, "test": n_classes - n_train - n_val}


def _empty(sizes: Mapping[str, int], val_fraction: float) -> bool:
    """A split left without classes (val only counts when val_fraction asks for one)."""
    return any(n < 1 for s, n in sizes.items() if s != "val" or val_fraction > 0)


def fewest_classes(train_fraction: float, val_fraction: float) -> int:
    """The fewest classes that leave no split empty with these (valid) fractions."""
    k = 1
    while _empty(class_split_sizes(k, train_fraction, val_fraction), val_fraction):
        k += 1
    return k


def check_class_split(n_classes: int, train_fraction: float, val_fraction: float, subject: str,
                      advice: str) -> Dict[str, int]:
    """The split sizes, or one sentence when a split would get no class: ``subject`` names the
    classes with its verb (``dataset.n_classes=3 gives``), ``advice`` what to change
    (``{fewest}``: the fewest classes that work)."""
    check_fractions(train_fraction, val_fraction)
    sizes = class_split_sizes(n_classes, train_fraction, val_fraction)
    if _empty(sizes, val_fraction):
        fewest = fewest_classes(train_fraction, val_fraction)
        raise UserError(f"{subject} {sizes['train']} train, {sizes['val']} val and {sizes['test']} test classes "
                        f"with dataset.train_fraction={train_fraction} and dataset.val_fraction={val_fraction}, "
                        f"but each split needs at least one class; {advice.format(fewest=fewest)}.")
    return sizes
