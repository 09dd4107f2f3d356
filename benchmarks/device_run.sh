#!/usr/bin/env bash
# The one prepared command for a lent GPU machine (bare, offline, no Ray): the GPU checks,
# then the paper-size UniRep distillation in process; logs and tables come back under $OUT.
# Build .carry/ first (python benchmarks/device_pack.py) and send it: carry=[".carry"].
set -eo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/platform" MTDP_CACHE="$PWD/.carry/cache" \
       MTDP_DATA_DIR=/tmp/mtdp-data RAY_USAGE_STATS_ENABLED=0
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT" "$MTDP_DATA_DIR"
tar -xzf .carry/data.tar.gz -C "$MTDP_DATA_DIR"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 benchmarks/gpu_check.py 2>&1 | tee "$OUT/gpu_check.log" || echo "gpu_check failed" >&2
python3 research/gpu_scale.py --workdir /tmp/gpu-scale --pool-fasta .carry/pool.fasta.gz "$@" \
  2>&1 | tee "$OUT/gpu_scale.log"
cp /tmp/gpu-scale/gpu_scale.md /tmp/gpu-scale/gpu_scale.json "$OUT/"
# The paper-size uniform student comes back (float16, ~38 MB of the 64 MiB); probes ran here.
mkdir -p "$OUT/students" && cp -r /tmp/gpu-scale/run-*/students/paper-uniform "$OUT/students/"
