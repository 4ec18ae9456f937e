"""Writers of small datasets in their real on-disk formats (used by the tests/test_data_* files).

Every writer can add a corrupt image file (bytes that are no image) to check that loaders
report it by path and skip it.
"""
from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

CORRUPT = b"this is not an image"


def png(seed: int, size: int = 12, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, fmt)
    return buf.getvalue()


def flat(text: str) -> str:
    """CLI output without whitespace (rich wraps long paths across lines)."""
    return "".join(text.split())


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------- miniImageNet
def mini_csv(root: Path, classes: Dict[str, int], per_class: int, corrupt: bool = True) -> Path:
    """CSV release: images/ + train.csv val.csv test.csv; ``classes`` = {split: n classes}."""
    seed = 0
    for split, n in classes.items():
        lines = ["filename,label"]
        for c in range(n):
            wnid = f"n{split}{c:04d}"
            for i in range(per_class):
                name = f"{wnid}_{i}.JPEG"
                write(root / "images" / name, png(seed, fmt="JPEG"))
                seed += 1
                lines.append(f"{name},{wnid}")
        if corrupt and split == "train":
            write(root / "images" / "broken.JPEG", CORRUPT)
            lines.append(f"broken.JPEG,n{split}{0:04d}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def mini_pickles(root: Path, classes: Dict[str, int], per_class: int, size: int = 10) -> Path:
    rng = np.random.default_rng(0)
    names = {"train": "train", "val": "validation", "test": "test"}
    for split, n in classes.items():
        images = rng.integers(0, 256, (n * per_class, size, size, 3), dtype=np.uint8)
        # classes interleaved on purpose: indices, not order, define the classes
        class_dict = {f"n{split}{c:04d}": list(range(c, n * per_class, n)) for c in range(n)}
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f"mini-imagenet-cache-{names[split]}.pkl", "wb") as f:
            pickle.dump({"image_data": images, "class_dict": class_dict}, f)
    return root


def tiered_pickles(root: Path, classes: Dict[str, int], per_class: int, corrupt: bool = True) -> Path:
    """tiered-imagenet/{split}_images_png.pkl (list of PNG byte arrays) + {split}_labels.pkl."""
    folder = root / "tiered-imagenet"
    folder.mkdir(parents=True, exist_ok=True)
    seed, offset = 0, 0
    for split, n in classes.items():
        images, specific, general = [], [], []
        for c in range(n):
            for _ in range(per_class):
                images.append(np.frombuffer(png(seed), dtype=np.uint8))
                seed += 1
                specific.append(offset + c)  # ids not starting at 0: the loader renumbers per split
                general.append(c % 2)
        if corrupt and split == "train":
            images.append(np.frombuffer(CORRUPT, dtype=np.uint8))
            specific.append(offset)
            general.append(0)
        names = [f"class{k}" for k in range(offset + n)]
        with open(folder / f"{split}_images_png.pkl", "wb") as f:
            pickle.dump(images, f)
        with open(folder / f"{split}_labels.pkl", "wb") as f:
            pickle.dump({"label_specific": np.array(specific), "label_general": np.array(general),
                         "label_specific_str": names, "label_general_str": ["catA", "catB"]}, f)
        offset += n
    return root


# ----------------------------------------------------------------------------- CIFAR-100
def cifar100(root: Path, fine_names: List[str], coarse_names: List[str], per_class: Tuple[int, int] = (2, 1),
             archive: bool = False) -> Path:
    """cifar-100-python/{train,test,meta} (or the .tar.gz); fine class i is in superclass i % 20."""
    rng = np.random.default_rng(0)
    parts = {}
    for part, n in zip(("train", "test"), per_class, strict=True):
        fine = [f for f in range(len(fine_names)) for _ in range(n)]
        parts[part] = {"data": rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8),
                       "fine_labels": fine, "coarse_labels": [f % len(coarse_names) for f in fine],
                       "filenames": [f"img{i}.png" for i in range(len(fine))]}
    parts["meta"] = {"fine_label_names": fine_names, "coarse_label_names": coarse_names}
    if not archive:
        for name, obj in parts.items():
            write(root / "cifar-100-python" / name, pickle.dumps(obj, protocol=2))
        return root
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as tar:
        for name, obj in parts.items():
            data = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return root


# ----------------------------------------------------------------------------- CUB, folders
def cub(root: Path, class_names: List[str], per_class: int = 2, corrupt: bool = True) -> Path:
    images = root / "CUB_200_2011" / "images"
    for k, c in enumerate(class_names):
        for i in range(per_class):
            write(images / c / f"{c.split('.')[-1]}_{i:04d}.jpg", png(k * 10 + i, size=8, fmt="JPEG"))
    if corrupt:
        write(images / class_names[0] / "broken_0001.jpg", CORRUPT)
    return root


