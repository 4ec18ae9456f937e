"""Speed benchmark (issue 6): metafsl against a learn2learn reference, side by side, one process.

    make bench                          # full run (about 6 minutes on a 2-core CPU)
    python scripts/bench.py --quick     # a few iterations of each, for a smoke test
    python scripts/bench.py --smoke     # --quick on tiny shapes: every code path in seconds (tests)
    python scripts/bench.py --device cuda

The reference follows learn2learn's documented pipeline: ``MetaDataset`` + ``TaskDataset`` with
NWays / KShots / LoadData / RemapLabels / ConsecutiveLabels / RandomClassRotation transforms, one
``sample()`` per task, and MAML as the per-task ``MAML.clone()`` / ``adapt()`` loop of its examples
(ProtoNet as in its prototypical-network example: class means, negative squared distances).
Both sides draw from the same split (real Omniglot when present, else the built-in glyphs) and
start from the same weights; each side samples its own episodes with its own pipeline, since the
cost of that pipeline is part of what is measured.  The miniImageNet-shaped row uses random
84x84 RGB images (shape only: speed does not depend on the pixels).
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from metafsl._l2l import learn2learn
from metafsl.algorithms.gradient import use_batch_statistics
from metafsl.algorithms.maml import MAML
from metafsl.algorithms.protonet import ProtoNet
from metafsl.data.base import FewShotSplit
from metafsl.data.sampler import EpisodeSampler
from metafsl.engine.evaluate import EvalSpec, evaluate
from metafsl.engine.runtime import Runtime, tune_cpu_allocator
from metafsl.models import build_backbone

OMNIGLOT = REPO.parent / "shared" / "data" / "omniglot"


# ----------------------------------------------------------------------------- machine / data
def machine(device: torch.device) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (f"{cpu}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), "
            f"torch {torch.__version__}, device {device}{gpu}")


def omniglot_or_glyphs(glyph_classes: int = 1200):
    """(train split, test split, description); the glyphs stand-in has ``glyph_classes`` classes
    (0: the glyphs even where Omniglot is present)."""
    from metafsl.data import load_dataset

    paths = {"data_dir": str(OMNIGLOT.parent), "cache_dir": os.environ.get("METAFSL_CACHE_DIR", "~/.cache/metafsl")}
    if OMNIGLOT.exists() and glyph_classes == 1200:
        cfg = {"name": "omniglot", "root": str(OMNIGLOT), "image_size": 28, "split": "vinyals",
               "background": "images_background", "rotations": True, "lake_val_fraction": 0.1,
               "download": False}
        ds = load_dataset(cfg, paths)
        return ds["train"], ds["test"], f"real Omniglot ({OMNIGLOT})"
    cfg = {"name": "glyphs", "n_classes": glyph_classes, "examples_per_class": 20, "image_size": 28, "seed": 0,
           "train_fraction": 0.64, "val_fraction": 0.16}
    ds = load_dataset(cfg, paths)
    return ds["train"], ds["test"], "built-in glyphs as a stand-in (no Omniglot under ../shared/data)"


def random_split(classes: int, per_class: int, channels: int, size: int) -> FewShotSplit:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (classes * per_class, channels, size, size), generator=g, dtype=torch.uint8)
    return FewShotSplit(images, torch.arange(classes).repeat_interleave(per_class), [str(i) for i in range(classes)])


# ----------------------------------------------------------------------------- learn2learn reference
class SplitAsDataset(torch.utils.data.Dataset):
    """A metafsl split as the (image, label) dataset learn2learn's pipeline expects."""

    def __init__(self, split: FewShotSplit):
        self.images, self.labels = split.images, split.labels.tolist()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i].float().div(255), self.labels[i]


def l2l_taskset(split: FewShotSplit, ways: int, samples: int, rotate: bool = True):
    l2l = learn2learn()
    dataset = SplitAsDataset(split)
    labels_to_indices = {}
    for i, c in enumerate(dataset.labels):
        labels_to_indices.setdefault(c, []).append(i)
    meta = l2l.data.MetaDataset(dataset, labels_to_indices=labels_to_indices)
    transforms = [
        l2l.data.transforms.NWays(meta, ways),
        l2l.data.transforms.KShots(meta, samples),
        l2l.data.transforms.LoadData(meta),
        l2l.data.transforms.RemapLabels(meta),
        l2l.data.transforms.ConsecutiveLabels(meta),
    ]
    if rotate:
        transforms.append(l2l.vision.transforms.RandomClassRotation(meta, [0.0, 90.0, 180.0, 270.0]))
    return l2l.data.TaskDataset(meta, task_transforms=transforms, num_tasks=-1)


def split_support_query(data, labels, ways: int, shots: int, device):
    """learn2learn examples' split of a sampled task: first ``shots`` of each class adapt, rest evaluate."""
    data, labels = data.to(device), labels.to(device)
    order = torch.sort(labels).indices
    data, labels = data[order], labels[order]
    per_class = len(labels) // ways
    support = (torch.arange(ways, device=device).view(-1, 1) * per_class
               + torch.arange(shots, device=device).view(1, -1)).flatten()
    mask = torch.zeros(len(labels), dtype=torch.bool, device=device)
    mask[support] = True
    return data[mask], labels[mask], data[~mask], labels[~mask]


