"""The structure the rest is built on: imports run one way (top: CLI, bottom: config and errors),
one registry of commands, the engine reports through callbacks (a library call is silent), and
`metafsl cp` / `metafsl validate`."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import yaml

from conftest import TINY, TINY_DATA

SRC = Path(__file__).resolve().parents[1] / "src" / "metafsl"

#: the layers, top first; a module may import its own layer and the layers below it only
LAYERS = [
    ("cli",),
    ("commands",),
    ("api",),
    ("reporting",),
    ("engine",),
    ("algorithms", "data", "models", "_l2l"),
    ("options", "overrides"),
    ("config", "arguments"),
    ("errors", "conf", "__version__"),
]


def _layer(module: str) -> int:
    part = module.split(".")[1] if module.startswith("metafsl.") and "." in module else module
    for i, names in enumerate(LAYERS):
        if part in names:
            return i
    raise AssertionError(f"metafsl module {module} has no layer in tests/test_house.py")


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("metafsl."):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            yield node.lineno, names[0] if node.module != "metafsl" else names[1]
        elif isinstance(node, ast.ImportFrom) and node.module == "metafsl":
            for a in node.names:
                yield node.lineno, f"metafsl.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("metafsl."):
                    yield node.lineno, a.name


def test_imports_run_one_way():
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        if module == "metafsl":
            continue
        mine = _layer(module)
        for line, target in _imports(path):
            if _layer(target) < mine:
                upward.append(f"{path.relative_to(SRC)}:{line} imports {target}")
    assert not upward, "imports that run back up the layers:\n" + "\n".join(upward)


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 50:
                long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}")
    assert not long, long


# ----------------------------------------------------------------------------- the registry
def test_help_and_dispatch_read_one_registry(run_cli):
    from metafsl.commands import COMMANDS

    code, out, _ = run_cli("--help")
    assert code == 0
    for name, command in COMMANDS.items():
        assert f"  {name:<9} {command.summary}" in out
        code, text, _ = run_cli(name, "--help")
        assert code == 0 and text.startswith(f"usage: {command.usage}")
        assert all(e in text for e in command.examples)
    code, _, err = run_cli("nope")
    assert code == 2 and all(name in err for name in COMMANDS)


def test_a_new_command_is_one_module_and_one_registry_line(run_cli, monkeypatch):
    from metafsl import commands
    from metafsl.commands.base import Command
    from metafsl.errors import UserError

    def run(args):
        if args == ["bad"]:
            raise UserError("That is not a good argument.")
        print("hello", *args)
        return 0

    hello = Command("hello", "say hello", "metafsl hello [words]", "Says hello.", ("metafsl hello you",), run)
    monkeypatch.setitem(commands.COMMANDS, "hello", hello)
    assert run_cli("hello", "you")[:2] == (0, "hello you\n")
    code, out, _ = run_cli("--help")
    assert "say hello" in out
    code, _, err = run_cli("hello", "bad")
    assert code == 2 and err.strip() == "error: That is not a good argument."


# ----------------------------------------------------------------------------- callbacks
class Recorder:
    """Records what a training tells its callbacks."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        if not name.startswith("on_"):
            raise AttributeError(name)
        return lambda *args: self.calls.append((name, args))


def test_a_library_training_is_silent_and_tells_its_callbacks(tmp_path, capsys):
    from metafsl import api

    recorder = Recorder()
    summary = api.train(api.compose("train", TINY), tmp_path / "run", overrides=TINY, callbacks=[recorder])
    out, err = capsys.readouterr()
    assert out == "" and err == "", (out, err)
    names = [name for name, _ in recorder.calls]
    assert names[0] == "on_run_start" and names[-1] == "on_train_end"
    assert names.index("on_train_start") < names.index("on_train_stop") < names.index("on_train_end")
    rows = [args[0] for name, args in recorder.calls if name == "on_metrics"]
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows == logged  # every row of the record, as it was written
    ends = [args[1] for name, args in recorder.calls if name == "on_event" and args[0] == "iteration_end"]
    assert ends == list(range(1, 7))
    assert ("on_train_end", (summary, tmp_path / "run")) in recorder.calls
    assert (tmp_path / "run" / "curves.png").is_file()  # the run's own figure needs no callback


def test_the_cli_shows_progress_results_and_notices(tmp_path, run_cli):
    code, out, _ = run_cli("train", *TINY, f"hydra.run.dir={tmp_path / 'r'}")
    assert code == 0 and "metafsl train protonet" in out and "Results" in out
    code, out, _ = run_cli("train", *TINY, "resume=true", "trainer.iterations=9", f"hydra.run.dir={tmp_path / 'r'}")
    assert code == 0 and f"Resuming {tmp_path / 'r'} from iteration 6." in " ".join(out.split())


