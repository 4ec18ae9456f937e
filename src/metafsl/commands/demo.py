"""`metafsl demo` (what `make demo` runs): ProtoNet and MAML meta-trained on the built-in
glyphs dataset, tested 5-way 1-shot on 600 fixed episodes next to the same backbone untrained."""
from __future__ import annotations

from typing import List


def demo_command(args: List[str]) -> int:
    from metafsl.cli import run_hydra  # noqa: PLC0415

    return run_hydra("sweep", ["experiment=demo_protonet,demo_maml", *args])