def ref_protonet_loss(model, data, labels, ways, shots, device):
    sx, _, qx, qy = split_support_query(data, labels, ways, shots, device)
    z = model(torch.cat([sx, qx]))
    protos = z[: len(sx)].view(ways, shots, -1).mean(1)
    logits = -torch.cdist(z[len(sx):], protos).pow(2)
    return nn.functional.cross_entropy(logits, qy), (logits.argmax(1) == qy).float().mean()


def ref_maml_task(maml, data, labels, ways, shots, steps, device):
    learner = maml.clone()
    sx, sy, qx, qy = split_support_query(data, labels, ways, shots, device)
    for _ in range(steps):
        learner.adapt(nn.functional.cross_entropy(learner(sx), sy))
    return nn.functional.cross_entropy(learner(qx), qy)


# ----------------------------------------------------------------------------- timing helpers
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, iters: int, warmup: int, device) -> float:
    """Seconds per call of ``fn`` (after ``warmup`` calls)."""
    for _ in range(warmup):
        fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t) / iters


def peak_memory_mib(device) -> str:
    if device.type == "cuda":
        mib = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        return f"{mib:.0f} (GPU)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} (RSS so far)"


ROWS = []


def report(name, tasks, sec_ours, sec_ref, device):
    ours, ref = tasks / sec_ours, tasks / sec_ref
    ROWS.append((name, ours, ref, ours / ref, peak_memory_mib(device)))
    print(f"  {name}: metafsl {ours:.2f} tasks/s, learn2learn {ref:.2f} tasks/s, ratio {ours / ref:.2f}x",
          flush=True)


def conv4(channels, size, hidden, device, reference=False):
    """metafsl's conv4, or (reference=True) learn2learn's own CNN4Backbone, conv-BN-ReLU-pool
    blocks; same initial weights either way."""
    torch.manual_seed(0)
    return build_backbone("conv4", channels, size, hidden=hidden, pool_first=not reference).to(device)


