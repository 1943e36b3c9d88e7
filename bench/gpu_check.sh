#!/usr/bin/env bash
# Issue 4's GPU checks in one go on one CUDA GPU (about 5 minutes on an H100/H200):
#   1. bench/gpu_engines.py: plain / FSDP / DeepSpeed ZeRO-2 / ZeRO-3, each with GradCache and LoRA, exact resume;
#   2. bench/train_speed.py --device cuda: qzhou vs sentence-transformers MNRL tokens/s, SmolLM2-135M's shape;
#   3. configs/bench-cpu.yaml on the GPU: its wall time (random weights of SmolLM2's shape: time only, no quality).
# Needs deepspeed in the Python, SmolLM2's config.json + tokenizer files in $SHAPE (copied from the cache that
# `qzhou quickstart` fills, ~/.cache/qzhou/smollm2-135m-instruct) and the bench data (bash bench/prepare_cpu_data.sh).
# Writes $OUT (default out/gpu): gpu_engines.json, train_speed_gpu.json, bench_cpu_on_gpu.txt.
set -uo pipefail
OUT=${OUT:-out/gpu}
SHAPE=${SHAPE:-.gpu/smollm2-shape}
PY=${PY:-python3}
PARTS=${PARTS:-1 2 3}  # which of the three checks to run
ENGINES=${ENGINES:-fsdp zero2 zero3}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY - "$SHAPE" /tmp/smollm2-shape-random <<'PYEOF'
import shutil, sys
from pathlib import Path
import torch
from transformers import AutoConfig, AutoModel
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
AutoModel.from_config(AutoConfig.from_pretrained(src)).save_pretrained(dst)
for f in src.iterdir():
    if f.name.startswith("tokenizer") or f.suffix == ".jinja":
        shutil.copy(f, dst / f.name)
print("random SmolLM2-shaped model in", dst)
PYEOF
if [[ " $PARTS " == *" 1 "* ]]; then
  echo "== 1. engines"
  # shellcheck disable=SC2086
  timeout 330 $PY bench/gpu_engines.py --engines $ENGINES --out "$OUT/gpu_engines.json" --logs /tmp/engine-logs
fi
if [[ " $PARTS " == *" 2 "* ]]; then
  echo "== 2. speed vs sentence-transformers"
  for shape in "32 64" "64 128"; do set -- $shape
    log=/tmp/speed-b$1-l$2.log
    timeout 180 $PY bench/train_speed.py --device cuda --base /tmp/smollm2-shape-random --batch "$1" --max-length "$2" \
      --steps 40 --warmup 5 --length-buckets 4 1 --out "$OUT/train_speed_gpu_b$1_l$2.json" > "$log" 2>&1 \
      && grep -E "^\||PASS|FAIL|###" "$log" || { echo "train_speed failed:"; tail -c 3000 "$log"; }
  done
fi
[[ " $PARTS " == *" 3 "* ]] || exit 0
echo "== 3. bench-cpu recipe on the GPU"
start=$(date +%s)
timeout 150 $PY -m qzhou.cli train configs/bench-cpu.yaml --set model.base=/tmp/smollm2-shape-random \
  --set output_dir=/tmp/bench-cpu-gpu --set precision=auto > /tmp/bench-cpu-gpu.log 2>&1
rc=$?
echo "bench-cpu.yaml on $(nvidia-smi --query-gpu=name --format=csv,noheader): rc $rc, wall $(( $(date +%s) - start )) s" \
  | tee "$OUT/bench_cpu_on_gpu.txt"
tail -c 1500 /tmp/bench-cpu-gpu.log >> "$OUT/bench_cpu_on_gpu.txt"
