"""`metafsl predict run=<run dir> support=<dir> query=<dir or files> [out=<csv>] [checkpoint=best|last]
[invert=auto|true|false] [convert=false] [device=cpu]`.

Adapts a trained learner to *your* labelled images and classifies new ones: ``support`` is a
folder with one sub-folder of images per class (``support/cat/*.png``, ``support/dog/*.png``);
``query`` is a folder of images or a comma-separated list of files.  Images are converted to
the run's image size, channels and normalisation (Omniglot runs invert dark-on-light drawings to
the bright-ink form they were trained on: ``invert=auto``).  A colour image given to a
grayscale model is refused unless ``convert=true``.  Prints, and writes as CSV (default
``<run>/predictions/<time>.csv``), each query's predicted class and its probability.
"""
from __future__ import annotations

import csv
import datetime as _dt
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

from metafsl.data.images import is_image, to_chw
from metafsl.errors import UserError

OWN_KEYS = ("run", "support", "query", "out", "checkpoint", "invert", "convert", "device")
#: datasets metafsl presents with bright ink on a dark background (user drawings are the reverse)
INVERTED = {"omniglot"}


def _bool(key: str, text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise UserError(f"{key} must be true or false (got '{text}').")


def load_image(path: Path, size: int, channels: int, invert: bool, convert: bool) -> np.ndarray:
    """uint8 (channels, size, size) from an image file, with clear errors."""
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    try:
        with Image.open(path) as im:
            im.load()
            rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    except (UnidentifiedImageError, OSError, ValueError):
        raise UserError(f"Cannot read {path} as an image (unreadable or corrupt file).") from None
    colour = bool((np.abs(rgb[..., 0] - rgb[..., 1]).max() > 8) or (np.abs(rgb[..., 1] - rgb[..., 2]).max() > 8))
    if channels == 1 and colour and not convert:
        raise UserError(f"{path} is a colour image but this model was trained on grayscale (1-channel) "
                        f"images; pass convert=true to convert your images to grayscale.")
    if channels not in (1, 3):
        raise UserError(f"This run's images have {channels} channels; predict handles 1 or 3.")
    return to_chw(Image.fromarray(rgb.astype(np.uint8)), size, channels, invert)


def image_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image(p.name))


def read_support(root: Path) -> Tuple[List[str], List[List[Path]]]:
    if not root.is_dir():
        raise UserError(f"support={root} is not a folder; give a folder with one sub-folder of images per class.")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise UserError(f"support={root} needs at least 2 class sub-folders (found {len(classes)}).")
    files = []
    for c in classes:
        imgs = image_files(c)
        if not imgs:
            raise UserError(f"Support class '{c.name}' ({c}) has no images.")
        files.append(imgs)
    return [c.name for c in classes], files


def read_queries(spec: str) -> List[Path]:
    files: List[Path] = []
    for part in [p for p in spec.split(",") if p]:
        path = Path(part)
        if path.is_dir():
            files.extend(image_files(path))
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"Query {path} does not exist.")
    if not files:
        raise UserError(f"No query images found in query={spec}.")
    return files


def load_learner(run: Path, which: str, device: torch.device):
    """The trained algorithm and the pixel pipeline of a run dir."""
    from metafsl.engine import checkpoint  # noqa: PLC0415
    from metafsl.engine.components import build_learner, make_pixels  # noqa: PLC0415
    from metafsl.engine.run_dir import BEST, LAST  # noqa: PLC0415

    if not run.is_dir():
        raise UserError(f"Run dir {run} does not exist.")
    if which not in ("best", "last"):
        raise UserError(f"checkpoint must be best or last, not '{which}'.")
    path = run / (BEST if which == "best" else LAST)
    ck = checkpoint.load(path)
    cfg = ck["config"]
    ds_cfg = cfg["dataset"]
    channels, size = int(ds_cfg.get("channels", 1)), int(ds_cfg.get("image_size", 28))
    if ds_cfg.get("normalize", "none") == "dataset":
        from metafsl.data import load_dataset  # noqa: PLC0415

        stats = load_dataset(ds_cfg, cfg["paths"])  # cached: only its mean/std are used
    else:
        stats = None
    pixels = make_pixels(ds_cfg, stats)
    algo = build_learner(cfg, channels, size)
    checkpoint.load_weights(algo, ck["model"], path)
    return algo.to(device).eval(), pixels, cfg, channels, size


def predict_command(args: List[str]) -> int:
    from metafsl.engine.components import resolve_device  # noqa: PLC0415
    from metafsl.reporting import console as out  # noqa: PLC0415

    own: Dict[str, str] = {}
    for a in args:
        key = a.split("=", 1)[0]
        if "=" not in a or key not in OWN_KEYS:
            raise UserError(f"Unknown argument '{a}' for metafsl predict; use {', '.join(k + '=' for k in OWN_KEYS)}.")
        own[key] = a.split("=", 1)[1]
    for key in ("run", "support", "query"):
        if not own.get(key):
            raise UserError("metafsl predict needs run=<run dir> support=<dir of class folders> "
                            "query=<dir or files>.")
    run = Path(own["run"])
    device = resolve_device(own.get("device", "cpu"))
    algo, pixels, cfg, channels, size = load_learner(run, own.get("checkpoint", "best"), device)
    invert_opt = own.get("invert", "auto")
    invert = cfg["dataset"]["name"] in INVERTED if invert_opt == "auto" else _bool("invert", invert_opt)
    convert = _bool("convert", own.get("convert", "false"))
    names, support_files = read_support(Path(own["support"]))
    queries = read_queries(own["query"])

    def tensor(paths: List[Path]) -> torch.Tensor:
        arr = np.stack([load_image(p, size, channels, invert, convert) for p in paths])
        return pixels(torch.from_numpy(arr).to(device), train=False)

    flat = [p for files in support_files for p in files]
    labels = torch.tensor([i for i, files in enumerate(support_files) for _ in files], device=device)
    probs = algo.adapt(tensor(flat), labels)(tensor(queries)).float().softmax(-1).cpu()
    best_p, best = probs.max(-1)
    target = Path(own["out"]) if own.get("out") else \
        run / "predictions" / f"{_dt.datetime.now():%Y-%m-%d_%H-%M-%S}.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "predicted", "probability"] + [f"p_{n}" for n in names])
        for q, k, p, row in zip(queries, best.tolist(), best_p.tolist(), probs.tolist()):
            w.writerow([str(q), names[k], round(p, 6)] + [round(x, 6) for x in row])
    shots = ", ".join(f"{n} ({len(fs)})" for n, fs in zip(names, support_files))
    out.info(f"[bold]metafsl predict[/] {cfg['algo']['name']} from {run}; support classes: {shots}")
    out.table(f"Predictions for {len(queries)} images", ["file", "predicted class", "probability"],
              [[str(q), names[k], f"{p:.3f}"] for q, k, p in zip(queries, best.tolist(), best_p.tolist())],
              justify_right=["probability"])
    out.info(f"Wrote {target}.")
    return 0
