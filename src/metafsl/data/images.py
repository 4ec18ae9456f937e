"""Reading image files (from folders or zip archives) into uint8 tensors, robustly."""
from __future__ import annotations

import io
import os
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from metafsl.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def decode(data: bytes, size: int, channels: int, invert: bool = False) -> np.ndarray:
    """Bytes of an image file -> uint8 (C, size, size).  Raises on unreadable data."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return to_chw(im, size, channels, invert)


def to_chw(im, size: int, channels: int, invert: bool = False) -> np.ndarray:
    """PIL image -> uint8 (C, size, size): grey or RGB, Lanczos-resized, optionally inverted."""
    from PIL import Image

    im = im.convert("L" if channels == 1 else "RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.LANCZOS)
    arr = np.asarray(im, dtype=np.uint8)
    if invert:
        arr = 255 - arr
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def decode_many(read: Callable[[str], bytes], names: Sequence[str], size: int, channels: int,
                invert: bool = False, workers: int = 4) -> Tuple[torch.Tensor, List[int], List[str]]:
    """Decode many files.  Returns (uint8 (M, C, s, s), indices of the decoded names, bad names)."""

    def one(i: int):
        try:
            return i, decode(read(names[i]), size, channels, invert)
        except Exception:
            return i, None

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(one, range(len(names))))
    good = [(i, a) for i, a in results if a is not None]
    bad = [names[i] for i, a in results if a is None]
    if good:
        images = torch.from_numpy(np.stack([a for _, a in good]))
    else:
        images = torch.zeros(0, channels, size, size, dtype=torch.uint8)
    return images, [i for i, _ in good], bad


class Archive:
    """A folder or a zip file, read the same way: ``names()`` and ``read(name)``.

    Names are POSIX paths relative to the folder (or zip root).  Folders are walked following
    symbolic links (a class folder may be a link to where its images really are); a link back
    to a folder already on the current path (a loop) is not followed and is listed in
    ``ignored`` with the reason, as are sub-folders that cannot be listed.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.is_zip = self.path.suffix == ".zip"
        self.ignored: List[str] = []
        self._zip: Optional[zipfile.ZipFile] = None
        if self.is_zip:
            self._zip = open_zip(self.path)

    def names(self) -> List[str]:
        if self._zip is not None:
            return [n for n in self._zip.namelist() if not n.endswith("/")]
        names, self.ignored = walk(self.path)
        return names

    def read(self, name: str) -> bytes:
        if self._zip is None:
            return (self.path / name).read_bytes()
        try:
            return self._zip.read(name)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
            raise UserError(f"{name} in {self.path} cannot be read ({exc.__class__.__name__}: {exc}); "
                            "the archive is damaged: download or create it again.") from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def open_zip(path: Path) -> zipfile.ZipFile:
    """Open a zip archive; a truncated, empty or unreadable one is one sentence."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable zip archive ({exc.__class__.__name__}: {exc}); "
                        "it may be truncated or empty: download or create it again.") from None


def walk(root: Path) -> Tuple[List[str], List[str]]:
    """(sorted relative POSIX paths of the files under ``root``, ignored entries with a reason).

    Symbolic links to folders are followed; a link to a folder that is already on the path
    from ``root`` (a loop) is not.  Hidden entries (``.name``) are left out.
    """
    files: List[str] = []
    ignored: List[str] = []

    def visit(folder: Path, rel: str, ancestors: frozenset) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            ignored.append(f"{folder}/ (cannot be listed: {exc.strerror or exc.__class__.__name__})")
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            sub = f"{rel}{e.name}"
            try:
                is_dir = e.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if not is_dir:
                if e.is_file(follow_symlinks=True):
                    files.append(sub)
                elif e.is_symlink():
                    ignored.append(f"{folder / e.name} (broken symbolic link)")
                continue
            st = os.stat(e.path)
            ident = (st.st_dev, st.st_ino)
            if ident in ancestors:
                ignored.append(f"{folder / e.name}/ (symbolic link loop, not followed)")
                continue
            visit(Path(e.path), sub + "/", ancestors | {ident})

    st = os.stat(root)
    visit(Path(root), "", frozenset({(st.st_dev, st.st_ino)}))
    return sorted(files), ignored


def is_image(name: str) -> bool:
    # os.path.basename, not Path(name).name: the same last part, without building a Path per name
    return name.lower().endswith(IMAGE_EXTENSIONS) and not os.path.basename(name).startswith(".")


def _listed_image(name: str) -> bool:
    return is_image(name) and "__MACOSX" not in name


def iter_images(names: Iterable[str]) -> List[str]:
    return sorted(filter(_listed_image, names))


def has_images(names: Iterable[str]) -> bool:
    """Whether ``iter_images(names)`` would list any (stops at the first)."""
    return any(map(_listed_image, names))
