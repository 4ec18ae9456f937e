"""Reading image files (from folders or zip archives) into uint8 tensors, robustly."""
from __future__ import annotations

import io
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def decode(data: bytes, size: int, channels: int, invert: bool = False) -> np.ndarray:
    """Bytes of an image file -> uint8 (C, size, size).  Raises on unreadable data."""
    from PIL import Image  # noqa: PLC0415

    with Image.open(io.BytesIO(data)) as im:
        return to_chw(im, size, channels, invert)


def to_chw(im, size: int, channels: int, invert: bool = False) -> np.ndarray:
    """PIL image -> uint8 (C, size, size): grey or RGB, Lanczos-resized, optionally inverted."""
    from PIL import Image  # noqa: PLC0415

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

    Names are POSIX paths relative to the folder (or zip root).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.is_zip = self.path.suffix == ".zip"
        self._zip: Optional[zipfile.ZipFile] = None
        if self.is_zip:
            self._zip = zipfile.ZipFile(self.path)

    def names(self) -> List[str]:
        if self._zip is not None:
            return [n for n in self._zip.namelist() if not n.endswith("/")]
        return sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file())

    def read(self, name: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(name)
        return (self.path / name).read_bytes()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not Path(name).name.startswith(".")


def iter_images(names: Iterable[str]) -> List[str]:
    return sorted(n for n in names if is_image(n) and "__MACOSX" not in n)
