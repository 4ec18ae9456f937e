#!/usr/bin/env bash
# TADAM and FEAT against ProtoNet at equal training time (issue 29), same test episodes.
#
#   scripts/bench_task_conditioned.sh EVIDENCE_DIR [MINUTES] [DATA_DIR]
#   scripts/bench_task_conditioned.sh EVIDENCE_DIR smoke      # glyphs, a few iterations (seconds)
#
# Settings: Omniglot 5-way 1-shot (conv4, 28x28, Vinyals split), tiny-fewshot 5-way 1-shot and
# 5-shot (conv4, 84x84; the miniImageNet CSV layout). Every method trains 5-way episodes of the
# test shot with 15 queries (Omniglot: 5), Adam 1e-3, for MINUTES wall-clock minutes each
# (default 10; trainer.iterations is only an upper bound), keeps its best validation checkpoint
# and is tested on the same 600 episodes (eval.seed=0). FEAT starts from a random backbone here
# (temperatures 1, as zoo_omniglot_feat): its pretraining stage is a separate comparison.
# Writes EVIDENCE_DIR/<setting>_<method>/ (the runs) and EVIDENCE_DIR/results.csv.
set -euo pipefail
out=${1:?usage: scripts/bench_task_conditioned.sh EVIDENCE_DIR [MINUTES|smoke] [DATA_DIR]}
minutes=${2:-10}
data=${3:-$(cd "$(dirname "$0")/.." && pwd)/../shared/data}
py=${PYTHON:-python}
mkdir -p "$out"

common=(trainer.val_every=500 trainer.val_episodes=200 trainer.log_every=100 eval.seed=0 eval.episodes=600
        "trainer.optimizer={_target_: torch.optim.Adam, _partial_: true, lr: 0.001}")
settings=(omniglot_5w1s tiny_5w1s tiny_5w5s)
if [[ $minutes == smoke ]]; then
  common=(trainer.iterations=4 trainer.val_every=2 trainer.val_episodes=4 eval.episodes=4 eval.seed=0
          dataset.n_classes=60 dataset.examples_per_class=20 backbone.hidden=8)
  settings=(glyphs_5w1s)
else
  common+=(trainer.iterations=1000000 "trainer.max_minutes=$minutes")
fi

setting_args() {
  case $1 in
    glyphs_5w1s) echo "dataset=glyphs episode=5w1s episode.train.n_query=5 episode.test.n_query=5" ;;
    omniglot_5w1s) echo "dataset=omniglot dataset.split=vinyals dataset.rotations=true dataset.image_size=28
                         paths.data_dir=$data episode=5w1s episode.train.n_query=5" ;;
    tiny_5w1s|tiny_5w5s) echo "dataset=mini_imagenet dataset.root=$data/tiny-fewshot dataset.format=csv
                               dataset.image_size=84 episode=5w${1: -2:1}s" ;;
  esac
}
method_args() {
  case $1 in
    protonet|tadam) echo "algo=$1" ;;
    feat) echo "algo=feat algo.temperature=1 algo.temperature2=1" ;;
  esac
}

for s in "${settings[@]}"; do
  for m in protonet tadam feat; do
    run="$out/${s}_$m"
    [[ -f $run/summary.json ]] && continue
    # shellcheck disable=SC2046
    $py -m metafsl.cli train $(setting_args "$s") $(method_args "$m") "${common[@]}" \
        "hydra.run.dir=$run" > "$run.log" 2>&1 || { echo "failed: $run (see $run.log)"; exit 1; }
  done
done

$py - "$out" <<'EOF'
import csv, json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = []
for f in sorted(out.glob("*/summary.json")):
    s = json.loads(f.read_text())
    rows.append({"run": f.parent.name, "algo": s["algo"], "test_acc": round(s["test"]["acc"], 2),
                 "ci95": round(s["test"].get("ci95", float("nan")), 2), "episodes": s["test"]["episodes"],
                 "train_seconds": round(s["train"]["seconds"], 1)})
with open(out / "results.csv", "w", newline="") as fh:
    w = csv.DictWriter(fh, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
for r in rows:
    print(r)
EOF
