"""`metafsl export run=<run dir> support=<dir> [format=onnx|torchscript] [out=<file>]`: write the
run's learner, adapted to a support folder, as one standalone classifier file
(``metafsl.api.export``), print how to use it and write a runnable usage script beside it."""
from __future__ import annotations

from typing import List

from metafsl.arguments import boolean, parse
from metafsl.commands.base import Command
from metafsl.errors import UserError

#: predict's test-time choices, built into the file (``metafsl.commands.predict``'s spelling)
TEST_TIME_KEYS = ("eval.tta", "eval.finetune_steps", "eval.finetune_lr", "eval.finetune_views")
OWN_KEYS = ("run", "support", "format", "out", "overwrite", "checkpoint", "quantize", "invert", "convert",
            *TEST_TIME_KEYS)


def run(args: List[str]) -> int:
    from rich.markup import escape

    from metafsl import api
    from metafsl.commands.predict import predict_options
    from metafsl.reporting import console

    own, _ = parse(args, OWN_KEYS, "export", overrides=False)
    if not own.get("run") or not own.get("support"):
        raise UserError("metafsl export needs run=<run dir> support=<dir of class folders> "
                        "[format=onnx|torchscript] [out=<file>].")
    options = predict_options({k: v for k, v in own.items() if k in TEST_TIME_KEYS})
    invert_opt = own.get("invert", "auto")
    invert = None if invert_opt == "auto" else boolean("invert", invert_opt)
    result = api.export(own["run"], own["support"], own.get("format"), own.get("out"),
                        own.get("checkpoint", "best"), own.get("quantize", "none"), invert,
                        boolean("convert", own.get("convert")), boolean("overwrite", own.get("overwrite")),
                        tta=options.tta, finetune_steps=options.finetune_steps, finetune_lr=options.finetune_lr,
                        finetune_views=options.finetune_views)
    meta = result.metadata
    shots = ", ".join(f"{n} ({k})" for n, k in zip(result.class_names, result.support_counts))
    console.info(escape(f"metafsl export {meta['algo']} ({meta['backbone']}) from {meta['run']}, "
                        f"{meta['checkpoint']} checkpoint; support classes: {shots}"))
    kind = result.format + ("" if result.quantize == "none" else f" {result.quantize}")
    console.info(escape(f"Wrote {result.path} ({kind}, {result.size_bytes / 1e3:.1f} kB)."))
    chosen = _test_time_line(meta["test_time"])
    if chosen:
        console.info(escape(chosen))
    console.info(escape(_check_line(result)))
    if result.transductive:
        console.info(f"note: this {meta['algo']} classifier normalises with the statistics of the batch it "
                     "is given (batch norm as in its training and in metafsl predict): classify images "
                     "together; one image alone is normalised by its own statistics.")
    console.info(f"Use it (images: uint8 ({', '.join(str(d) for d in meta['input']['shape'])})"
                 ", resized and converted as the usage script does):")
    console.info(escape("\n".join("    " + line for line in result.snippet.splitlines())))
    console.info(escape(f"Wrote {result.usage_path}: python {result.usage_path} image.png [more images ...]"))
    return 0


def _test_time_line(test_time) -> str:
    """The test-time choices built into the file, in words ("" when none)."""
    parts = []
    if test_time.get("finetune_steps"):
        parts.append(f"backbone fine-tuned on the support images ({test_time['finetune_steps']} steps, "
                     f"lr {test_time['finetune_lr']:g}, {test_time['finetune_views']} views)")
    if test_time.get("tta", 1) > 1:
        parts.append(f"each embedding averaged over {test_time['tta']} fixed views (eval.tta)")
    return "Built in, as metafsl predict does: " + "; ".join(parts) + "." if parts else ""


def _check_line(result) -> str:
    n = result.n_checked
    if result.quantize == "none":
        return (f"Checked: on the {n} support images the file gives the model's probabilities "
                f"(largest difference {result.max_difference:.1e}).")
    return (f"Checked: on the {n} support images the {result.quantize} file gives the fp32 model's top class "
            f"for {result.same_top_class}/{n} (largest probability difference {result.max_difference:.3f}).")


COMMAND = Command(
    name="export",
    summary="one standalone classifier file: metafsl export run=<run dir> support=<dir> format=onnx",
    usage="metafsl export run=<run dir> support=<dir> [format=onnx|torchscript] [out=<file>] "
          "[quantize=none|int8|fp16] [checkpoint=best|last] [overwrite=false] [invert=auto|true|false] "
          "[convert=false] [eval.tta=<n>] [eval.finetune_steps=<n>] [eval.finetune_lr=<lr>] "
          "[eval.finetune_views=flip_shift|train]",
    description="""
Adapts a trained learner to your labelled support images (support/cat/*.png, support/dog/*.png,
as for metafsl predict) and writes the resulting classifier as one file that needs no metafsl:
the run's normalisation, the backbone, the adapted head, prototypes or weights and a softmax,
with the class names (TorchScript: model.class_names; ONNX: metadata class_names, JSON).
format=torchscript runs with torch alone (torch.jit.load), format=onnx with onnxruntime alone
(default: from out='s ending, else onnx).  Input 'images': uint8 (N, C, H, W) at the run's
size and channels, resized and converted as metafsl predict does (inverted for Omniglot runs);
output 'probabilities' (N, classes).  Gradient-based learners (MAML, FOMAML, Meta-SGD, ANIL,
Reptile, meta-LSTM) hold the weights adapted to the support set, metric learners the backbone and
the support embeddings (ProtoNet: prototypes), Baseline/Baseline++ the fitted head; MANN cannot be
exported.  quantize=int8 (ONNX): static int8 quantisation calibrated on the support images;
quantize=fp16 (ONNX): half-size file for GPU execution providers.  The file is read back and
checked on the support images; a usage script is written beside it (<out>.usage.py).  Default
out: a new <run>/exports/<time>_<suffix>.onnx; an existing file only with overwrite=true.
Test-time choices, as metafsl predict takes them (default: the run's eval settings), are built
into the file, so that it gives predict's probabilities under the same choices:
eval.tta=<n> (metric learners, Baseline, Baseline++): the file averages every image's embedding
over n fixed views; eval.finetune_steps=<n> (with eval.finetune_lr, eval.finetune_views): the
file holds the backbone fine-tuned on the support images.""",
    examples=("metafsl export run=outputs/train/<run> support=my_support/ out=model.onnx",
              "metafsl export run=outputs/train/<run> support=my_support/ format=torchscript out=model.pt",
              "metafsl export run=outputs/train/<run> support=my_support/ quantize=int8 out=model.int8.onnx",
              "metafsl export run=outputs/train/<run> support=my_support/ eval.tta=5 out=model.onnx"),
    run=run,
)
