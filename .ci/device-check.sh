#!/usr/bin/env bash
# GPU check on one CUDA machine: the CUDA tests (pytest -m gpu tests/gpu), the study benchmark
# (python -m ssl4gie.bench.gpu), the pretraining benchmark (python -m ssl4gie.bench.pretrain: training with the views
# decoded and augmented on the GPU, and the loaders alone) and the detection loader, in about 12 minutes on one H200.
#
# The machine's Python 3.12 has torch, torchvision, timm, torchmetrics, numpy, pandas, matplotlib, scipy, pillow,
# tqdm, filelock and tabulate, but not the Hydra stack: its wheels travel in the git-ignored .whl/ folder of the
# working tree. Before carrying the tree to the machine:
#
#     pip wheel --no-deps -w .whl hydra-core==1.3.2 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 \
#         hydra-submitit-launcher==1.2.0 submitit==1.5.4          # pure Python: wheels for any machine
#     pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#         -d .whl pycocotools==2.0.11 kornia==0.9.0 kornia-rs==0.2.0   # COCO mAP; the device views' operations
#
# (pytest too, if that Python lacks it: pip download --no-deps -d .whl pytest pluggy iniconfig packaging)
# On the machine, from the repository root:
#
#     bash .ci/device-check.sh                 # results, log and junit XML in $OUT (default ./bench_out)
#
# Options: --reuse-env    skip the install when the imports already work (a dry run on a dev machine)
#          --allow-cpu    no GPU is not a failure (the CUDA tests skip; the benchmark runs --tiny on the CPU)
#          --tiny         benchmark with tiny models and inputs (any machine, about a minute)
# Every part runs even if an earlier one failed; the script exits 1 if any part failed and says which.
set -uo pipefail
cd "$(dirname "$0")/.."

REUSE_ENV=0 ALLOW_CPU=0 TINY=0
for arg in "$@"; do
  case "$arg" in
    --reuse-env) REUSE_ENV=1 ;;
    --allow-cpu) ALLOW_CPU=1 ;;
    --tiny) TINY=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "device-check: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

OUT="${OUT:-./bench_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
LOG="$OUT/device-check.log"
exec > >(tee "$LOG") 2>&1  # everything below also lands in $OUT, which comes back from the machine
START=$(date +%s)
FAILED=()
SUMMARY=()

# A part's end: its elapsed time, and a failure remembered for the summary (the other parts still run).
finish() {
  local name=$1 rc=$2 t0=$3 limit=${4:-}
  local took=$(( $(date +%s) - t0 ))
  if [ "$rc" -eq 0 ]; then
    echo "=== [$name] ok in ${took} s"
  else
    [ "$rc" -eq 124 ] && [ -n "$limit" ] && echo "=== [$name] TIMED OUT after ${limit} s" >&2
    echo "=== [$name] FAILED (exit $rc) after ${took} s" >&2
    FAILED+=("$name")
  fi
  SUMMARY+=("$(printf '%-12s exit %-3s %4s s' "$name" "$rc" "$took")")
}

# part NAME TIMEOUT_S COMMAND...: a command under a time limit.
part() {
  local name=$1 limit=$2; shift 2
  local t0; t0=$(date +%s)
  echo; echo "=== [$name] $* (limit ${limit} s)"
  timeout --kill-after=15 "$limit" "$@"
  finish "$name" $? "$t0" "$limit"
}

# here NAME FUNCTION: a shell function run in this shell, so that what it exports (PYTHONPATH) stays.
here() {
  local name=$1 t0; t0=$(date +%s)
  echo; echo "=== [$name]"
  "$2"
  finish "$name" $? "$t0"
}

imports_ok() {
  "$PY" -c "import hydra, omegaconf, submitit, pycocotools, hydra_plugins.hydra_submitit_launcher, pytest, kornia" 2>/dev/null
}

