#!/usr/bin/env bash
# The one GPU command (issue 11): paper-scale bench on CUDA, UNet precisions and torch.compile, the SDPA
# kernels, the golden test on CUDA, 1-GPU NCCL torchrun training with a checkpoint and a resume, and sharded
# batch inference (issue 17): `torchrun` over every GPU present against one process, tiny preset.
#
#   bash bench/gpu_suite.sh            # -> bench/results/gpu_<device>.md (+ raw JSON and logs in $OUT, if set)
#   PARTS="paper" SECTIONS=decoder,compiled bash bench/gpu_suite.sh   # a rerun of some parts (default: all)
#
# Each part has its own time limit and a failing part does not stop the others; the whole takes under
# 8 minutes on one H100 (the sharded inference part adds up to 2.5). Machines without a package registry: put wheels in .whl/ (see bench/README.md) and
# the shared reference in .shared/ (or set FASHIONFLOW_SHARED).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RAW=${OUT:-$(mktemp -d)}
mkdir -p "$RAW"
start=$(date +%s)

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fashionflow_site .whl/*.whl \
    && export PYTHONPATH=/tmp/fashionflow_site${PYTHONPATH:+:$PYTHONPATH}
fi
[ -d .shared/reference ] && export FASHIONFLOW_SHARED=${FASHIONFLOW_SHARED:-$PWD/.shared}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_suite.sh: no CUDA device visible to $PY; run it on a GPU machine" >&2
  exit 2
fi
device=$("$PY" -c "import torch; print(torch.cuda.get_device_name().replace('NVIDIA ', '').replace(' ', '_'))")
report=bench/results/gpu_${device}.md
standins=${STANDINS:-/tmp/fashionflow_standins}

part() {  # part NAME SECONDS COMMAND...: run with a limit, log to $RAW/NAME.log, record the status
  local name=$1 limit=$2
  shift 2
  case " ${PARTS:-standins paper golden_test torchrun sharded_inference} " in *" $name "*) ;; *) return 0 ;; esac
  echo "== $name (limit ${limit} s, $(($(date +%s) - start)) s into the suite)"
  timeout --kill-after=10 "$limit" "$@" >"$RAW/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc" | tee -a "$RAW/status.txt"
  tail -n 5 "$RAW/$name.log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  "$PY" -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
} >"$RAW/environment.txt" 2>&1
[ -f "$standins/vae/config.json" ] || PARTS="${PARTS:-} standins" part standins 60 "$PY" -m models.standins --output_dir "$standins"
part paper 330 "$PY" bench/bench_paper.py --device cuda --sections "${SECTIONS:-all}" --compile --encoders "$standins" \
  --max_train_batch 32 --json "$RAW/paper.json" --report "$RAW/paper.md"
part golden_test 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_model.py -k golden
part torchrun 100 bash bench/gpu_torchrun.sh
gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
# one rank per GPU; with a single GPU, two ranks share it (does one tiny-model process leave the GPU idle?)
part sharded_inference 150 "$PY" bench/bench_inference_sharded.py --device cuda --processes "$([ "$gpus" -gt 1 ] && echo "$gpus" || echo 2)" \
  --photos $((64 * gpus)) --repeats 2 --out "$RAW/inference_sharded.md"

{
  cat "$RAW/paper.md" 2>/dev/null || echo "# GPU suite: $device (the paper bench wrote no report; see paper.log)"
  echo
  echo "## Environment"
  echo
  sed 's/^/    /' "$RAW/environment.txt"
  echo
  echo "## Golden test on CUDA (\`pytest tests/test_model.py -k golden\`)"
  echo
  grep -E "passed|failed|error" "$RAW/golden_test.log" | tail -n 3 | sed 's/^/    /'
  echo
  echo "## 1-GPU NCCL torchrun training, checkpoint and resume (\`bash bench/gpu_torchrun.sh\`)"
  echo
  grep -E "^(PASS|FAIL)" "$RAW/torchrun.log" | sed 's/^/- /'
  echo
  echo "## Sharded batch inference (\`bench/bench_inference_sharded.py\`)"
  echo
  sed -n '3,$p' "$RAW/inference_sharded.md" 2>/dev/null || echo "(no result; see sharded_inference.log)"
  echo
  echo "## Parts"
  echo
  sed 's/^/- /' "$RAW/status.txt"
  echo "- whole suite: $(($(date +%s) - start)) s"
} >"$report"
cp "$report" "$RAW/" 2>/dev/null
echo "wrote $report"
! grep -qv ": exit 0" "$RAW/status.txt"
