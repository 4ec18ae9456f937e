"""`metafsl export`: one standalone classifier file (TorchScript or ONNX) whose predictions equal
`metafsl predict`'s, its usage script, int8 and fp16 ONNX files, and the refusals."""
from __future__ import annotations

import csv
import io
import json
import runpy
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY
from metafsl.cli import main
from test_algorithms_cli import FAST

pytest.importorskip("onnxruntime")
import onnxruntime as ort  # noqa: E402

CLASSES = 3


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """support/<class>/*.png (3 classes x 3) and query/c<k>_<j>.png (3 classes x 5), from glyphs
    test classes, as a user lays them out."""
    from metafsl.data import glyphs

    split = glyphs.generate(n_classes=40, examples_per_class=8, image_size=28, seed=5)["test"]
    root = tmp_path_factory.mktemp("export_images")
    (root / "query").mkdir()
    for k, label in enumerate(torch.unique(split.labels)[:CLASSES].tolist()):
        idx = torch.nonzero(split.labels == label).flatten().tolist()
        (root / "support" / f"class{k}").mkdir(parents=True)
        for j, i in enumerate(idx[:3]):
            Image.fromarray(split.images[i, 0].numpy()).save(root / "support" / f"class{k}" / f"{j}.png")
        for j, i in enumerate(idx[3:8]):
            Image.fromarray(split.images[i, 0].numpy()).save(root / "query" / f"c{k}_{j}.png")
    return root / "support", root / "query"


def _train(tmp_path_factory, name: str, *extra: str) -> Path:
    run = tmp_path_factory.mktemp("export_runs") / name
    code = main(["train", *TINY, f"algo={name}", "backbone.hidden=16", "test=false", "trainer.val_episodes=2",
                 f"episode.train.n_way={CLASSES}", f"episode.test.n_way={CLASSES}", f"hydra.run.dir={run}",
                 *FAST.get(name, []), *extra])
    assert code == 0, name
    return run


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """One tiny run per family tested end to end: ProtoNet (30 iterations, so that its batch-norm
    running statistics have left their initial values) and MAML (batch statistics)."""
    return {"protonet": _train(tmp_path_factory, "protonet", "trainer.iterations=30", "trainer.val_every=30"),
            "maml": _train(tmp_path_factory, "maml", "trainer.iterations=2", "trainer.val_every=2")}


def _queries(folder: Path):
    return sorted(folder.iterdir())


def _predict(run_cli, run: Path, support: Path, query: Path, out: Path, *extra: str) -> np.ndarray:
    code, _, err = run_cli("predict", f"run={run}", f"support={support}", f"query={query}", f"out={out}", *extra)
    assert code == 0, err
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["file"]).name for r in rows] == [p.name for p in _queries(query)]
    return np.array([[float(r[f"p_class{k}"]) for k in range(CLASSES)] for r in rows])


def _usage(script: Path, files) -> dict:
    """Run the written usage script in-process, as `python <script> <files>`: {file: (class, p)}."""
    argv, buf = sys.argv, io.StringIO()
    sys.argv = [str(script), *map(str, files)]
    try:
        with redirect_stdout(buf):
            namespace = runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv
    lines = [line.split("\t") for line in buf.getvalue().splitlines()]
    return {Path(f).name: (c, float(p)) for f, c, p in lines}, namespace


def _load_file(path: Path, fmt: str):
    """(class names, images -> probabilities) using only torch or only onnxruntime."""
    if fmt == "torchscript":
        model = torch.jit.load(str(path))
        return list(model.class_names), lambda x: model(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = json.loads(session.get_modelmeta().custom_metadata_map["class_names"])
    return names, lambda x: session.run(None, {"images": x})[0]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("algo", ["protonet", "maml"])
def test_exported_file_predicts_what_predict_does(run_cli, runs, images, tmp_path, algo, fmt):
    support, query = images
    out = tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'pt'}"
    code, text, err = run_cli("export", f"run={runs[algo]}", f"support={support}", f"format={fmt}", f"out={out}")
    assert code == 0, err
    assert out.is_file() and "Checked: on the 9 support images" in text and "import" in text
    expected = _predict(run_cli, runs[algo], support, query, tmp_path / "pred.csv")
    names, classify = _load_file(out, fmt)
    assert names == [f"class{k}" for k in range(CLASSES)]
    answers, namespace = _usage(out.with_name(out.name + ".usage.py"), _queries(query))
    got = classify(namespace["images"])  # the usage script's images: loaded as predict loads them
    assert np.abs(got - expected).max() < 1e-4
    assert [answers[p.name][0] for p in _queries(query)] == [names[i] for i in expected.argmax(1)]
    assert (algo == "maml") == ("statistics of the batch" in text)  # transductive: said