install() {
  if [ "$REUSE_ENV" -eq 1 ] && imports_ok; then
    echo "the Hydra stack and pytest already import: nothing to install (--reuse-env)"
    return 0
  fi
  shopt -s nullglob
  local wheels=(.whl/*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "no wheels in .whl/: put the Hydra stack's, pycocotools' and kornia's wheels there before carrying the tree (the header of $0 says how)" >&2
    return 1
  fi
  SITE="${SITE:-$(mktemp -d)/site}"
  echo "installing ${#wheels[@]} wheels into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${wheels[@]}" || return 1
  export PYTHONPATH="$PWD:$SITE"
  imports_ok || { echo "after the install, an import still fails:" >&2; "$PY" -c "import hydra, omegaconf, submitit, pycocotools, pytest, kornia"; return 1; }
}

environment() {
  if command -v nvidia-smi >/dev/null; then
    timeout 30 nvidia-smi || return 1
  elif [ "$ALLOW_CPU" -eq 0 ]; then
    echo "nvidia-smi not found: not a GPU machine (--allow-cpu to go on anyway)" >&2
    return 1
  else
    echo "nvidia-smi not found (--allow-cpu)"
  fi
  timeout 60 "$PY" - "$ALLOW_CPU" <<'EOF'
import platform, sys
import timm, torch, torchvision
print(f"python {platform.python_version()}  torch {torch.__version__}  torchvision {torchvision.__version__}  "
      f"timm {timm.__version__}  CUDA {torch.version.cuda}  cuDNN {torch.backends.cudnn.version()}")
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}, "
              f"bf16 {torch.cuda.is_bf16_supported()}")
elif sys.argv[1] != "1":
    sys.exit("torch sees no CUDA device")
EOF
}

here install install
export PYTHONPATH="${PYTHONPATH:-$PWD}"
echo "PYTHONPATH=$PYTHONPATH"
here environment environment

part gpu-tests 210 "$PY" -m pytest -m gpu tests/gpu -q -p no:cacheprovider --junitxml="$OUT/gpu-tests.xml"

WORK="$(mktemp -d)"  # synthetic data and decoded caches: scratch, not results
BENCH=(--out "$OUT/bench_gpu.json" --work-dir "$WORK" --loader-batches 4 --max-minutes 2.5)
if [ "$TINY" -eq 1 ]; then
  BENCH+=(--tiny)
elif ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  echo "no CUDA device: the benchmark runs --tiny on the CPU"
  BENCH+=(--tiny --device cpu)
fi
part gpu-bench 240 "$PY" -m ssl4gie.bench.gpu "${BENCH[@]}"
# pretraining speed of the four ssl × backbone pairs, about 2 minutes on one H200 (24 full-size frames written once,
# cycled): the views decoded (nvJPEG) and augmented on the GPU, so train_images_per_s is decode + augment + step,
# with peak_cuda_mb beside it (trainer.gpu_augment=true, the CUDA default, said explicitly)
PRETRAIN=(--all --out "$OUT/bench_pretrain.json" --work-dir "$WORK" --frames 24 --steps 5 --warmup 2 --no-progress --max-minutes 2.5)
SMALL_PRETRAIN=(--tiny --input-size 64 --batch-size 8 --workers 0 --frame-sizes 96,160)
# the loaders alone, one record per mode: frames/s per worker, and the device step's decode + augment rate
LOADER=(--loader --all --json "$OUT/pretrain_loader.json" --work-dir "$WORK" --frames 24 --loader-rounds 2 --no-progress)
DET_LOADER=(--loader --tasks detection --json "$OUT/detection_loader.json" --work-dir "$WORK" --loader-batches 4 --loader-rounds 2)
if [ "$TINY" -eq 1 ]; then
  PRETRAIN+=("${SMALL_PRETRAIN[@]}")
  LOADER+=(--frame-sizes 96,160 --loader-batches 1)
  DET_LOADER+=(--tiny)
elif ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  PRETRAIN+=("${SMALL_PRETRAIN[@]}" --device cpu)
  LOADER+=(--device cpu --frame-sizes 96,160 --loader-batches 1)
  DET_LOADER+=(--tiny --device cpu)
else
  PRETRAIN+=(--device cuda --batch-size 128 --workers 8 --set trainer.gpu_augment=true)
  LOADER+=(--device cuda --loader-batch 32 --loader-batches 2)
  DET_LOADER+=(--device cuda)
fi
part pretrain-bench 200 "$PY" -m ssl4gie.bench.pretrain "${PRETRAIN[@]}"
part pretrain-loader 150 "$PY" -m ssl4gie.bench.pretrain "${LOADER[@]}"
part detection-loader 90 "$PY" -m ssl4gie.bench.gpu "${DET_LOADER[@]}"
rm -rf "$WORK"

echo
echo "=== summary ($(( $(date +%s) - START )) s in all)"
printf '  %s\n' "${SUMMARY[@]}"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "FAILED: ${FAILED[*]} (log: $LOG)" >&2
  exit 1
fi
echo "all parts passed; results in $OUT"
