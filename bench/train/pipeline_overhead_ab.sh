#!/usr/bin/env bash
# Before/after of a change to the train task's logging: pipeline_overhead.py from two checkouts, alternating,
# in one call on one machine (the load of the moment hits both alike).
#   git worktree add ../wt-before <REV>; HIDDEN=64 SEQ=64 bash bench/train/pipeline_overhead_ab.sh ../wt-before
set -euo pipefail
before=$(cd "$1" && pwd); after=$(cd "$(dirname "$0")/../.." && pwd); py="$after/.venv/bin/python"
for round in 1 2; do
  for side in before after; do
    dir=$([ "$side" = before ] && echo "$before" || echo "$after")
    (cd "$dir" && STEPS=${STEPS:-60} ROUNDS=1 "$py" bench/train/pipeline_overhead.py "$(mktemp)" 2>/dev/null) \
      | grep '^{' | sed "s/^/$side round $round: /"
  done
done