def test_an_exported_baseline_holds_the_head_predict_fits(run_cli, tmp_path_factory, images, tmp_path):
    """A transfer baseline draws its new head's initialisation at random: export and predict
    both draw it from the same fixed seed, so the file predicts what predict does, export after
    export; with eval.tta the head is fitted on the support embeddings averaged over the views,
    as predict fits it."""
    support, query = images
    run = _train(tmp_path_factory, "baselinepp", "trainer.iterations=2", "trainer.val_every=2")
    predicted = {}
    for k, choice in enumerate(["eval.tta=1", "eval.tta=1", "eval.tta=3"]):
        if choice not in predicted:
            predicted[choice] = _predict(run_cli, run, support, query, tmp_path / f"pred{k}.csv", choice)
        expected = predicted[choice]
        out = tmp_path / f"model{k}.pt"
        code, _, err = run_cli("export", f"run={run}", f"support={support}", "format=torchscript", f"out={out}",
                               choice)
        assert code == 0, err
        torch.rand(5)  # whatever runs between two exports
        names, classify = _load_file(out, "torchscript")
        _, namespace = _usage(out.with_name(out.name + ".usage.py"), _queries(query))
        assert np.abs(classify(namespace["images"]) - expected).max() < 1e-4


#: ``metafsl predict`` without test-time choices, per run (the runs are module fixtures)
_PLAIN = {}


@pytest.mark.parametrize("fmt,choice", [("onnx", ("eval.tta=10",)), ("torchscript", ("eval.tta=5",)),
                                        ("torchscript", ("eval.finetune_steps=3", "eval.finetune_lr=0.5"))],
                         ids=["onnx-tta10", "torchscript-tta5", "torchscript-finetune3"])
def test_an_exported_file_keeps_predicts_test_time_choices(run_cli, runs, images, tmp_path, fmt, choice):
    """eval.tta (views averaged inside the file: shifts, and mirror images past 5) and
    eval.finetune_steps (the tuned backbone in the file): the file predicts what predict does
    with the same choice, which is not what it does without it."""
    support, query = images
    run = runs["protonet"]
    out = tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'pt'}"
    code, text, err = run_cli("export", f"run={run}", f"support={support}", f"out={out}", *choice)
    assert code == 0, err
    assert "Built in, as metafsl predict does: " in text
    expected = _predict(run_cli, run, support, query, tmp_path / "pred.csv", *choice)
    if run not in _PLAIN:  # plain predict once for the three choices
        _PLAIN[run] = _predict(run_cli, run, support, query, tmp_path / "plain.csv")
    plain = _PLAIN[run]
    _, namespace = _usage(out.with_name(out.name + ".usage.py"), _queries(query))
    got = _load_file(out, fmt)[1](namespace["images"])
    assert np.abs(got - expected).max() < 1e-4
    assert np.abs(got - plain).max() > 1e-3  # the choice changes the answers: it is in the file
    key, value = choice[0].split("=")
    assert _metadata(out, fmt)["test_time"][key.split(".")[1]] == int(value)


def _metadata(path: Path, fmt: str) -> dict:
    if fmt == "torchscript":
        extra = {"metafsl.json": ""}
        torch.jit.load(str(path), _extra_files=extra)
        return json.loads(extra["metafsl.json"])
    return json.loads(ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map["metafsl"])


