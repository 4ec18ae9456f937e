"""Which files ``metafsl predict`` classifies: the query set, from folders, list files and globs.

Each part of a query specification is, in this order:

- an existing folder: every image file below it (recursive, sorted; hidden files and folders
  are left out, files without an image extension are ignored and only counted);
- an existing ``.txt`` file: a list file, one path per line, relative to the list file's folder
  (blank lines and lines starting with ``#`` are ignored); a listed path that does not exist is
  kept as a skipped file, a listed folder is walked as above;
- an existing file: that file, whatever its extension;
- a pattern with ``*``, ``?`` or ``[`` (``shots/*.png``, ``shots/**/*.jpg``): the matching files
  (and folders, walked as above), sorted; files without an image extension are ignored and counted.

A path that does not exist and a pattern that matches nothing are errors (a typo); a file
reached twice is classified once (counted).  Whether a file really is an image is found out
when it is read (``metafsl.engine.predict``).
"""
from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence, Set, Tuple, Union

from metafsl.data.images import is_image
from metafsl.errors import UserError

PATTERN_CHARS = "*?["


@dataclass
class QuerySet:
    """The files to classify, in order, and what was left out while gathering them."""

    files: List[Path] = field(default_factory=list)
    #: (path, reason) of listed files that do not exist
    missing: List[Tuple[Path, str]] = field(default_factory=list)
    #: files of walked folders and patterns without an image extension
    ignored: int = 0
    #: files reached more than once (classified once)
    duplicates: int = 0
    _seen: Set[Path] = field(default_factory=set, repr=False)

    def add(self, path: Path) -> None:
        key = path.resolve()
        if key in self._seen:
            self.duplicates += 1
            return
        self._seen.add(key)
        self.files.append(path)


def split_spec(query: Union[str, Path, Sequence[Union[str, Path]]]) -> List[str]:
    """A query specification as its parts: a string is split on commas, a sequence is not."""
    if isinstance(query, (str, Path)):
        return [p.strip() for p in str(query).split(",") if p.strip()]
    return [str(p) for p in query]


def gather(query: Union[str, Path, Sequence[Union[str, Path]]]) -> QuerySet:
    """The query set of a specification (see the module docstring)."""
    parts = split_spec(query)
    found = QuerySet()
    for part in parts:
        path = Path(part)
        if path.is_dir():
            _walk(path, found)
        elif path.is_file() and path.suffix.lower() == ".txt":
            _read_list(path, found)
        elif path.is_file():
            found.add(path)
        elif any(c in part for c in PATTERN_CHARS):
            _expand(part, found)
        else:
            raise UserError(f"Query {path} does not exist.")
    if not found.files and not found.missing:
        raise UserError(f"No query images found in query={','.join(parts)}"
                        f"{f' ({found.ignored} files without an image extension)' if found.ignored else ''}.")
    return found


def _hidden(path: Path, root: Path) -> bool:
    return any(p.startswith(".") for p in path.relative_to(root).parts)


def _walk(folder: Path, found: QuerySet) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not _hidden(p, folder)):
        if is_image(path.name):
            found.add(path)
        else:
            found.ignored += 1


def _read_list(list_file: Path, found: QuerySet) -> None:
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"Cannot read the query list {list_file} ({getattr(exc, 'strerror', None) or exc}).") from None
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry) if Path(entry).is_absolute() else list_file.parent / entry
        if path.is_dir():
            _walk(path, found)
        elif path.is_file():
            found.add(path)
        else:
            found.missing.append((path, f"does not exist (listed in {list_file.name})"))


def _expand(pattern: str, found: QuerySet) -> None:
    matches = sorted(glob.glob(pattern, recursive=True))
    if not matches:
        raise UserError(f"query={pattern} matches no files.")
    for match in map(Path, matches):
        if match.is_dir():
            _walk(match, found)
        elif is_image(match.name):
            found.add(match)
        else:
            found.ignored += 1
