#!/usr/bin/env bash
# The one device command behind BENCHMARKS.md's Training section (issue 19), run from the repo root on the GPU
# machine with the wheels in .whl/ (bitsandbytes, liger-kernel, pydantic and its needs):
#   bash bench/train/run_gpu.sh OUT_DIR
# Side by side: the stock HF recipe and peftpipe on Llama-3.2-1B shapes (LoRA, QLoRA; like for like and
# fastest), the bf16 equivalence print, bf16 vs fp32 adapter weights over a cosine schedule, Llama-3.1-8B QLoRA
# (stock; peftpipe unconstrained and memory-lean, profiled), then the stock rows without checkpointing and the
# liger-kernel peer.
# Each step has its own time limit so that one slow step cannot take the others with it.
set -u
OUT=${1:-/tmp/out}
RES=/tmp/res
mkdir -p "$OUT" "$RES"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1 STEPS=${STEPS:-6} PROFILE_DIR=$RES TOKENIZERS_PARALLELISM=false
pack() { tar czf "$OUT/results.tgz" -C "$RES" . ; }
step() { local limit=$1; shift; echo "=== $(date +%T) $*"; timeout "$limit" "$@"; echo "=== rc=$?"; pack; }
python3 -c "import torch, transformers, peft, bitsandbytes, liger_kernel; print(torch.__version__, \
transformers.__version__, peft.__version__, bitsandbytes.__version__, torch.cuda.get_device_name())" | tee "$RES/versions.txt"

# Most wanted first: the run may be stopped at its time limit, and what is packed so far comes back.
# PART picks a group (default: all): 1b (the same-learning rows and precision), 8b (Llama-3.1-8B QLoRA, stock
# and ours side by side, profiled), peers (the stock rows at our settings and the liger-kernel peer).
PART=${PART:-all}
if [ "$PART" = all ] || [ "$PART" = 1b ]; then
step 60 python3 bench/train/hf_stock_recipe.py "$RES/stock-1b.json" llama-1b
step 100 python3 bench/train/speed.py "$RES/ours-1b.json" llama-1b:lora:all:fixed llama-1b:qlora:all:fixed \
  llama-1b:lora:none:fixed:compile+bf16a llama-1b:qlora:none:fixed:compile+bf16a \
  llama-1b:qlora:none:fixed:compile+bf16a+nomaster
step 60 python3 bench/train/gpu_equivalence.py "$RES/equivalence.json" llama-1b
STEPS=150 step 70 python3 bench/train/adapter_precision.py "$RES/precision.json" llama-1b
fi
if [ "$PART" = all ] || [ "$PART" = 8b ]; then
CASES=qlora step 110 python3 bench/train/hf_stock_recipe.py "$RES/stock-8b.json" llama-8b
GC=0 ADAPTER=bf16 CASES=qlora step 90 python3 bench/train/hf_stock_recipe.py "$RES/stock-8b-nogc.json" llama-8b
step 240 python3 bench/train/speed.py "$RES/ours-8b.json" llama-8b:qlora:none:fixed:compile+bf16a+profile \
  llama-8b:qlora:all:fixed:compile+bf16a llama-8b:qlora:all:fixed \
  llama-8b:qlora:skip8:fixed:compile+bf16a+mb=2
fi
if [ "$PART" = all ] || [ "$PART" = peers ]; then
GC=0 ADAPTER=bf16 CASES=lora step 30 python3 bench/train/hf_stock_recipe.py "$RES/stock-1b-nogc-bf16a.json" llama-1b
LIGER=1 step 45 python3 bench/train/hf_stock_recipe.py "$RES/liger-1b.json" llama-1b
LIGER=1 CASES=qlora step 110 python3 bench/train/hf_stock_recipe.py "$RES/liger-8b.json" llama-8b
fi
echo "=== $(date +%T) done"
