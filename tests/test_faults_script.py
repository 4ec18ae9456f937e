"""scripts/faults.py (``make faults``) cannot rot: a quick campaign of two kills, each in a real
``metafsl train`` process, resumed and compared with an uninterrupted run."""
from __future__ import annotations

import json

from conftest import run_script


def test_fault_injection_smoke(tmp_path):
    work, evidence = tmp_path / "work", tmp_path / "evidence"
    code, out = run_script("faults", ["--quick", "--trials", "2", "--kinds", "hook,write", "--seed", "3",
                                      "--jobs", "2", "--work", work, "--evidence", evidence], timeout=180)
    # the comparison proved on copies of the reference that it tells identical from different
    assert "comparison self-check passed" in out, out
    trials = json.loads((evidence / "summary.json").read_text())["trials"]
    assert [t["kind"] for t in trials] == ["hook", "write"]
    assert all(t["kill_rc"] == 75 for t in trials), trials  # both faults fired
    assert trials[0]["where"] == "at iteration_end@2" and trials[0]["saved_iteration"] == 2
    assert trials[0]["outcome"] == "identical", trials[0]  # killed between steps: resumes exactly
    assert trials[1]["where"].startswith("inside the write of ")
    assert trials[1]["outcome"] in ("identical", "differed"), trials[1]  # a torn write never breaks resume
    assert code == (0 if all(t["outcome"] == "identical" for t in trials) else 1), out
    report = (evidence / "report.md").read_text()
    assert "| hook | 1 |" in report and "python scripts/faults.py --quick" in report
    assert (evidence / "configs" / "protonet.yaml").is_file()
    assert not list(evidence.rglob("*.pt")), "evidence must hold no checkpoints"
