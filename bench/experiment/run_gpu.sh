#!/usr/bin/env bash
# The whole experiment in one command on one GPU machine, from the repository root:
#   bash bench/experiment/run_gpu.sh OUT_DIR [CORPUS_FILE]
# 1. pretrain the base (bench/base_model/pretrain.py --preset gpu; the corpus from the pythonbible packages,
#    or from CORPUS_FILE written by bench/base_model/corpus.py where they are not installed);
# 2. write the experiment's data (data/make_experiment.py);
# 3. run the curation sweep (one process per seed) and the PEFT sweep (two processes) side by side, each with its own workdir,
#    Prefect home and MLflow database (SQLite takes one writer at a time);
# 4. collect every variant run and sum them up (bench/experiment/report.py).
# SWEEP_DEADLINE (s after the start, default 500) ends step 3, so a leased machine still returns what finished.
# Run it as `bash bench/experiment/run_gpu.sh OUT 2>&1 | tee OUT/driver.log`, not through `| tail`: a command
# killed at its limit takes a pipe's buffered output with it.
set -u
OUT=${1:?usage: run_gpu.sh OUT_DIR [CORPUS_FILE]}
CORPUS=${2:-}
PY=${PY:-python3}
mkdir -p "$OUT" work
export PYTHONUNBUFFERED=1 PREFECT_SERVER_UI_ENABLED=false PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=180 \
  MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false TOKENIZERS_PARALLELISM=false
t0=$(date +%s)
# Fail in seconds, not minutes, when the machine lacks a package: every import the sweeps make.
$PY -c "import prefect, mlflow, peft, bitsandbytes, datasketch, rouge_score, transformers, torch, flows.sweep
print('prefect', prefect.__version__, 'mlflow', mlflow.__version__, 'peft', peft.__version__, 'bnb',
      bitsandbytes.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)" || exit 3
$PY bench/base_model/pretrain.py --preset gpu ${CORPUS:+--corpus "$CORPUS"} --expect-digest 59380740a60ba2fc \
  --result "$OUT/pretrain-gpu.json" > "$OUT/pretrain.log" 2>&1 || { tail -20 "$OUT/pretrain.log"; exit 1; }
tail -2 "$OUT/pretrain.log"
$PY data/make_experiment.py --out work/experiment/data | tee -a "$OUT/pretrain.log"
echo "base + data: $(( $(date +%s) - t0 )) s"

run_sweep() {  # name config seeds
  local name=$1 config=$2 seeds=$3
  sed "s/^seeds: .*/seeds: $seeds/" "configs/$config" > "configs/.run-$name.yaml"
  # -k: a flow stopped by SIGTERM can hang in Prefect's shutdown; SIGKILL it 15 s later. The first GPU run of
  # this script lost every result that way (the sweeps never returned, the archive below was never written).
  PREFECT_HOME=/tmp/prefect-$name OMP_NUM_THREADS=3 timeout -k 15 "$(( ${SWEEP_DEADLINE:-500} - $(date +%s) + t0 ))" \
    $PY -c "import sys; from flows.cli import main; sys.exit(main())" sweep --config "configs/.run-$name.yaml" \
    --set "workdir=work/run-$name" --set "tracking.tracking_uri=sqlite:///$PWD/work/mlruns-$name.db" \
    > "work/sweep-$name.log" 2>&1
  echo "sweep $name: exit $? after $(( $(date +%s) - t0 )) s"
}
# SWEEPS: space-separated name=config=seeds, one process each (default: the two sweeps over five processes).
SWEEPS=${SWEEPS:-"s0=sweep-experiment.yaml=[0] s1=sweep-experiment.yaml=[1] s2=sweep-experiment.yaml=[2] \
peft01=sweep-peft.yaml=[0,1] peft2=sweep-peft.yaml=[2]"}
for spec in $SWEEPS; do IFS== read -r name config seeds <<< "$spec"; run_sweep "$name" "$config" "$seeds" & done
wait
uris=()
for db in work/mlruns-*.db; do uris+=(--tracking-uri "sqlite:///$PWD/$db"); done
$PY bench/experiment/report.py collect "${uris[@]}" --out "$OUT/runs.json" 2> work/collect.log
$PY bench/experiment/report.py summarize "$OUT/runs.json" --out work/summary.md && cp work/summary.md "$OUT/"
# At most 8 files come back from a leased machine: logs and databases in one archive, the base in 15 MB parts.
mv "$OUT/pretrain.log" "$OUT/pretrain-gpu.json" work/ 2>/dev/null
tar czf - work/sweep-*.log work/mlruns-*.db work/collect.log work/pretrain.log work/pretrain-gpu.json \
  work/summary.json 2>/dev/null | split -b 15M - "$OUT/logs.tar.gz.part-"
(cd work/models && tar cf - base-gpu-*) | split -b 15M - "$OUT/base-gpu.tar.part-"
echo "total: $(( $(date +%s) - t0 )) s"