def class_folders(root: Path, n_classes: int, per_class: int, corrupt: bool = True, mode: str = "RGB") -> Path:
    for c in range(n_classes):
        for i in range(per_class):
            write(root / f"class{c:02d}" / f"{i}.png", png(c * 100 + i, mode=mode))
    if corrupt:
        write(root / "class00" / "broken.png", CORRUPT)
    return root


def split_folders(root: Path, classes: Dict[str, int], per_class: int) -> Path:
    for split, n in classes.items():
        for c in range(n):
            for i in range(per_class):
                write(root / split / f"{split}{c}" / f"{i}.jpg", png(c * 100 + i, fmt="JPEG"))
    return root


def zip_folder(folder: Path, target: Path, top: str = "") -> Path:
    with zipfile.ZipFile(target, "w") as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, (top + "/" if top else "") + p.relative_to(folder).as_posix())
    return target


# ----------------------------------------------------------------------------- Omniglot
def glyph_png(seed: int, size: int = 20) -> bytes:
    """A binary drawing, ink (0) on white (255), like the Omniglot release."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size), 255, np.uint8)
    img[rng.random((size, size)) < 0.2] = 0
    buf = io.BytesIO()
    Image.fromarray(img, "L").save(buf, "PNG")
    return buf.getvalue()


def omniglot_set(root: Path, name: str, alphabets: Dict[str, int], drawers: int = 4, as_zip: bool = False,
                 corrupt: bool = False) -> Path:
    """``<root>/<name>/<Alphabet>/characterNN/<id>_<drawer>.png`` (or ``<name>.zip``)."""
    files = {}
    cid = 0
    for a, n_chars in alphabets.items():
        for c in range(1, n_chars + 1):
            cid += 1
            for d in range(1, drawers + 1):
                files[f"{name}/{a}/character{c:02d}/{cid:04d}_{d:02d}.png"] = glyph_png(cid * 100 + d)
    if corrupt:
        first = next(iter(alphabets))
        files[f"{name}/{first}/character01/broken_99.png"] = CORRUPT
    if as_zip:
        root.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(root / f"{name}.zip", "w") as z:
            for n, data in files.items():
                z.writestr(n, data)
    else:
        for n, data in files.items():
            write(root / n, data)
    return root


# ----------------------------------------------------------------------------- Lake runs
def lake_runs(target: Path, n_runs: int = 2, ways: int = 20, same_images: bool = False, seed: int = 0) -> Path:
    """all_runs.zip in Lake et al.'s format; test item k shows class perm[k].

    With ``same_images`` each test item is the very image of its training class (any
    deterministic embedding then scores 0% error)."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(target, "w") as z:
        for r in range(1, n_runs + 1):
            run = f"run{r:02d}"
            perm = rng.permutation(ways)
            pics = [glyph_png(r * 1000 + k, size=105) for k in range(ways)]
            lines = []
            for k in range(ways):
                z.writestr(f"{run}/training/class{k + 1:02d}.png", pics[k])
            for k, c in enumerate(perm):
                other = pics[c] if same_images else glyph_png(r * 1000 + 500 + k, size=105)
                z.writestr(f"{run}/test/item{k + 1:02d}.png", other)
                lines.append(f"{run}/test/item{k + 1:02d}.png {run}/training/class{c + 1:02d}.png")
            z.writestr(f"{run}/class_labels.txt", "\n".join(lines) + "\n")
    return target


# ----------------------------------------------------------------------------- integrity
def linked_class_folders(root: Path, store: Path, n_linked: int, n_plain: int, per_class: int = 3) -> Path:
    """``root/linkNN -> store/linkNN`` (symbolic links to class folders kept elsewhere) beside
    ``root/plainNN`` real folders."""
    class_folders(store, n_linked, per_class, corrupt=False)
    root.mkdir(parents=True, exist_ok=True)
    for c in range(n_linked):
        (root / f"link{c:02d}").symlink_to(store / f"class{c:02d}", target_is_directory=True)
    for c in range(n_plain):
        for i in range(per_class):
            write(root / f"plain{c:02d}" / f"{i}.png", png(5000 + c * 100 + i))
    return root


def folder_report_case(root: Path) -> Path:
    """Split layout for 2-way 1-shot 1-query episodes: train/ has 3 classes of 3 images, one
    more class of a single image (too few) and one unreadable file; val/ and test/ 2 classes."""
    split_folders(root, {"train": 3, "val": 2, "test": 2}, per_class=3)
    write(root / "train" / "lonely" / "0.jpg", png(777, fmt="JPEG"))
    write(root / "train" / "train0" / "broken.jpg", CORRUPT)
    return root
