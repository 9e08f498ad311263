#!/usr/bin/env bash
# The CUDA checks in one go, for a machine with a GPU (and torch with CUDA already installed):
# the CUDA tests, then the benchmarks on the device. Each step has its own time limit and its
# log goes to $OUT (default ./gpu-out): env.txt, tests.log, losses.log, retrieval.log,
# diagnoser.log. A failing step does not stop the others.
#
#     OUT=/tmp/gpu bash benchmarks/gpu_check.sh            # about 6 minutes on an H200
#
# pytorch-metric-learning (the peer in losses.log and retrieval.log) is pure Python: carry its
# wheel in .wheels/ (gitignored) if the machine has no registry; without it those two steps stop
# at their import and the tests that compare with it are skipped.
set -u
cd "$(dirname "$0")/.."
out="${OUT:-gpu-out}"
mkdir -p "$out"
py="${PYTHON:-python3}"

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    "$py" -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -3
    if compgen -G ".wheels/*.whl" >/dev/null; then
        "$py" -m pip install -q --no-deps --no-index .wheels/*.whl 2>&1 | tail -3
    fi
    "$py" -c "import embscope, pytorch_metric_learning as p; print('PML', p.__version__)" 2>&1 | tail -1
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, log to $out/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    local started=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "rc=$rc after $((SECONDS - started)) s" >>"$out/$name.log"
    tail -n 30 "$out/$name.log"
}

step tests 240 "$py" -m pytest -q -rs tests/diagnostics/test_cuda.py tests/losses/test_margin_cuda.py \
    tests/diagnostics/test_retrieval.py tests/diagnostics/test_pairs.py \
    tests/diagnostics/test_verification.py
step losses 150 "$py" benchmarks/bench_losses.py --device cuda --warmup 10 --repeats 51
step retrieval 150 "$py" benchmarks/bench_retrieval.py --device cuda --warm --repeats 3
step diagnoser 120 "$py" benchmarks/bench_diagnoser_device.py --device cuda
