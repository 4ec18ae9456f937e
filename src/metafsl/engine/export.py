"""Write a trained run, adapted to a support folder, as one standalone classifier file: the core of
``metafsl.api.export`` and ``metafsl export``.

What the file holds: the run's normalisation, the classifier the learner adapts to the support
images (``Algorithm.adapt_module``: backbone + prototypes or rule, adapted weights, or fitted
head; ``algorithms/standalone.py``) and a softmax, with the class names (the support folder's
sub-folders, in the order of the outputs).

The input contract, the same for both formats: ``images``, uint8 (N, C, H, W) pixel values,
already converted to the run's channels (grey or RGB) and size (H = W = the run's image size,
Lanczos-resized) and, for Omniglot runs, inverted, as ``metafsl predict`` reads files
(``engine.predict.load_image``); TorchScript also takes floats in 0..255.  The output is
``probabilities``, float32 (N, K).  Resizing stays with the caller: it depends on the image
library, and the usage snippet written beside the file does it with Pillow as predict does.

- ``torchscript``: ``torch.jit.trace`` of that module, wrapped in a scripted module with a
  ``class_names`` attribute; ``metafsl.json`` (the metadata) is an extra file of the archive.
  Needs only torch (``torch.jit.load``).
- ``onnx``: the legacy TorchScript-based exporter (``dynamo=False``: 0.3 s against 3 s for the
  dynamo exporter per file, and no onnxscript; torch 2.14 still ships it), opset 17, the batch
  dimension dynamic; ``class_names`` (JSON) and ``metafsl`` (the metadata) in
  ``metadata_props``.  Needs only onnxruntime.
- ``quantize=int8`` (ONNX): onnxruntime's static quantisation in the QDQ format, weights int8
  per channel, activations uint8, calibrated (min/max) on the support images.  Static, because
  dynamic quantisation computes activation ranges at run time and leaves convolutions in float
  on the CPU: a conv net gains little from it.  The support images are the only images of these
  classes the export has, and the ones it is meant for.  Only the convolutions are quantised:
  they are nearly all the work, while the rule after the backbone (a distance to each prototype,
  a head) compares numbers whose differences int8 rounding swamps (everything quantised left a
  conv4 ProtoNet at chance, against the same top class as fp32 with convolutions only).
- ``quantize=fp16`` (ONNX): weights and computation in float16, input and output unchanged
  (onnxruntime's float16 converter).  It halves the file; it is for GPUs (CUDA, TensorRT, DirectML
  execution providers): onnxruntime's CPU provider has few float16 kernels and runs it through
  inserted casts, slower than fp32.

Test-time choices are those of ``metafsl predict`` (``PredictOptions``; default: the run's ``eval``):
with ``eval.tta=<n>`` the file averages every image's embedding over the n fixed views itself
(``algorithms.standalone.ViewAveraged``), and with ``eval.finetune_steps`` it holds the backbone
fine-tuned on the support images; the metadata says which.  So the file gives predict's answers
under the same choices.

Every file is read back after writing and run on the support images: an fp32 file must give
the eager module's probabilities within 1e-3 and its top class for every image (float32 kernels
of another runtime differ by about 1e-4 on a sharp 84x84 classifier whose logits are squared
distances in the hundreds; the tests hold tiny runs to 1e-4), a quantised one reports how far
it is.
"""
from __future__ import annotations

import datetime as _dt
import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from metafsl.algorithms.standalone import BatchStatisticsNorm, backbone_over_views
from metafsl.algorithms.test_time import finetune_backbone
from metafsl.engine.episode_adapt import seeded
from metafsl.engine.predict import (
    INVERTED,
    PredictOptions,
    load_image,
    load_learner,
    read_support,
    test_time_choices,
)
from metafsl.engine.run_dir import replace_atomically
from metafsl.errors import UserError

FORMATS = ("onnx", "torchscript")
QUANTIZE = ("none", "int8", "fp16")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
OPSET = 17
#: the largest difference in probability an fp32 file may show against the eager module
TOLERANCE = 1e-3


class Deployable(nn.Module):
    """uint8 (or 0..255 float) images (N, C, H, W) -> probabilities (N, K): the run's
    normalisation, the task's classifier, a softmax."""

    def __init__(self, classifier: nn.Module, mean: Optional[torch.Tensor], std: Optional[torch.Tensor]):
        super().__init__()
        self.classifier = classifier
        self.register_buffer("mean", None if mean is None else mean.detach().clone().float())
        self.register_buffer("std", None if std is None else std.detach().clone().float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32) / 255.0  # as metafsl.data.sampler.Preprocess
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return self.classifier(x).float().softmax(-1)


class Packaged(nn.Module):
    """The traced classifier with its class names (a TorchScript attribute)."""

    def __init__(self, core: torch.jit.ScriptModule, class_names: List[str]):
        super().__init__()
        self.core = core
        self.class_names = torch.jit.Attribute(list(class_names), List[str])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.core(images)


