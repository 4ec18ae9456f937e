"""Experiment loggers through the real CLI (`logger=csv|tensorboard|mlflow|wandb`, several at
once): what each one writes equals metrics.jsonl, a resumed run continues its MLflow run, a sweep
is one MLflow experiment, W&B stays offline and silent, and a missing package is one sentence
before any work."""
from __future__ import annotations

import csv
import json
import os
import struct
import sys
from pathlib import Path

import pytest

from conftest import TINY


def jsonl(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def series(run: Path, split: str, key: str) -> list[tuple[int, float]]:
    return [(r["iteration"], r[key]) for r in jsonl(run) if r["split"] == split]


def approx_series(pairs: list[tuple[int, float]]) -> list:
    """(step, value) pairs: the same steps, values to float32 precision (TensorBoard's)."""
    return [(step, pytest.approx(value, rel=1e-6)) for step, value in pairs]


def mlflow_store(root: Path):
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=(root / "mlruns").resolve().as_uri())


def mlflow_runs(client, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, [e.name for e in client.search_experiments()]
    return client.search_runs([found.experiment_id])


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def assert_quiet(out: str, err: str) -> None:
    """No warning, banner or tracker chatter: the run's own lines only."""
    assert err == "", err
    assert not any(word in out.lower() for word in ("warning", "wandb:", "mlflow", "tracking")), out


def test_csv_tensorboard_and_mlflow_hold_the_rows_of_metrics_jsonl(run_cli, tmp_path):
    run = tmp_path / "run"
    code, out, err = run_cli("train", *TINY, "logger=[csv,mlflow,tensorboard]", f"paths.output_dir={tmp_path}",
                             f"hydra.run.dir={run}")
    assert code == 0, err
    assert_quiet(out, err)
    records = [r for r in jsonl(run) if r["split"] in ("train", "val")]
    assert {r["split"] for r in records} == {"train", "val"}
    # csv: the train/val rows of metrics.jsonl, column for column
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == len(records)
    for row, rec in zip(rows, records):
        assert (int(row["iteration"]), row["split"]) == (rec["iteration"], rec["split"])
        for key in ("loss", "acc", "ci95", "lr", "seconds"):
            assert (float(row[key]) if row[key] else None) == pytest.approx(rec.get(key)), key
    # MLflow: one run in experiment "metafsl", every metric at its iteration, the overrides as params
    client = mlflow_store(tmp_path)
    [found] = mlflow_runs(client, "metafsl")
    assert found.info.run_name == run.name and found.info.status == "FINISHED"
    assert (run / "mlflow_run_id").read_text().strip() == found.info.run_id
    rid = found.info.run_id
    for split, key in (("train", "loss"), ("train", "acc"), ("train", "lr"), ("val", "acc"), ("val", "ci95")):
        assert history(client, rid, f"{split}/{key}") == approx_series(series(run, split, key)), (split, key)
    assert [s for s, _ in history(client, rid, "val/acc")] == [3, 6]
    summary = json.loads((run / "summary.json").read_text())
    assert found.data.metrics["test/acc"] == pytest.approx(summary["test"]["acc"])
    assert found.data.metrics["test/ci95"] == pytest.approx(summary["test"]["ci95"])
    params = found.data.params
    assert {k: params.get(k) for k in ("algo", "backbone", "dataset", "episode", "trainer",
                                       "trainer.iterations", "dataset.n_classes")} == \
        {"algo": "protonet", "backbone": "conv4", "dataset": "glyphs", "episode": "5w1s",
         "trainer": "fast", "trainer.iterations": "6", "dataset.n_classes": "60"}
    assert not any(k.startswith(("paths", "logger", "hydra")) for k in params)
    assert client.list_artifacts(rid)[0].path == "curves.png"
    # TensorBoard: the same scalars, at the same steps
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == approx_series(series(run, "train", "loss"))
    assert [(e.step, e.value) for e in events.Scalars("val/acc")] == approx_series(series(run, "val", "acc"))


def test_a_resumed_run_continues_its_mlflow_run(run_cli, tmp_path, monkeypatch):
    """Ctrl-C during iteration 3 (after last.pt of iteration 2): the MLflow run is KILLED with
    what was logged; resuming continues the same run, which ends FINISHED with every iteration
    once (iteration 3, logged twice with the same value, is kept once)."""
    from metafsl.engine import hooks

    run = tmp_path / "run"
    args = ["train", *TINY, "trainer.iterations=6", "trainer.val_every=2", "trainer.log_every=1",
            "logger=mlflow", f"paths.output_dir={tmp_path}", f"hydra.run.dir={run}"]

    def ctrl_c(event: str, iteration: int) -> None:
        if event == "iteration_end" and iteration == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(hooks, "LISTENERS", [ctrl_c])
    code, _, _ = run_cli(*args)
    assert code == 130
    client = mlflow_store(tmp_path)
    [killed] = mlflow_runs(client, "metafsl")
    assert killed.info.status == "KILLED"
    assert [s for s, _ in history(client, killed.info.run_id, "train/loss")] == [1, 2, 3]

    monkeypatch.setattr(hooks, "LISTENERS", [])
    code, out, err = run_cli(*args, "resume=true")
    assert code == 0 and "Resuming" in out, err
    [resumed] = mlflow_runs(client, "metafsl")
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    assert history(client, resumed.info.run_id, "train/loss") == approx_series(series(run, "train", "loss"))
    assert [s for s, _ in history(client, resumed.info.run_id, "train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in history(client, resumed.info.run_id, "val/acc")] == [2, 4, 6]
    assert "resume" not in resumed.data.params and "test/acc" in resumed.data.metrics


def test_a_sweep_is_one_mlflow_experiment_with_a_run_per_job(run_cli, tmp_path):
    sweep = tmp_path / "lr-sweep"
    code, out, err = run_cli("sweep", f"hydra.sweep.dir={sweep}", "trainer.optimizer.lr=0.001,0.002", *TINY,
                             "trainer.iterations=3", "logger=mlflow", f"paths.output_dir={tmp_path}")
    assert code == 0, err
    client = mlflow_store(tmp_path)
    runs = mlflow_runs(client, "lr-sweep")
    assert len(runs) == 2 and client.get_experiment_by_name("metafsl") is None
    jobs = {p.name: p for p in sweep.iterdir() if p.is_dir()}
    assert {r.info.run_name for r in runs} == set(jobs)
    assert sorted(r.data.params["trainer.optimizer.lr"] for r in runs) == ["0.001", "0.002"]
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.params["trainer.iterations"] == "3"
        assert history(client, r.info.run_id, "train/loss") == \
            approx_series(series(jobs[r.info.run_name], "train", "loss"))


# ----------------------------------------------------------------------------- W&B
def wandb_records(path: Path):
    """The records of a W&B transaction log (``run-<id>.wandb``: a 7-byte header, then 32 KiB
    blocks of chunks: crc32, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, buf = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def test_wandb_runs_offline_and_silent_with_the_metrics(run_cli, tmp_path, monkeypatch):
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "home" / name))
    run = tmp_path / "run"
    code, out, err = run_cli("train", *TINY, "logger=wandb", f"hydra.run.dir={run}")
    assert code == 0, err
    assert_quiet(out, err)
    [offline] = (run / "wandb").glob("offline-run-*")
    run_id = (run / "wandb_run_id").read_text().strip()
    assert offline.name.endswith(run_id)
    logged: dict = {}
    summary: dict = {}
    config = None
    for record in wandb_records(offline / f"run-{run_id}.wandb"):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            for key, value in items.items():
                if "/" in key:
                    logged.setdefault(key, []).append((items["_step"], value))
        elif kind == "run":
            config = {i.key: json.loads(i.value_json) for i in record.run.config.update}
            assert record.run.project == "metafsl" and record.run.display_name == run.name
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                            for i in record.summary.update})
    assert logged["train/loss"] == approx_series(series(run, "train", "loss"))
    assert logged["val/acc"] == approx_series(series(run, "val", "acc"))
    assert config["algo"]["name"] == "protonet" and config["trainer"]["iterations"] == 6
    assert summary["test/acc"] == pytest.approx(json.loads((run / "summary.json").read_text())["test"]["acc"])
    # nothing but the local socket: no address of W&B's servers in its logs
    logs = "".join(p.read_text() for p in (offline / "logs").glob("*.log"))
    assert "api.wandb.ai" not in logs and "https://" not in logs


# ----------------------------------------------------------------------------- missing packages
@pytest.mark.parametrize("logger,module,pip", [("tensorboard", "tensorboard", "tensorboard"),
                                               ("mlflow", "mlflow", "mlflow-skinny"),
                                               ("wandb", "wandb", "wandb")])
def test_a_missing_package_is_one_sentence_before_any_work(run_cli, tmp_path, monkeypatch, logger, module, pip):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    run = tmp_path / "run"
    code, out, err = run_cli("train", *TINY, f"logger=[csv,{logger}]", f"hydra.run.dir={run}")
    assert code == 2
    assert err.count("\n") == 1 and f"logger={logger} needs the {pip} package (pip install {pip}" in err
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()
