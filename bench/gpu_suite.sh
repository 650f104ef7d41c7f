#!/usr/bin/env bash
# The one GPU command (issues 11, 17). A lent GPU session has 15 minutes in all, minutes of which go to starting
# the machine, and one command may run 10: so the figures that still wait for a GPU come first, in order of value,
# each part under its own time limit, the whole run within $BUDGET seconds (default 480; bench/README.md has the
# order and the time plan). A failing or stopped part does not stop the others, and what a part measured before
# its limit stays (bench_paper.py writes its figures after every section).
#
#   bash bench/gpu_suite.sh                 # -> bench/results/gpu_<device>_<date-time>.md (+ raw JSON and logs in $OUT, if set)
#   PARTS="paper" SECTIONS=decoder,compiled bash bench/gpu_suite.sh   # some parts again; SECTIONS: the paper part's
#   DRY_RUN=1 bash bench/gpu_suite.sh       # the suite's rot check on the CPU (tests/test_gpu_suite.py): every part
#                                           # at smoke sizes, the report in $OUT or a temporary folder, never in
#                                           # bench/results/; exit 1 if a part fails
#
# Parts, in order: inference (eager end to end), compiled (end to end with --compile), torchrun (1-GPU NCCL
# training, checkpoint, resume), offload_sync (enable_model_cpu_offload and the sampling loop's host syncs),
# golden_test (tests/test_model.py -k golden on CUDA), sharded_inference (bench_inference_sharded.py over the GPUs
# present), paper (bench_paper.py's other sections, $SECTIONS, with what time is left). Machines without a package
# registry: put wheels in .whl/ (see bench/README.md) and the shared reference in .shared/ (or set
# FASHIONFLOW_SHARED).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RAW=${OUT:-$(mktemp -d)}
DRY_RUN=${DRY_RUN:-0}
at_once=1  # parts run one at a time (a dry run: DRY_RUN_JOBS)
SLOWER=$([ "$DRY_RUN" = 1 ] && echo 3 || echo 1)  # a shared CPU's slack on the limits: a dry run checks that parts run
BUDGET=${BUDGET:-$((480 * SLOWER))}
ORDER="inference compiled torchrun offload_sync golden_test sharded_inference paper"
PARTS=${PARTS:-$ORDER}
REPORT_SECONDS=20  # kept back from the budget for writing the report
MIN_PART_SECONDS=20  # a part with less time than this left is skipped, not started
for name in $PARTS; do
  case " $ORDER standins " in *" $name "*) ;; *) echo "gpu_suite.sh: unknown part '$name' in PARTS; the parts: $ORDER" >&2; exit 2 ;; esac
done
mkdir -p "$RAW"
: >"$RAW/status.tsv"
start=$(date +%s)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if [ "$DRY_RUN" = 1 ]; then
  # timings mean nothing here: one thread a process (shared CPU cores run several times faster so), torch.compile's
  # wrappers without compiling (building the tiny UNet alone takes minutes on a 2-core CPU), no paper-size golden
  # case in bench_paper.py (a minute on such a CPU; its skip path runs), and parts side by side, DRY_RUN_JOBS at a time
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TORCH_COMPILE_DISABLE=1 FASHIONFLOW_SHARED=$RAW/no_shared_reference
  at_once=${DRY_RUN_JOBS:-2}
  dev=cpu
  [ -d .whl ] && echo "gpu_suite.sh: dry run: the wheels in .whl/ are not installed"