@dataclass
class Exported:
    """What ``export`` wrote and checked."""

    path: Path
    format: str
    quantize: str
    class_names: List[str]
    support_counts: List[int]
    metadata: Dict[str, Any]
    size_bytes: int = 0
    #: the file's probabilities on the support images against the eager module's
    max_difference: float = 0.0
    same_top_class: int = 0
    n_checked: int = 0
    usage_path: Optional[Path] = None
    snippet: str = ""

    @property
    def transductive(self) -> bool:
        return bool(self.metadata["transductive"])


@dataclass
class Prepared:
    """The run adapted to the support images: the module to write and what describes it."""

    model: Deployable
    images: torch.Tensor  # uint8 support images (N, C, H, W)
    names: List[str]
    counts: List[int]
    metadata: Dict[str, Any]


def prepare(run: Path, support: Path, which: str = "best", invert: Optional[bool] = None,
            convert: bool = False, options: Optional[PredictOptions] = None) -> Prepared:
    """Load the run's learner (CPU), read the support folder, adapt: the module to export.
    ``options``: predict's test-time choices (``eval.tta``, ``eval.finetune_*``; the others are
    predict's own); default: the run's."""
    options = options or PredictOptions()
    options.check()
    algo, preprocess, cfg, channels, size = load_learner(run, which, torch.device("cpu"))
    steps, lr, draw_views, tta = test_time_choices(algo, preprocess, cfg, options)
    if invert is None:
        invert = cfg["dataset"]["name"] in INVERTED
    names, files = read_support(support)
    images = torch.from_numpy(np.stack([load_image(p, size, channels, invert, convert)
                                        for group in files for p in group]))
    labels = torch.tensor([i for i, group in enumerate(files) for _ in group])
    if steps:  # as predict: the backbone tuned on these support images (this call's copy)
        finetune_backbone(algo, preprocess(images, train=False), labels, len(names), steps, lr,
                          torch.Generator().manual_seed(0), draw_views)
    tuned = {"finetune_lr": lr, "finetune_views": options.finetune(cfg)[2]} if steps else {}
    test_time = {"tta": tta, "finetune_steps": steps, **tuned}
    return adapted(algo, preprocess, cfg, images, labels, names,
                   {"run": str(run), "checkpoint": which, "invert": bool(invert), "test_time": test_time})


def adapted(algo, preprocess, cfg: Dict[str, Any], images: torch.Tensor, labels: torch.Tensor,
            names: List[str], source: Dict[str, Any]) -> Prepared:
    """The learner adapted to uint8 support ``images`` (labels 0..K-1 naming ``names``), with its
    metadata (``source``: the run, the checkpoint, whether images are inverted, the test-time
    choices: ``tta`` views averaged inside the module)."""
    test_time = source.get("test_time", {"tta": 1, "finetune_steps": 0})
    # a transfer baseline's head: the one predict fits (same seed, same averaged embeddings)
    with seeded(0, torch.device("cpu")), backbone_over_views(algo, test_time["tta"]):
        classifier = algo.adapt_module(preprocess(images, train=False), labels)
    model = Deployable(classifier, preprocess.mean, preprocess.std).eval()
    counts = torch.bincount(labels, minlength=len(names)).tolist()
    channels, size = images.shape[1], images.shape[-1]
    metadata = {
        "class_names": list(names), "algo": cfg["algo"]["name"], "backbone": cfg["backbone"]["name"],
        "dataset": cfg["dataset"]["name"], "run": source["run"], "checkpoint": source["checkpoint"],
        "support_images": dict(zip(names, counts)),
        "input": {"name": "images", "dtype": "uint8", "shape": ["N", channels, size, size], "channels": channels,
                  "image_size": size, "resize": "lanczos", "invert": source["invert"]},
        "output": {"name": "probabilities", "dtype": "float32", "shape": ["N", len(names)]},
        "transductive": any(isinstance(m, BatchStatisticsNorm) for m in classifier.modules()),
        "test_time": test_time,
        "exported": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    return Prepared(model, images, list(names), counts, metadata)


def write(prepared: Prepared, fmt: str, quantize: str, out: Path) -> Exported:
    """Write ``prepared`` as ``fmt`` (``quantize``) to ``out`` (atomically), then check it."""
    check_choice(fmt, quantize)
    meta = {**prepared.metadata, "format": fmt, "quantize": quantize}
    with tempfile.TemporaryDirectory(prefix="metafsl-export-") as tmp:
        path = Path(tmp) / f"model{SUFFIX[fmt]}"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's and the legacy exporter's notices
            if fmt == "torchscript":
                _write_torchscript(prepared.model, prepared.images, meta, path)
            else:
                _write_onnx(prepared.model, prepared.images, meta, quantize, path)
            probs = run_file(path, fmt, prepared.images)
            reference = prepared.model(prepared.images)
        data = path.read_bytes()
    result = Exported(out, fmt, quantize, prepared.names, prepared.counts, meta, len(data))
    result.max_difference = float((probs - reference).abs().max())
    result.same_top_class = int((probs.argmax(-1) == reference.argmax(-1)).sum())
    result.n_checked = len(prepared.images)
    if quantize == "none" and (result.max_difference > TOLERANCE or result.same_top_class < result.n_checked):
        raise UserError(f"The exported {fmt} file's probabilities differ from the model's by "
                        f"{result.max_difference:.2e} on the support images (more than {TOLERANCE:g}); "
                        "nothing was written: please report this run's method and backbone.")
    try:
        replace_atomically(out, lambda f: f.write(data), binary=True)
    except OSError as exc:
        raise UserError(f"Cannot write {out} ({exc.strerror or exc}); nothing was written.") from None
    return result


def check_choice(fmt: str, quantize: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)} (got '{fmt}').")
    if quantize not in QUANTIZE:
        raise UserError(f"quantize must be one of {', '.join(QUANTIZE)} (got '{quantize}').")
    if fmt == "onnx":
        onnx_modules()  # before any work
    if fmt == "torchscript" and quantize != "none":
        raise UserError(f"quantize={quantize} is for format=onnx (onnxruntime's quantisation); "
                        "TorchScript files are written in fp32.")


