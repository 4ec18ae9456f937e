#!/usr/bin/env bash
# issue 29 benchmark driver: equal training time, same test episodes
set -uo pipefail
# run from the repository root
OUT=outputs/bench29
MIN=${MIN:-4}
DATA=../shared/data
M=".venv/bin/python -m metafsl.cli"
common=(trainer.iterations=1000000 "trainer.max_minutes=$MIN" trainer.val_every=100000 trainer.val_episodes=200
        trainer.log_every=100 eval.seed=0 eval.episodes=600
        "trainer.optimizer={_target_: torch.optim.Adam, _partial_: true, lr: 0.001}")
omni=(dataset=omniglot dataset.split=vinyals dataset.rotations=true dataset.image_size=28 paths.data_dir=$DATA
      episode=5w1s episode.train.n_query=5)
tiny=(dataset=mini_imagenet dataset.root=$DATA/tiny-fewshot dataset.format=csv dataset.image_size=84 episode=5w5s)
margs() { case $1 in protonet|tadam) echo "algo=$1";; feat) echo "algo=feat algo.temperature=1 algo.temperature2=1";; esac; }
for s in ${SETTINGS:-omni tiny}; do
  for m in protonet tadam feat; do
    run=$OUT/${s}_$m
    [[ -f $run/summary.json ]] && continue
    if [[ $s == omni ]]; then set=("${omni[@]}"); else set=("${tiny[@]}"); fi
    echo "$(date +%T) start $run"
    $M train $(margs $m) "${set[@]}" "${common[@]}" hydra.run.dir=$run > $run.log 2>&1 || echo "FAILED $run"
    if [[ $s == tiny ]]; then
      $M test run=$run episode=5w1s eval.seed=0 eval.episodes=600 >> $run.log 2>&1 || echo "FAILED test $run"
    fi
    echo "$(date +%T) done $run"
  done
done