elif compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fashionflow_site .whl/*.whl \
    && export PYTHONPATH=/tmp/fashionflow_site${PYTHONPATH:+:$PYTHONPATH}
  dev=cuda
else
  dev=cuda
fi
[ -d .shared/reference ] && export FASHIONFLOW_SHARED=${FASHIONFLOW_SHARED:-$PWD/.shared}

# one interpreter start for the device, the GPU count and the versions (each start costs seconds)
probe=$("$PY" -c "
import importlib.metadata as meta, torch
cuda = torch.cuda.is_available()
print(torch.cuda.get_device_name().removeprefix('NVIDIA ').replace(' ', '_') if cuda else 'none', torch.cuda.device_count())
print('torch', torch.__version__, 'cuda', torch.version.cuda, *(f'{p} {meta.version(p)}' for p in ('diffusers', 'transformers')))
") || { echo "gpu_suite.sh: $PY cannot import torch, diffusers and transformers" >&2; exit 2; }
read -r device gpus <<<"$(head -n 1 <<<"$probe")"
if [ "$DRY_RUN" = 1 ]; then
  device=dry_run_cpu
  report=$RAW/gpu_dry_run.md
  paper_flags=(--device cpu --smoke --repeats 1)
  golden_flags=(--collect-only)  # the paper-size golden case takes a minute on this CPU; on CUDA, seconds
  sharded_flags=(--device cpu --processes 2 --photos 2 --repeats 1 --steps 2 --threads 1)
elif [ "$device" = none ]; then
  echo "gpu_suite.sh: no CUDA device visible to $PY; run it on a GPU machine (or DRY_RUN=1 to check the suite on the CPU)" >&2
  exit 2
else
  report=${REPORT:-bench/results/gpu_${device}_$(date -u +%Y%m%d-%H%M).md}  # dated: never over an earlier, annotated report
  standins=${STANDINS:-/tmp/fashionflow_standins}
  paper_flags=(--device cuda --encoders "$standins")
  golden_flags=()
  # one rank per GPU; with a single GPU, two ranks share it (does one tiny-model process leave the GPU idle?)
  sharded_flags=(--device cuda --processes "$([ "$gpus" -gt 1 ] && echo "$gpus" || echo 2)" --photos $((32 * gpus)) --repeats 1)
fi
{ [ "$DRY_RUN" = 1 ] || nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  tail -n +2 <<<"$probe"
} >"$RAW/environment.txt" 2>&1

part() {  # part NAME SECONDS COMMAND...: run with a limit (cut to the budget left), log to $RAW/NAME.log, record
  case " $PARTS " in *" $1 "*) ;; *) return 0 ;; esac
  if [ "$at_once" -gt 1 ]; then  # dry run: in the background, at most $at_once at a time
    while [ "$(jobs -rp | wc -l)" -ge "$at_once" ]; do wait -n; done
    run_part "$@" &
  else
    run_part "$@"
  fi
}

run_part() {
  local name=$1 limit=$(($2 * SLOWER))
  shift 2
  local now=$(($(date +%s) - start))
  local left=$((BUDGET - REPORT_SECONDS - now))
  if [ "$left" -lt "$MIN_PART_SECONDS" ]; then
    printf '%s\tskipped\t0\t%s\n' "$name" "$limit" >>"$RAW/status.tsv"
    echo "== $name: skipped, ${now} s of the ${BUDGET} s budget spent"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit} s, ${now} s into the suite)"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$RAW/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" "$limit" >>"$RAW/status.tsv"
  echo "$name: exit $rc after $(($(date +%s) - t0)) s"
  tail -n 5 "$RAW/$name.log"
}

paper() {  # paper PART SECONDS SECTIONS [FLAGS...]: bench_paper.py, its figures in $RAW/paper_PART.json
  local name=$1 limit=$2 sections=$3
  shift 3
  part "$name" "$limit" "$PY" bench/bench_paper.py "${paper_flags[@]}" --sections "$sections" "$@" --json "$RAW/paper_$name.json"
}

if [ "$DRY_RUN" != 1 ] && [ ! -f "$standins/vae/config.json" ]; then  # written once per machine, by one process
  case " $PARTS " in *" inference "* | *" compiled "* | *" offload_sync "* | *" paper "*)
    PARTS="$PARTS standins" part standins 60 "$PY" -m models standins --output_dir "$standins" ;;
  esac
fi
paper inference 120 inference
paper compiled 210 compiled --compile
part torchrun 100 env DEVICE=$dev bash bench/gpu_torchrun.sh
paper offload_sync 90 offload,sync
part golden_test 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_model.py -k golden "${golden_flags[@]}"
part sharded_inference 120 "$PY" bench/bench_inference_sharded.py "${sharded_flags[@]}" --out "$RAW/inference_sharded.md"
# the UNet call's kernel table (never measured), then what the H200 measured already (bench/results/gpu_H200.md):
# what time is left, cheapest first
paper paper 540 "${SECTIONS:-kernels,memory,sdpa,golden,decoder,unet,train,batch_auto,attention_batch}" --compile --max_train_batch 32

wait  # for the parts of a dry run still in the background
"$PY" bench/gpu_suite_report.py --raw "$RAW" --out "$report" --order "$ORDER" --budget "$BUDGET" \
  --seconds $(($(date +%s) - start)) $([ "$DRY_RUN" = 1 ] && echo --dry_run) || exit 1
[ "$report" -ef "$RAW/$(basename "$report")" ] || cp "$report" "$RAW/"
echo "wrote $report"
awk 'NR > 3 && (/^## / || /^`/) { exit } NR >= 3' "$report"  # what still waits, for a console that shows the end
# failed: a part that exited non-zero; in a dry run also one skipped for want of time
awk -F'\t' -v dry="$DRY_RUN" '$2 != 0 && ($2 != "skipped" || dry == 1) { bad = 1 } END { exit bad }' "$RAW/status.tsv"
