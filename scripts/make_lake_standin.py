#!/usr/bin/env python
"""Build a stand-in for Lake et al.'s (2015) ``all_runs.zip`` from the Omniglot evaluation set.

The official one-shot classification runs are not in this checkout; this writes 20 runs in
exactly their format, drawn from the 20 evaluation alphabets:

    runNN/training/class01.png ... class20.png   one drawer's drawing of each of 20 characters
    runNN/test/item01.png ... item20.png          a second drawer's drawing of each, shuffled
    runNN/class_labels.txt                        runNN/test/itemKK.png runNN/training/classMM.png

Each run takes 20 characters of one alphabet (alphabets with fewer than 20 characters are
skipped, the others used in turn), and two different drawers for the training and the test
images, as in the original protocol.  The PNGs are copied unchanged (105x105, ink dark on white).

    python scripts/make_lake_standin.py --omniglot ../shared/data/omniglot --out all_runs_standin.zip
    metafsl test run=<run dir> protocol=lake20 protocol.root=all_runs_standin.zip
"""
from __future__ import annotations

import argparse
import random
import re
import zipfile
from collections import defaultdict
from pathlib import Path

from metafsl.data.images import Archive, iter_images

RUNS, WAYS = 20, 20


def characters(archive: Archive):
    """{alphabet: {character: {drawer: file name}}} of images_evaluation."""
    table = defaultdict(lambda: defaultdict(dict))
    for name in iter_images(archive.names()):
        parts = name.split("/")
        m = re.match(r"\d+_(\d+)\.png$", parts[-1])
        if len(parts) >= 3 and m:
            table[parts[-3]][parts[-2]][int(m.group(1))] = name
    return table


def build(omniglot: Path, out: Path, seed: int = 0) -> None:
    src = next((p for p in (omniglot / "images_evaluation", omniglot / "images_evaluation.zip") if p.exists()), None)
    if src is None:
        raise SystemExit(f"images_evaluation(.zip) not found in {omniglot}")
    archive = Archive(src)
    table = characters(archive)
    alphabets = sorted(a for a, chars in table.items() if len(chars) >= WAYS)
    rng = random.Random(seed)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for r in range(1, RUNS + 1):
            alphabet = alphabets[(r - 1) % len(alphabets)]
            chars = rng.sample(sorted(table[alphabet]), WAYS)
            drawers = sorted(set.intersection(*(set(table[alphabet][c]) for c in chars)))
            train_drawer, test_drawer = rng.sample(drawers, 2)
            run = f"run{r:02d}"
            order = list(range(WAYS))
            rng.shuffle(order)  # test item k shows character order[k]
            lines = []
            for k, c in enumerate(chars):
                z.writestr(f"{run}/training/class{k + 1:02d}.png", archive.read(table[alphabet][c][train_drawer]))
            for k, ci in enumerate(order):
                z.writestr(f"{run}/test/item{k + 1:02d}.png", archive.read(table[alphabet][chars[ci]][test_drawer]))
                lines.append(f"{run}/test/item{k + 1:02d}.png {run}/training/class{ci + 1:02d}.png")
            z.writestr(f"{run}/class_labels.txt", "\n".join(lines) + "\n")
            print(f"{run}: {alphabet}, drawers {train_drawer} (training) / {test_drawer} (test)")
    archive.close()
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--omniglot", type=Path, required=True, help="folder with images_evaluation(.zip)")
    parser.add_argument("--out", type=Path, default=Path("all_runs_standin.zip"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build(args.omniglot, args.out, args.seed)


if __name__ == "__main__":
    main()