# ----------------------------------------------------------------------------- cp
def test_cp_copies_a_preset_that_runs_as_edited(tmp_path, run_cli):
    target = tmp_path / "mine.yaml"
    code, out, _ = run_cli("cp", "experiment=demo_protonet", str(target))
    assert code == 0 and f"metafsl train config={target}" in " ".join(out.split())
    text = target.read_text()
    assert text.startswith("# @package _global_")
    conf = yaml.safe_load(text)
    conf["trainer"] = {**conf["trainer"], "iterations": 4, "val_every": 2, "val_episodes": 4}
    target.write_text("# @package _global_\n" + yaml.safe_dump(conf))
    run_dir = tmp_path / "run"
    code, out, err = run_cli("train", f"config={target}", *TINY[:2], "eval.episodes=4",
                             f"hydra.run.dir={run_dir}", "extra.eval_untrained=false")
    assert code == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train"]["iterations"] == 4 and summary["name"] == "demo_protonet"
    assert summary["episode"]["train"]["n_way"] == 20  # the preset's own settings came along
    code, _, err = run_cli("cp", "experiment=demo_protonet", str(target))
    assert code == 2 and "already exists" in err and "overwrite=true" in err
    code, _, err = run_cli("cp", "experiment=nope", str(tmp_path / "x.yaml"))
    assert code == 2 and "Unknown experiment 'nope'" in err
    code, _, err = run_cli("train", f"config={tmp_path / 'missing.yaml'}")
    assert code == 2 and "is not a YAML file" in err


def test_cp_copies_a_table(tmp_path, run_cli):
    from metafsl.commands.reproduce import load_table

    code, _, _ = run_cli("cp", "table=test_glyphs", str(tmp_path / "t.yaml"))
    assert code == 0 and load_table(str(tmp_path / "t.yaml")).rows == load_table("test_glyphs").rows


# ----------------------------------------------------------------------------- validate
def test_validate_passes_a_good_config_and_writes_nothing(tmp_path, run_cli):
    code, out, err = run_cli("validate", *TINY, f"paths.output_dir={tmp_path}")
    assert code == 0 and out.startswith("OK:"), err
    assert list(tmp_path.iterdir()) == []


def test_a_command_composes_its_config_once(run_cli, monkeypatch):
    """Hydra would compose everything twice (once only to read ``hydra.mode``); metafsl knows the
    mode from the subcommand and skips that probe, for every command, and puts it back after."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.hydra import Hydra

    modes, real = [], ConfigLoaderImpl.load_configuration

    def counting(self, *args, **kwargs):
        modes.append(str(kwargs.get("run_mode")))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ConfigLoaderImpl, "load_configuration", counting)
    code, _, err = run_cli("data", *TINY_DATA)
    assert code == 0, err
    assert modes == ["RunMode.RUN"]
    assert Hydra.get_mode.__name__ == "get_mode"


def test_validate_lists_every_problem(run_cli):
    code, _, err = run_cli("validate", *TINY, "algo=maml", "episode.test.n_way=20", "algo.inner_lrr=1",
                           "backbone=nope", "trainer.meta_batch_size=0", "eval.split=bogus", "+algo.tau=1")
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err
    text = " ".join(err.split())
    for expected in ("Unknown backbone 'nope'", "Unknown option 'algo.inner_lrr'",
                     "trainer.meta_batch_size must be >= 1", "eval.split must be one of",
                     "has no option 'tau'"):
        assert expected in text, (expected, err)
    assert lines[-1].startswith("error: 5 problem(s) found")


def test_validate_checks_data_and_episodes_against_the_learner(tmp_path, run_cli):
    code, _, err = run_cli("validate", "dataset=omniglot", f"paths.data_dir={tmp_path}")
    assert code == 2 and "omniglot" in err.lower() and "1 problem(s)" in err
    code, _, err = run_cli("validate", *TINY, "algo=maml", "episode.test.n_way=20")
    assert code == 2 and "5-way output head" in err
    code, _, err = run_cli("validate", *TINY, "episode.test.n_shot=30")
    text = " ".join(err.split())
    assert code == 2 and "of the val split" in text and "of the test split" in text and "2 problem(s)" in text


def test_validate_a_test_of_a_run(tmp_path, run_cli):
    run_dir = tmp_path / "maml"
    assert run_cli("train", *TINY, "algo=maml", f"hydra.run.dir={run_dir}")[0] == 0
    assert run_cli("validate", f"run={run_dir}", "episode=5w5s")[0] == 0
    code, _, err = run_cli("validate", f"run={run_dir}", "episode=20w1s")
    assert code == 2 and "5-way output head" in err
    code, _, err = run_cli("validate", f"run={tmp_path / 'none'}")
    assert code == 2 and "does not exist" in err
