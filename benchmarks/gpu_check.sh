#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one go (about 8 minutes on an H100), most important first, each log
# kept in OUT_DIR:
#   1. the CUDA tests: no host-device sync in the hooks (SGD, Adam+L2, AdamW; foreach and fused; eager and
#      fused statistics; every capturable optimizer), bf16 + channels_last, torch.compile, fp16 GradScaler;
#   2. the demo's targets: SEEDS runs of the full sgdm recipe (24 epochs, normwatch attached), whose median
#      must train in ≤ 20 s on an H100 and reach ≥ 94% test accuracy on official CIFAR-10;
#   3. the overhead bar (≤ 1.02 at every=1), eager and fused (compiled) statistics, on ResNet-9 at full width
#      (batch 512) and on the 120-matrix transformer (AdamW), with the peak memory each step allocates;
#   4. the demo with fused statistics, and with --compile;
#   5. the LM study's full preset (its parts on one GPU), if time is left.
#
#   bash benchmarks/gpu_check.sh DATA_DIR [OUT_DIR]      # PYTHON=python3.12 SEEDS=3 pick others
#
# DATA_DIR holds cifar-10-batches-py/ (or is where the demo may download it). Without internet, make one
# from the JPEG copy first: python ../shared/data/make_cifar10.py DATA_DIR. normwatch must be importable
# (pip install -e . or PYTHONPATH=.).
set -uo pipefail
DATA=${1:?usage: bash benchmarks/gpu_check.sh DATA_DIR [OUT_DIR]}
OUT=${2:-gpu-check}
PY=${PYTHON:-python3}
SEEDS=${SEEDS:-5}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0
demo() {  # demo LOG_NAME STUDY_DIR ARGS...: the full recipe's sgdm part, no report
    local log=$1 study=$2
    shift 2
    $PY demo/train_resnet.py --preset full --parts sgdm --data-dir "$DATA" --out "$study" --no-report "$@" 2>&1 \
        | tee "$OUT/$log" || status=1
}
$PY -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name())" 2>&1 | tee "$OUT/device.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$OUT/device.txt"
$PY -m pytest -q -p no:cacheprovider -rfs tests/test_cuda.py \
    tests/test_watcher.py::test_grad_scaler_skipped_steps_are_dropped_and_metrics_use_unscaled_gradients 2>&1 \
    | tee "$OUT/tests.txt" || status=1
for seed in $(seq 0 $((SEEDS - 1))); do
    demo "demo-s$seed.txt" "$OUT/study/s$seed" --seed "$seed"
done
$PY - "$OUT/study" <<'EOF' 2>&1 | tee "$OUT/demo-summary.txt" || status=1
import json, statistics, sys
from pathlib import Path
results = [json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("s*/sgdm/result.json"))]
if not results:
    sys.exit("no finished demo run")
acc = statistics.median(r["test_acc"] for r in results)
train = statistics.median(r["train_time_s"] for r in results)
print(f"{len(results)} runs: test acc {[r['test_acc'] for r in results]}, median {acc:.4f} (target >= 0.94)")
print(f"train time s {[r['train_time_s'] for r in results]}, median {train:.1f} (target <= 20 on an H100)")
sys.exit(0 if acc >= 0.94 and train <= 20 else 1)
EOF
for model in resnet9 transformer; do
    for stats in "" --fused; do
        $PY benchmarks/overhead.py --device cuda --model $model --width 64 --batch 512 $stats 2>&1 \
            | tee -a "$OUT/overhead.txt" || status=1
    done
done
demo demo-fused.txt "$OUT/study-fused" --fused-stats
demo demo-compile.txt "$OUT/study-compile" --compile
$PY demo/train_lm.py --preset full --data "${LM_DATA:-data/tinyshakespeare/input.txt}" --out "$OUT/lm" 2>&1 \
    | tee "$OUT/lm.txt" || status=1
exit $status
