#!/usr/bin/env bash
# The map of tasks of a trained run, for docs/benchmarks.md: runs `metafsl tasks` on the run's
# test episodes (half of them drawn within one alphabet where the dataset has alphabets) and
# copies the map (task_map.png, task_map.csv, nearest.csv) and the console output into an
# evidence dir, with the exact command.
#
# Usage: scripts/bench_taskmap.sh <evidence dir> <run dir> [metafsl tasks arguments ...]
#   e.g. scripts/bench_taskmap.sh docs/evidence/taskmap outputs/train/<omniglot protonet run> \
#            episodes=400 paths.data_dir=../shared/data
# Default arguments (when none are given after the run dir): episodes=400 within=0.5.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
EVIDENCE="$1"; RUN="$2"; shift 2
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# the command: $METAFSL if set, else the project's .venv, else metafsl on the PATH
if [ -z "${METAFSL:-}" ]; then
  METAFSL="$ROOT/.venv/bin/metafsl"
  [ -x "$METAFSL" ] || METAFSL="metafsl"
fi
ARGS=("$@")
[ ${#ARGS[@]} -gt 0 ] || ARGS=(episodes=400 within=0.5)
mkdir -p "$EVIDENCE"
before=$(ls -1 "$RUN/tasks" 2>/dev/null || true)
echo "$METAFSL tasks run=$RUN ${ARGS[*]}" >"$EVIDENCE/command.txt"
COLUMNS=120 $METAFSL tasks "run=$RUN" "${ARGS[@]}" | tee "$EVIDENCE/tasks_output.txt"
made=$(comm -13 <(echo "$before" | sort) <(ls -1 "$RUN/tasks" | sort) | tail -n1)
cp "$RUN/tasks/$made/task_map.png" "$RUN/tasks/$made/task_map.csv" "$RUN/tasks/$made/nearest.csv" "$EVIDENCE/"
echo "Copied $RUN/tasks/$made/ into $EVIDENCE/ (task_map.png, task_map.csv, nearest.csv, tasks_output.txt, command.txt)."
