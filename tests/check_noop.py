"""Run the learning tests with every torch optimiser's ``step`` turned into a no-op
(tests/noop_optim/sitecustomize.py on PYTHONPATH) and require that every one of them fails.

    python tests/check_noop.py [extra pytest args]      (what `make check-noop` runs)

Exit 0 only if each learning test failed because the trained model did not beat the untrained
one; a test that passed (it cannot tell a model that learned from one that did not), errored
or was skipped makes the check fail, with its name.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
#: what a learning test's failure message says when training did not help (tests/test_learning.py)
REASON = "did not beat the untrained model"


def run_pytest(report: Path, extra: list[str]) -> int:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS / "noop_optim"), str(REPO / "src"),
                                                    env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "pytest", "-q", str(TESTS / "test_learning.py"), "-k", "beats_untrained",
           f"--junitxml={report}", *extra]
    return subprocess.run(cmd, env=env, cwd=REPO).returncode


def verdicts(report: Path) -> dict[str, str]:
    """test name -> passed | failed-as-expected | failed: <message> | error | skipped."""
    out = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name")
        failure = case.find("failure")
        if failure is not None:
            text = (failure.get("message") or "") + (failure.text or "")
            out[name] = "failed-as-expected" if REASON in text else f"failed: {text.splitlines()[0][:200]}"
        elif case.find("error") is not None:
            out[name] = "error"
        elif case.find("skipped") is not None:
            out[name] = "skipped"
        else:
            out[name] = "passed"
    return out


def main(extra: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "noop.xml"
        run_pytest(report, extra)
        if not report.exists():
            print("check-noop: pytest wrote no report.", file=sys.stderr)
            return 1
        results = verdicts(report)
    bad = {k: v for k, v in results.items() if v != "failed-as-expected"}
    print(f"\ncheck-noop: {len(results)} learning tests ran with no-op optimisers; "
          f"{len(results) - len(bad)} failed as they must.")
    for name, verdict in sorted(bad.items()):
        print(f"  NOT A FAILURE FOR THE RIGHT REASON: {name}: {verdict}")
    if len(results) < 16:
        print(f"check-noop: expected at least 16 learning tests (one per method), found {len(results)}.")
        return 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
