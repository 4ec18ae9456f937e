"""The run directory is the unit of record: config snapshot, metrics, checkpoints, summary."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List

LAST = Path("checkpoints/last.pt")
BEST = Path("checkpoints/best.pt")
SUMMARY = "summary.json"
#: a `metafsl test` run's own record, in its run dir
RESULT = "result.json"
METRICS = "metrics.jsonl"


def write_json(path: Path, data: Dict[str, Any]) -> None:
    """Atomic JSON write."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Dict[str, Any]:
    return json.loads(Path(path).read_text())


class MetricsLog:
    """Append-only ``metrics.jsonl``: one JSON record per logged step."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def truncate_after(self, iteration: int) -> None:
        """Drop records past ``iteration`` (used when a run resumes from a checkpoint)."""
        if not self.path.exists():
            return
        keep: List[str] = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("iteration", 0) <= iteration:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
        self.path.write_text("".join(k + "\n" for k in keep))

    def write(self, record: Dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> List[Dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]
