"""Exported classifiers (issue 28 §4): file size, CPU images/s and accuracy on the same test
episodes, for conv4 and ResNet-12 ProtoNet runs.

    make bench-export                                  # trains two small runs, then measures (minutes)
    python scripts/bench_export.py --out docs/evidence/export
    python scripts/bench_export.py --smoke             # untrained nets, 2 episodes: seconds

Each backbone gets a ProtoNet run on tiny-fewshot (real 84x84 photos, ``../shared/data``; the
built-in glyphs at 84x84 where it is absent), trained briefly (``--conv4-minutes``,
``--resnet12-iterations``; an existing run dir under ``--work`` is reused).  Then, on the same
seeded 5-way 5-shot 15-query test episodes, every episode's support set is exported as metafsl
export does (``engine.export``: TorchScript, ONNX fp32, ONNX int8) and its 75 queries classified
by each file: accuracy (mean ± 95% CI over episodes) and how often int8 gives fp32's top class.
Speed: the first episode's files on a batch of its 75 queries, repeated for ``--seconds``, with
``--threads`` threads for torch and onnxruntime alike: torch eager (the same module, not
traced), TorchScript, onnxruntime fp32 / int8 / fp16 (fp16 on the CPU provider only to show that
it does not pay there).  Results: a table on stdout, ``export_bench.json`` and ``.csv`` in ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

from bench import machine

from metafsl import api
from metafsl.data import load_dataset
from metafsl.data.sampler import EpisodeSampler
from metafsl.engine import export as ex
from metafsl.engine.predict import load_learner

TINY_FEWSHOT = REPO.parent / "shared" / "data" / "tiny-fewshot"
WAYS, SHOTS, QUERIES = 5, 5, 15
VARIANTS = [("torch eager", "-", "fp32"), ("TorchScript", "torchscript", "fp32"),
            ("onnxruntime", "onnx", "fp32"), ("onnxruntime", "onnx", "int8"), ("onnxruntime", "onnx", "fp16")]


def data_overrides(smoke: bool):
    if TINY_FEWSHOT.exists() and not smoke:
        return ["dataset=mini_imagenet", f"dataset.root={TINY_FEWSHOT}"], "tiny-fewshot (real 84x84 RGB photos)"
    # learn2learn's ResNet-12 ends in a 5x5 average pool: 84x84 images
    return (["dataset=glyphs", "dataset.n_classes=100", "dataset.image_size=84"],
            "built-in glyphs, 84x84 grey" + (" (smoke)" if smoke else " (tiny-fewshot absent)"))


def train_run(work: Path, backbone: str, data, args) -> Path:
    """A small ProtoNet run of ``backbone`` (reused when its dir already holds one)."""
    run = work / backbone
    if (run / "checkpoints" / "last.pt").exists():
        print(f"reusing {run}", flush=True)
        return run
    budget = (["trainer.iterations=1"] if args.smoke else
              ["trainer.iterations=100000", f"trainer.max_minutes={args.conv4_minutes}"] if backbone == "conv4" else
              [f"trainer.iterations={args.resnet12_iterations}"])
    overrides = ["algo=protonet", f"backbone={backbone}", *data, "episode=5w5s", "episode.train.n_query=5",
                 "trainer.val_every=100000", "trainer.val_episodes=10", "test=false", *budget]
    print(f"training {run}: metafsl train {' '.join(overrides)}", flush=True)
    t0 = time.perf_counter()
    api.train(api.compose("train", overrides), run, overrides=overrides)
    print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    return run


def sessions(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def write_files(prepared, folder: Path, which):
    """{(format, precision): (file size, classify)} for one episode's classifier, ``which``
    (format, quantize) pairs; ("-", "fp32") is the module itself, run by torch (eager)."""
    files = {("-", "fp32"): (None, prepared.model)}
    for fmt, quantize in which:
        path = folder / f"{fmt}_{quantize}{ex.SUFFIX[fmt]}"
        result = ex.write(prepared, fmt, quantize, path)
        if fmt == "torchscript":
            model = torch.jit.load(str(path))
            classify = lambda x, m=model: m(x)  # noqa: E731
        else:
            classify = sessions(path, torch.get_num_threads())
        files[(fmt, "fp32" if quantize == "none" else quantize)] = (result.size_bytes, classify)
    return files


def images_per_second(classify, batch: torch.Tensor, seconds: float) -> float:
    with torch.no_grad():
        classify(batch)  # warm-up
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 2:
            classify(batch)
            n += 1
        return n * len(batch) / (time.perf_counter() - t0)


def mean_ci(values):
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / max(n - 1, 1))
    return 100 * mean, 100 * 1.96 * std / math.sqrt(n)


#: every file, written for the first episode (sizes, speed); the accuracy pair, for every episode
FIRST = [("torchscript", "none"), ("onnx", "none"), ("onnx", "int8"), ("onnx", "fp16")]
EVERY = [("onnx", "none"), ("onnx", "int8")]


def bench_backbone(run: Path, backbone: str, args):
    """Sizes and speed of the first episode's files; accuracy of ONNX fp32 and int8 on every episode
    (torch eager and TorchScript give fp32's probabilities within 1e-4: export checks it)."""
    algo, preprocess, cfg, channels, size = load_learner(run, "last", torch.device("cpu"))
    split = load_dataset(cfg["dataset"], cfg["paths"])["test"]
    sampler = EpisodeSampler(split, WAYS, SHOTS, QUERIES, seed=1234)
    support_y = torch.arange(WAYS).repeat_interleave(SHOTS)
    query_y = torch.arange(WAYS).repeat_interleave(QUERIES)
    accs, agree, speed, sizes = {"fp32": [], "int8": []}, [], {}, {}
    for e in range(args.episodes[backbone]):
        images = split.images[sampler.episode_indices()]  # (ways, shots + queries, C, H, W) uint8
        support = images[:, :SHOTS].reshape(-1, channels, size, size)
        query = images[:, SHOTS:].reshape(-1, channels, size, size)
        prepared = ex.adapted(algo, preprocess, cfg, support, support_y, [f"class{k}" for k in range(WAYS)],
                              {"run": str(run), "checkpoint": "last", "invert": False})
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            files = write_files(prepared, Path(tmp), FIRST if e == 0 else EVERY)
            fp32, int8 = (files[("onnx", q)][1](query).argmax(1) for q in ("fp32", "int8"))
            if e == 0:
                sizes = {key: size_bytes for key, (size_bytes, _) in files.items()}
                speed = {key: images_per_second(classify, query, args.seconds) for key, (_, classify) in files.items()}
        accs["fp32"].append(float((fp32 == query_y).float().mean()))
        accs["int8"].append(float((int8 == query_y).float().mean()))
        agree.append(float((int8 == fp32).float().mean()))
        print(f"  {backbone} episode {e + 1}/{args.episodes[backbone]}", flush=True)
    rows = []
    for runtime, fmt, precision in VARIANTS:
        key = (fmt, precision)
        acc = mean_ci(accs[precision]) if fmt == "onnx" and precision in accs else (None, None)
        rows.append({"backbone": backbone, "runtime": runtime, "format": fmt, "precision": precision,
                     "file_kB": None if sizes.get(key) is None else round(sizes[key] / 1e3, 1),
                     "images_per_s": round(speed[key], 1), "acc": None if acc[0] is None else round(acc[0], 2),
                     "ci95": None if acc[1] is None else round(acc[1], 2),
                     "top1_agreement_with_fp32": round(100 * sum(agree) / len(agree), 2) if precision == "int8" else None,
                     "episodes": len(agree), "batch": len(query_y)})
    return rows


def table(rows) -> str:
    lines = ["| backbone | runtime | file | images/s | accuracy (%) | int8 = fp32 top-1 (%) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        kind = "-" if r["format"] == "-" else f"{r['format']} {r['precision']}"
        file = "-" if r["file_kB"] is None else f"{kind}, {r['file_kB']:.0f} kB"
        same = "as onnxruntime fp32" if r["precision"] == "fp32" else "-"
        acc = same if r["acc"] is None else f"{r['acc']:.2f} ± {r['ci95']:.2f}"
        agree = "" if r["top1_agreement_with_fp32"] is None else f"{r['top1_agreement_with_fp32']:.1f}"
        lines.append(f"| {r['backbone']} | {r['runtime']} {r['precision']} | {file} | {r['images_per_s']:.0f} | "
                     f"{acc} | {agree} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="folder for export_bench.json / .csv")
    ap.add_argument("--work", type=Path, default=REPO / "outputs" / "bench_export", help="the trained runs")
    ap.add_argument("--backbones", default="conv4,resnet12")
    ap.add_argument("--conv4-minutes", type=float, default=2.0)
    ap.add_argument("--resnet12-iterations", type=int, default=20)
    ap.add_argument("--conv4-episodes", type=int, default=30)
    ap.add_argument("--resnet12-episodes", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0, help="timing per runtime")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="one training step, 2 episodes, 0.2 s timings")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.smoke:
        args.conv4_episodes = args.resnet12_episodes = 2
        args.seconds = 0.2
    args.episodes = {"conv4": args.conv4_episodes, "resnet12": args.resnet12_episodes}
    data, source = data_overrides(args.smoke)
    print(f"Machine: {machine(torch.device('cpu'))}; onnxruntime threads {args.threads}")
    print(f"Data: {source}; {WAYS}-way {SHOTS}-shot {QUERIES}-query test episodes, seed 1234", flush=True)
    rows = []
    for backbone in args.backbones.split(","):
        rows += bench_backbone(train_run(args.work, backbone, data, args), backbone, args)
    print(table(rows))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        info = {"machine": machine(torch.device("cpu")), "data": source, "command": " ".join(sys.argv),
                "episode": f"{WAYS}w{SHOTS}s{QUERIES}q", "rows": rows}
        (args.out / "export_bench.json").write_text(json.dumps(info, indent=1) + "\n")
        with open(args.out / "export_bench.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"Wrote {args.out / 'export_bench.json'} and .csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
