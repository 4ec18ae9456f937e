"""CUB-200-2011 (Wah et al. 2011) with the standard few-shot split of Chen et al. (2019),
"A Closer Look at Few-shot Classification": 100 / 50 / 50 bird species (``splits/cub.json``).

Layout of the release: ``<root>/CUB_200_2011/images/<NNN.Species>/*.jpg`` (``<root>`` may also
be the ``CUB_200_2011`` folder itself).  A ``<root>/CUB_200_2011.tgz`` is extracted once.
Whole images are resized to ``dataset.image_size`` (84 by default); unreadable files are
reported and skipped.  ``dataset.download=true`` fetches the archive from Caltech's data
repository and checks its MD5.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

from metafsl.data.assemble import check_shape, finish_dataset, split_from_files
from metafsl.data.base import FewShotDataset
from metafsl.data.cache import CacheSpec, cached_dataset
from metafsl.data.checks import check_split_spec
from metafsl.data.download import fetch
from metafsl.data.images import is_image
from metafsl.errors import UserError

VERSION = 2  # of this loader: a change rebuilds cached datasets
URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
MD5 = "97eceeb196236b17998738112f37df78"
ARCHIVE = "CUB_200_2011.tgz"
SPLIT_FILE = Path(__file__).parent / "splits" / "cub.json"


def _extract(archive: Path, root: Path) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"Could not extract {archive} ({exc.__class__.__name__}); replace it or extract it by hand into {root}.") from None


def locate(root: Path, download: bool) -> Path:
    """The ``images`` folder of the release (extracting or fetching the archive if needed)."""
    for images in (root / "CUB_200_2011" / "images", root / "images"):
        if images.is_dir():
            return images
    archive = root / ARCHIVE
    if not archive.is_file() and download:
        fetch(URL, archive, MD5, timeout=60.0)
    if archive.is_file():
        _extract(archive, root)
        if (root / "CUB_200_2011" / "images").is_dir():
            return root / "CUB_200_2011" / "images"
        raise UserError(f"{archive} holds no CUB_200_2011/images/ folder.")
    raise UserError(f"CUB-200-2011 not found under {root}: place {ARCHIVE} (from {URL}) or its extracted "
                    f"CUB_200_2011/images/<class>/*.jpg there, or pass dataset.download=true.")


def load(root: Path, image_size: int = 84, channels: int = 3, cache_dir: str = "~/.cache/metafsl",
         download: bool = False, cache_check: str = "stat") -> FewShotDataset:
    root = Path(root)
    check_shape(image_size, channels)
    images = locate(root, download)
    spec = json.loads(SPLIT_FILE.read_text())
    check_split_spec(spec, SPLIT_FILE)
    wanted = [c for s in ("train", "val", "test") for c in spec[s]]
    missing = [c for c in wanted if not (images / c).is_dir()]
    if missing:
        raise UserError(f"{len(missing)} of the 200 CUB class folders are missing in {images} "
                        f"(first: {images / missing[0]}); is this the full CUB_200_2011 release?")
    files = {c: sorted(p.name for p in (images / c).iterdir() if p.is_file() and is_image(p.name)) for c in wanted}
    if not any(files.values()):
        raise UserError(f"The 200 class folders in {images} hold no images; each should hold its species' .jpg "
                        f"files (e.g. {images / wanted[0]}/*.jpg), as extracted from {ARCHIVE}.")

    def build():
        splits, skipped = {}, []
        for split in ("train", "val", "test"):
            rows = [(f"{c}/{f}", c) for c in spec[split] for f in files[c]]
            splits[split], bad = split_from_files(lambda n: (images / n).read_bytes(), rows, spec[split],
                                                  image_size, channels, str(images))
            skipped += bad
        return finish_dataset(splits, skipped, "cub")

    cache = CacheSpec("cub", root, cache_dir, {"size": image_size, "channels": channels, "src": str(images.resolve())},
                      [images / c / f for c in wanted for f in files[c]], VERSION, cache_check)
    return cached_dataset(cache, build)