def _write_torchscript(model: Deployable, images: torch.Tensor, meta: Dict[str, Any], path: Path) -> None:
    traced = torch.jit.trace(model, images, check_trace=False)
    scripted = torch.jit.script(Packaged(traced, meta["class_names"]))
    torch.jit.save(scripted, str(path), _extra_files={"metafsl.json": json.dumps(meta, indent=1)})


def _write_onnx(model: Deployable, images: torch.Tensor, meta: Dict[str, Any], quantize: str,
                path: Path) -> None:
    onnx = onnx_modules()[0]
    fp32 = path.with_name("fp32.onnx")
    torch.onnx.export(model, (images,), str(fp32), input_names=["images"], output_names=["probabilities"],
                      dynamic_axes={"images": {0: "N"}, "probabilities": {0: "N"}}, opset_version=OPSET,
                      dynamo=False)
    if quantize == "int8":
        _quantize_int8(fp32, path, images.numpy())
    elif quantize == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(path))
    else:
        fp32.replace(path)
    proto = onnx.load(str(path))
    proto.doc_string = describe(meta)
    del proto.metadata_props[:]
    for key, value in (("class_names", json.dumps(meta["class_names"])), ("metafsl", json.dumps(meta))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def _quantize_int8(src: Path, dst: Path, calibration: np.ndarray) -> None:
    """Static QDQ quantisation calibrated on ``calibration`` (the support images, one batch: the
    statistics of a transductive model are those of a batch)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Support(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": calibration}])

        def get_next(self):
            return next(self.batches, None)

    ready = src.with_name("preprocessed.onnx")
    quant_pre_process(str(src), str(ready))  # shape inference and graph optimisation, as advised
    quantize_static(str(ready), str(dst), Support(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["Conv"])


def run_file(path: Path, fmt: str, images: torch.Tensor) -> torch.Tensor:
    """The probabilities a written file gives for ``images`` (uint8), run as a user would."""
    if fmt == "torchscript":
        with torch.no_grad():
            return torch.jit.load(str(path))(images).float()
    ort = onnx_modules()[1]
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: not onnxruntime's notes on the graph
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": images.numpy()})[0]).float()


def onnx_modules():
    """(onnx, onnxruntime), or the sentence saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise UserError(f"format=onnx needs the onnx and onnxruntime packages ({exc.name} is missing): "
                        "make setup installs them (the export extra), or pip install onnx onnxruntime; "
                        "format=torchscript needs torch only.") from None
    onnxruntime.set_default_logger_severity(3)  # quantisation's own sessions: errors only
    return onnx, onnxruntime


def describe(meta: Dict[str, Any]) -> str:
    """The input and output contract, in words (the ONNX doc string, the snippet's docstring)."""
    inp = meta["input"]
    c, s = inp["channels"], inp["image_size"]
    colour = "grey" if c == 1 else "RGB"
    text = (f"{meta['algo']} ({meta['backbone']}) classifier of {len(meta['class_names'])} classes, exported by "
            f"metafsl from {meta['run']} ({meta['checkpoint']} checkpoint). Input 'images': uint8 (N, {c}, {s}, "
            f"{s}), {colour}, Lanczos-resized to {s}x{s}"
            + (", inverted (255 - pixel)" if inp["invert"] else "")
            + "; the file normalises them. Output 'probabilities': float32 (N, "
            f"{len(meta['class_names'])}), in the order of class_names.")
    tta = meta.get("test_time", {}).get("tta", 1)
    if tta > 1:
        text += f" Each image's embedding is averaged over {tta} fixed views inside the file (eval.tta={tta})."
    if meta["transductive"]:
        text += (" Batch norm uses the statistics of the batch given, as in training and metafsl predict: "
                 "classify images together; one image alone is normalised by its own statistics.")
    return text
