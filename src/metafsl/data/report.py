"""What loading a dataset left out, in one line: unreadable files skipped, entries not used
(stray files, symbolic-link loops), and classes with too few images for the episodes.

``episode_need(cfg.episode)`` gives the images per class an episode draws in each split
(n_shot + n_query); ``FewShotDataset.report(need)`` builds the ``DataReport``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

SHOW = 3  # items named in the line before "and N more"


def episode_need(episode: Mapping[str, Any]) -> Dict[str, int]:
    """Images per class an episode needs in each split: training episodes in ``train``,
    test-shaped episodes in ``val`` and ``test``."""
    train, test = episode["train"], episode["test"]
    need_test = int(test["n_shot"]) + int(test["n_query"])
    return {"train": int(train["n_shot"]) + int(train["n_query"]), "val": need_test, "test": need_test}


@dataclass
class DataReport:
    skipped: List[str] = field(default_factory=list)  # unreadable files
    ignored: List[str] = field(default_factory=list)  # "<path> (<reason>)": not used
    dropped: Dict[str, List[Tuple[str, int]]] = field(default_factory=dict)  # split -> [(class, images)]
    need: Dict[str, int] = field(default_factory=dict)

    def n_dropped(self) -> int:
        return sum(len(v) for v in self.dropped.values())

    def __bool__(self) -> bool:
        return bool(self.skipped or self.ignored or self.n_dropped())

    def line(self) -> str:
        """One line: what was left out, or that nothing was."""
        if not self:
            return "Data: every file was read and every class has enough images for its episodes."
        parts = []
        if self.skipped:
            parts.append(f"{_count(len(self.skipped), 'unreadable file')} skipped ({_names(self.skipped)})")
        if self.ignored:
            parts.append(f"{_count(len(self.ignored), 'entry', 'entries')} not used ({_names(self.ignored)})")
        if self.n_dropped():
            named = [f"{s}: {c} has {n} of {self.need.get(s, '?')}" for s, cs in self.dropped.items() for c, n in cs]
            parts.append(f"{_count(self.n_dropped(), 'class', 'classes')} dropped for having fewer images "
                         f"than an episode needs ({_names(named)})")
        return "Data: " + "; ".join(parts) + "."

    def to_dict(self) -> Dict[str, Any]:
        return {"skipped": list(self.skipped), "ignored": list(self.ignored),
                "dropped": {s: [{"class": c, "images": n} for c, n in cs] for s, cs in self.dropped.items() if cs},
                "need": dict(self.need)}


def dropped_classes(counts: Sequence[int], names: Sequence[str], need: Optional[int]) -> List[Tuple[str, int]]:
    if not need:
        return []
    return [(str(c), int(n)) for c, n in zip(names, counts, strict=True) if int(n) < need]


def _count(n: int, one: str, many: str = "") -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _names(items: Sequence[str]) -> str:
    shown = ", ".join(items[:SHOW])
    return shown + (f" and {len(items) - SHOW} more" if len(items) > SHOW else "")
