"""Real photos in the miniImageNet CSV layout (../shared/data/tiny-fewshot): 64 / 16 / 20
classes of 150 images through `metafsl data`.  Skipped when the data is absent."""
from __future__ import annotations

import re

from conftest import shared


def test_tiny_fewshot_through_the_data_command(run_cli):
    root = shared("tiny-fewshot")
    code, out, err = run_cli("data", "dataset=mini_imagenet", f"dataset.root={root}", "dataset.image_size=32")
    assert code == 0, err
    rows = {m[0]: m[1:] for m in re.findall(r"(train|val|test)\s*│\s*(\d+)\s*│\s*(\d+)\s*│\s*(\d+)\s*│\s*(\d+)", out)}
    assert rows == {"train": ("64", "9600", "150", "150"), "val": ("16", "2400", "150", "150"),
                    "test": ("20", "3000", "150", "150")}
    assert "3x32x32" in out and "0 unreadable files" in out
