#!/usr/bin/env bash
# The GPU paths on a lent accelerator machine (Python 3.12 with CUDA PyTorch, no network):
# the two-tower unit tests with CUDA as the default device, the NumPy user tower against a
# CUDA-trained tower, and `bench train`'s two-tower half on CUDA and on CPU in the same run.
# Needs the small wheels it lacks in .whl/ (pydantic, orjson, faiss-cpu: docs/training.md says which).
# Usage on that machine: bash bench/gpu_check.sh   (writes gpu_check.log and bench JSON to $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
# The boxes install under `eightbox.` (pyproject package-dir); on this throwaway copy of the tree,
# link them into eightbox/ instead of installing (the repo root comes first on sys.path anyway).
for d in ingest features training retrieval ranking serving monitoring deploy bench; do ln -sfn "$PWD/$d" eightbox/$d; done
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi -L; nproc
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 -m pytest -q -p no:cacheprovider -o addopts= -o timeout=0 tests/unit/test_two_tower.py tests/unit/test_user_encoder.py
bench() {  # $1 = label, rest = env
  python3 -c "import json; from eightbox.training.bench_tower import run; print('$1', json.dumps(run(quick=False, epochs=2)))"
}
bench cuda | tee -a "$OUT/bench_tower.txt"
CUDA_VISIBLE_DEVICES= bench cpu | tee -a "$OUT/bench_tower.txt"