def test_int8_and_fp16_files_stay_close_to_fp32(run_cli, runs, images, tmp_path):
    """int8 (static, calibrated on the support images) and fp16 ONNX files of the MAML run against
    its fp32 file on the 15 query images: probabilities within a few hundredths, and the same top
    class wherever fp32 is not a near tie (a near tie may flip under any rounding)."""
    support, query = images
    batch = np.stack([np.asarray(Image.open(p))[None] for p in _queries(query)])
    probs = {}
    for quantize in ("none", "int8", "fp16"):
        out = tmp_path / f"{quantize}.onnx"
        code, text, err = run_cli("export", f"run={runs['maml']}", f"support={support}", f"out={out}",
                                  f"quantize={quantize}")
        assert code == 0, err
        probs[quantize] = _load_file(out, "onnx")[1](batch)
    assert (tmp_path / "int8.onnx").stat().st_size > 0 and "gives the fp32 model's top class" in text
    import onnx

    weights = {onnx.helper.tensor_dtype_to_np_dtype(t.data_type) for t in
               onnx.load(str(tmp_path / "fp16.onnx")).graph.initializer if len(t.dims) >= 2}
    assert weights == {np.dtype(np.float16)}  # convolution and linear weights
    fp32 = probs["none"]
    top2 = np.sort(fp32, 1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.05
    assert clear.sum() >= 8  # the check below is not vacuous
    for quantize, tolerance in (("int8", 0.05), ("fp16", 0.005)):
        assert np.abs(probs[quantize] - fp32).mean() < tolerance / 2, quantize
        assert np.abs(probs[quantize] - fp32).max() < 2 * tolerance, quantize
        agree = probs[quantize].argmax(1)[clear] == fp32.argmax(1)[clear]
        assert agree.mean() >= 0.9, (quantize, agree)


def test_export_refuses_in_one_sentence(run_cli, runs, images, tmp_path_factory, tmp_path):
    support, _ = images
    mann = _train(tmp_path_factory, "mann", "trainer.iterations=1", "trainer.val_every=1")
    out = tmp_path / "mann.onnx"
    code, _, err = run_cli("export", f"run={mann}", f"support={support}", f"out={out}")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "MANN cannot be exported: its classifier is the state of its controller" in err
    assert not out.exists() and not (tmp_path / "mann.onnx.usage.py").exists()
    run = runs["protonet"]
    refusals = {
        ("format=tflite",): "format must be one of onnx, torchscript (got 'tflite').",
        ("format=torchscript", "quantize=int8"): "quantize=int8 is for format=onnx",
        ("quantize=int4",): "quantize must be one of none, int8, fp16 (got 'int4').",
        ("format=torchscript", f"out={tmp_path / 'm.onnx'}"): "names an ONNX file but format=torchscript",
        (f"out={tmp_path}",): "is a directory",
        ("colour=true",): "Unknown argument 'colour=true' for metafsl export",
        ("eval.tta=11",): "eval.tta must be an integer from 1 to 10 (got 11).",
        ("eval.tta=two",): "eval.tta must be an integer from 1 to 10 (got 'two').",
    }
    for args, sentence in refusals.items():
        code, _, err = run_cli("export", f"run={run}", f"support={support}", *args)
        assert code == 2 and sentence in err and len(err.strip().splitlines()) == 1, (args, err)
    taken = tmp_path / "taken.pt"
    taken.write_bytes(b"keep")
    code, _, err = run_cli("export", f"run={run}", f"support={support}", f"out={taken}")
    assert code == 2 and "already exists; pass overwrite=true" in err and taken.read_bytes() == b"keep"
    code, _, err = run_cli("export", f"run={run}")
    assert code == 2 and "needs run=<run dir> support=" in err
    code, _, err = run_cli("export", f"run={runs['maml']}", f"support={support}", "eval.tta=3",
                           f"out={tmp_path / 'maml.onnx'}")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "maml has none: use eval.tta=1" in err
    assert not (tmp_path / "maml.onnx").exists()


def test_default_out_is_a_new_file_in_the_run(run_cli, runs, images):
    code, text, err = run_cli("export", f"run={runs['protonet']}", f"support={images[0]}", "quantize=int8")
    assert code == 0, err
    written = sorted((runs["protonet"] / "exports").iterdir())
    assert [p.name.endswith(".int8.onnx") for p in written] == [True, False]
    assert written[1].name == written[0].name + ".usage.py"
    meta = json.loads(ort.InferenceSession(str(written[0])).get_modelmeta().custom_metadata_map["metafsl"])
    assert meta["input"] == {"name": "images", "dtype": "uint8", "shape": ["N", 1, 28, 28], "channels": 1,
                             "image_size": 28, "resize": "lanczos", "invert": False}
    assert meta["quantize"] == "int8" and meta["algo"] == "protonet" and not meta["transductive"]
