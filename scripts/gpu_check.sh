#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): on a machine with one CUDA GPU, NMTune and
# LinearProbe on 1.28M x 2048 synthetic features, EfficientNet-Lite0 extraction throughput
# and a 1-GPU NCCL torchrun pre-training smoke, each against a plain-torch peer; meant to
# finish in under 10 minutes. Without a GPU: scripts/gpu_check.sh --device cpu --scale tiny
# (the same code at a size that runs in seconds). Extra arguments go to gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
exec timeout 600 "$PY" benchmarks/gpu_check.py "$@"
