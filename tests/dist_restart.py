"""A worker killed with SIGKILL mid-training (rank 0, after iteration 4; last.pt holds iteration 3)
is restarted by the elastic launcher (``distributed.max_restarts=1``), resumes from last.pt and the
run ends exactly as an uninterrupted 2-worker run of the same config.

    PYTHONPATH=src:tests python tests/dist_restart.py <empty dir>

Run as its own process (``tests/test_distributed.py`` starts it when METAFSL_SLOW_TESTS=1): the
launcher spawns workers, which re-import the main module.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from conftest import TINY, same_run
from dist_helpers import KillAt

DIST = [*TINY, "trainer.meta_batch_size=2", "seed=3", "distributed.nproc_per_node=2"]


def main(root: Path) -> None:
    from metafsl import api

    cfg = api.compose("train", [*DIST, "distributed.max_restarts=1"])
    api.train(cfg, root / "full")
    api.train(cfg, root / "killed", callbacks=[KillAt(4)])
    rows = [json.loads(x) for x in (root / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if r["split"] == "val"] == [3, 6], rows
    same_run(root / "killed", root / "full")
    print("restarted run ends as the uninterrupted one")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
