#!/usr/bin/env bash
# The CUDA path in one go, on a machine with a GPU: the conformance goldens and CAM tests on cuda, the
# CLI (explain, evaluate) on cuda, the benchmarks with CPU and CUDA figures from the same run, and the study's
# whole path (bench_study: bare inference vs evaluate, workers, torchrun, the Table 1 projection).
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh   (TESTS=... picks test files)
set -u
OUT=${OUT:-/tmp/dclsviz-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 DCLSVIZ_CACHE="$OUT/cache"
step() { echo; echo "=== $* ($(date +%T))"; }

step environment
nvidia-smi -L
$PY -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'timm', timm.__version__)"

step "conformance and CAM tests on cuda"
DCLSVIZ_TEST_DEVICE=cuda $PY -m pytest -q -p no:cacheprovider \
    ${TESTS:-tests/test_conformance.py tests/test_cam.py tests/test_metrics.py} 2>&1 | tail -n 25

step "CLI on cuda"
$PY -m dclsviz explain assets/examples/chelsea.jpg --arch demo --variant dcls --device cuda --out "$OUT/explain" \
    && $PY -c "import json; r = json.load(open('$OUT/explain/result.json'))['models']['dcls']; print('device', r['device'], 'top1', r['top5'][0])"
$PY -m dclsviz evaluate --arch demo --demo --device cuda --no-progress --out "$OUT/evaluate" | tail -n 6

step "bench_evaluate cuda (demo pair)"
$PY benchmarks/bench_evaluate.py --device cuda --images 128 --repeats 3
step "bench_evaluate cuda (ConvNeXt-T pair, random weights)"
$PY benchmarks/bench_evaluate.py --device cuda --arch convnext_tiny --images 128 --repeats 3
step "bench_cam cuda (ConvNeXt-T pair)"
$PY benchmarks/bench_cam.py --device cuda --repeats 5 2>&1 | tail -n 20
step "bench_study cuda (ConvNeXt-T and ResNet-50 pairs, random weights, 2048 records)"
for arch in convnext_tiny resnet50; do
    $PY benchmarks/bench_study.py --device cuda --arch "$arch" --records 2048 --batch-size 128 --repeats 2 \
        --torchrun-records 1024 --no-cold-start
done
step done
