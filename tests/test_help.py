"""Every command answers --help with its usage (exit 0), and the top-level help imports no torch."""
from __future__ import annotations

import subprocess
import sys

import pytest

from metafsl import cli


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_command_has_help(command, capsys):
    code = cli.main([command, "--help"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "error" not in (out + err).lower().split("\n")[0]
    assert command in out or "metafsl" in out


def test_top_level_help_and_list_import_no_torch():
    probe = ("import sys; from metafsl import cli; cli.main(['--help']); cli.main(['list', 'algo']); "
             "cli.main(['list', '--help']); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
