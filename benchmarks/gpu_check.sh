#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one go (about 5 minutes on an H100), each log kept in OUT_DIR:
#   1. the CUDA tests: no host-device sync in the hooks, bf16 + channels_last, torch.compile, AMP;
#   2. the overhead bar (≤ 1.02 at full width, batch 512, every=1), eager and fused (compiled) statistics;
#   3. the demo's targets: 24 epochs of the full recipe in ≤ 20 s, test accuracy (≥ 94% on official CIFAR-10).
#
#   bash benchmarks/gpu_check.sh DATA_DIR [OUT_DIR]
#
# DATA_DIR holds cifar-10-batches-py/ (or is where the demo may download it). Without internet, make one
# from the JPEG copy first: python ../shared/data/make_cifar10.py DATA_DIR. normwatch must be importable
# (pip install -e . or PYTHONPATH=.).
set -uo pipefail
DATA=${1:?usage: bash benchmarks/gpu_check.sh DATA_DIR [OUT_DIR]}
OUT=${2:-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0
python -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name())" 2>&1 | tee "$OUT/device.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$OUT/device.txt"
python -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_watcher.py tests/test_loops.py 2>&1 \
    | tee "$OUT/tests.txt" || status=1
python benchmarks/overhead.py --device cuda --width 64 --batch 512 2>&1 | tee "$OUT/overhead.txt" || status=1
python benchmarks/overhead.py --device cuda --width 64 --batch 512 --fused 2>&1 | tee -a "$OUT/overhead.txt" || status=1
python demo/train_resnet.py --preset full --parts sgdm --data-dir "$DATA" --out "$OUT/study" --no-report 2>&1 \
    | tee "$OUT/demo.txt" || status=1
python demo/train_resnet.py --preset full --parts sgdm --data-dir "$DATA" --out "$OUT/study-fused" --no-report \
    --fused-stats 2>&1 | tee "$OUT/demo-fused.txt" || status=1
exit $status