# ----------------------------------------------------------------------------- benchmarks
def bench_protonet_train(train, device, steps, warm, ways=60):
    shots, queries = 5, 5
    algo = ProtoNet(conv4(1, 28, 64, device)).to(device)
    ref_model = conv4(1, 28, 64, device, reference=True)
    ref_model.load_state_dict(algo.backbone.state_dict())
    Runtime(device).prepare(algo)  # metafsl's default runtime options
    opt, ref_opt = torch.optim.Adam(algo.parameters()), torch.optim.Adam(ref_model.parameters())
    sampler = EpisodeSampler(train, ways, shots, queries, device=device, seed=0)
    taskset = l2l_taskset(train, ways, shots + queries)

    def ours():
        opt.zero_grad(set_to_none=True)
        algo.meta_backward(sampler.sample(1, train=True))  # what the training loop calls
        opt.step()

    def ref():
        data, labels = taskset.sample()
        loss, _ = ref_protonet_loss(ref_model, data, labels, ways, shots, device)
        ref_opt.zero_grad(set_to_none=True)
        loss.backward()
        ref_opt.step()

    step_ours, step_ref = timed(ours, steps, warm, device), timed(ref, steps, warm, device)
    report(f"ProtoNet Omniglot {ways}w5s5q training step", 1, step_ours, step_ref, device)
    # sampling alone, as a fraction of each side's training step
    n = max(5, steps // 3)
    s_ours = timed(lambda: sampler.sample(1, train=True), n, 1, device)
    s_ref = timed(lambda: [t.to(device) for t in taskset.sample()], n, 1, device)
    print(f"  episode sampling ({ways}w5s5q): metafsl {1000 * s_ours:.1f} ms = {100 * s_ours / step_ours:.1f}% "
          f"of its step; learn2learn TaskDataset {1000 * s_ref:.1f} ms = {100 * s_ref / step_ref:.1f}% of its step",
          flush=True)
    ROWS.append((f"episode sampling {ways}w5s5q (ms/task)", 1000 * s_ours, 1000 * s_ref, s_ref / s_ours,
                 f"{100 * s_ours / step_ours:.1f}% vs {100 * s_ref / step_ref:.1f}% of a step"))


def bench_maml(name, split, channels, size, hidden, ways, shots, queries, batch, steps, device, it, warm,
               backend="vmap"):
    torch.manual_seed(0)
    algo = MAML(conv4(channels, size, hidden, device), ways, inner_lr=0.4 if channels == 1 else 0.01,
                inner_steps=steps, first_order=False, backend=backend).to(device)
    opt = torch.optim.Adam(algo.parameters())
    sampler = EpisodeSampler(split, ways, shots, queries, device=device, seed=0)
    l2l = learn2learn()
    ref_net = nn.Sequential(conv4(channels, size, hidden, device, reference=True), nn.Linear(algo.head.in_features, ways)).to(device)
    use_batch_statistics(ref_net)  # as Finn et al. (and metafsl's MAML): per-task batch statistics
    ref_net.load_state_dict(algo.l2l_model.module.state_dict())
    ref_maml = l2l.algorithms.MAML(ref_net, lr=algo.inner_lr, first_order=False)
    Runtime(device).prepare(algo)  # metafsl's default runtime options
    ref_opt = torch.optim.Adam(ref_maml.parameters())
    taskset = l2l_taskset(split, ways, shots + queries, rotate=channels == 1)

    def ours():
        opt.zero_grad(set_to_none=True)
        algo.meta_backward(sampler.sample(batch, train=True))  # what the training loop calls
        opt.step()

    def ref():
        ref_opt.zero_grad(set_to_none=True)
        for _ in range(batch):
            data, labels = taskset.sample()
            (ref_maml_task(ref_maml, data, labels, ways, shots, steps, device) / batch).backward()
        ref_opt.step()

    report(f"{name} [metafsl backend={backend}]", batch, timed(ours, it, warm, device),
           timed(ref, it, warm, device), device)


def bench_protonet_test(test, device, episodes):
    ways, shots, queries = 5, 1, 15
    torch.manual_seed(0)
    algo = ProtoNet(conv4(1, 28, 64, device)).to(device)
    ref_model = conv4(1, 28, 64, device, reference=True)
    ref_model.load_state_dict(algo.backbone.state_dict())
    ref_model.eval()
    taskset = l2l_taskset(test, ways, shots + queries)
    sync(device)
    t = time.perf_counter()
    res = evaluate(algo, test, EvalSpec(ways, shots, queries, episodes, seed=1234), device=device)
    sync(device)
    sec_ours = time.perf_counter() - t

    def ref():
        with torch.no_grad():
            for _ in range(episodes):
                data, labels = taskset.sample()
                ref_protonet_loss(ref_model, data, labels, ways, shots, device)

    sec_ref = timed(ref, 1, 0, device)
    print(f"  ProtoNet 5w1s test: {episodes} episodes in {sec_ours:.2f} s (metafsl, acc {res['acc']:.1f}%) "
          f"vs {sec_ref:.2f} s (learn2learn pipeline)", flush=True)
    report(f"ProtoNet Omniglot 5w1s test ({episodes} episodes)", episodes, sec_ours, sec_ref, device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few iterations of each (smoke test)")
    ap.add_argument("--smoke", action="store_true",
                    help="--quick on tiny shapes (glyphs, 20-way, meta-batch 2, 32x32 rows): seconds")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--maml-backends", default="l2l,vmap",
                    help="metafsl MAML backends to time against the reference (comma list)")
    args = ap.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_cpu_allocator()  # what every metafsl command does (runtime.cpu_allocator_cache)
    args.quick = args.quick or args.smoke
    it, warm = (2, 1) if args.quick else (8, 2)
    maml_it = (1, 1) if args.quick else (4, 1)
    test_episodes = 5 if args.smoke else 50 if args.quick else 1000
    # shapes: (glyph classes, ProtoNet ways, Omniglot meta-batch, mini classes, mini size, mini steps, mini batch)
    glyphs, ways, omni_mb, mini_classes, mini_size, mini_steps, mini_mb = \
        (100, 20, 2, 6, 32, 1, 2) if args.smoke else (1200, 60, 32, 64, 84, 5, 4)

    print(f"Machine: {machine(device)}")
    train, test, source = omniglot_or_glyphs(glyphs)
    print(f"Data: {source}; miniImageNet-shaped row: random 84x84 RGB images.")
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    print("Mode: full" if mode == "full" else f"Mode: {mode} (smoke test; figures not meaningful)", flush=True)
    t0 = time.perf_counter()
    bench_protonet_train(train, device, it if args.smoke else 3 * it, warm, ways)
    mini = random_split(mini_classes, 30, 3, mini_size)
    shape = "miniImageNet-shaped" if mini_size == 84 else f"{mini_size}x{mini_size} RGB"
    for backend in args.maml_backends.split(","):
        bench_maml(f"MAML Omniglot 5w1s, meta-batch {omni_mb}, 2nd order", train, 1, 28, 64, 5, 1, 1, omni_mb, 1,
                   device, *maml_it, backend=backend)
        bench_maml(f"MAML {shape} 5w1s, conv4-32, {mini_steps} steps, mb {mini_mb}", mini,
                   3, mini_size, 32, 5, 1, 15, mini_mb, mini_steps, device, *maml_it, backend=backend)
    bench_protonet_test(test, device, test_episodes)

    print(f"\n{'benchmark':<84} {'metafsl':>10} {'learn2learn':>12} {'ratio':>7}  peak memory MiB / note")
    for name, ours, ref, ratio, mem in ROWS:
        print(f"{name:<84} {ours:>10.2f} {ref:>12.2f} {ratio:>6.2f}x  {mem}")
    print(f"(tasks/s unless stated; ratio = metafsl / learn2learn, for sampling = learn2learn ms / metafsl ms; "
          f"total {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
