#!/usr/bin/env bash
# Mutation testing: do the tests fail when the code is wrong? (not in CI: two hours or more on 2 CPU cores)
#
#   pip install -r requirements-mutation.txt     # mutmut, pinned
#   bench/mutation.sh                            # fresh run; writes bench/results/mutation.md
#   bench/mutation.sh --survivors                # after adding tests: rerun only the last run's unexplained survivors
#   bench/mutation.sh --report                   # only rewrite the report from the last run
#
# mutmut (configured under [tool.mutmut] in pyproject.toml) copies the repository into mutants/, makes every
# small change it knows in the scope below (one mutant each), records which tests call which function, then
# runs for each mutant only the tests that reach it, fastest first, stopping at the first failure. A mutant no
# test notices "survives": either a test is missing, or the change cannot alter behaviour (an equivalent
# mutant, explained in bench/mutation_equivalent.txt). The report gives the kill rate over the others.
#
# Environment: MUTMUT (default: mutmut on PATH), JOBS (parallel mutants, default 2), FASHIONFLOW_SHARED (the
# shared reference folder, default ../shared: the tests run from mutants/, which has no ../shared of its own).
set -euo pipefail
cd "$(dirname "$0")/.."

# What is mutated: mutmut names mutants <module>.x_<function>__mutmut_<n> and <module>.xǁ<Class>ǁ<method>__mutmut_<n>.
SCOPE=(
  "models.diffusion.schedule.*"
  "models.networks.checkpoint.*"
  "models.data.projection.*"
  # training.py: the EMA, the sampler and what resuming reads and restores
  "models.training.loop.xǁEMAǁ*"
  "models.training.loop.xǁResumableSamplerǁ*"
  "models.training.loop.x_epoch_batches__mutmut_*"
  "models.training.loop.x_rank_generator__mutmut_*"
  "models.training.loop.x_resolve_resume__mutmut_*"
  "models.training.loop.x_model_config_for__mutmut_*"
  "models.training.loop.x_collect_rng_states__mutmut_*"
  "models.training.loop.x_restore_rng_states__mutmut_*"
  "models.training.loop.x_remove_partial_writes__mutmut_*"
  "models.training.loop.x_prune_checkpoints__mutmut_*"
  "models.training.loop.x_point_latest__mutmut_*"
  # encoders.py: how pixels are fed to the VAE and CLIP (loading and the networks themselves are left out)
  "models.networks.encoders.x__check_mode__mutmut_*"
  "models.networks.encoders.x__shortest_side_size__mutmut_*"
  "models.networks.encoders.x__resize_and_center_crop__mutmut_*"
  "models.networks.encoders.x_preprocess_clip__mutmut_*"
  "models.networks.encoders.xǁFrozenEncodersǁ_to_vae_range__mutmut_*"
  "models.networks.encoders.xǁFrozenEncodersǁ_from_vae_range__mutmut_*"
  "models.networks.encoders.xǁFrozenEncodersǁlatent_size__mutmut_*"
)

MUTMUT=${MUTMUT:-mutmut}
if ! command -v "$MUTMUT" > /dev/null; then
  echo "mutmut not found: pip install -r requirements-mutation.txt (or set MUTMUT=/path/to/mutmut)" >&2
  exit 2
fi
export FASHIONFLOW_SHARED=${FASHIONFLOW_SHARED:-$(cd .. && pwd)/shared}
if [ ! -d "$FASHIONFLOW_SHARED/reference" ]; then
  echo "no shared reference folder at $FASHIONFLOW_SHARED: the golden tests would be skipped; set FASHIONFLOW_SHARED" >&2
  exit 2
fi
export FASHIONFLOW_REQUIRE_SHARED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# each mutant's tests run single-threaded; JOBS of them run side by side
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

report() {
  python3 bench/mutation_report.py --mutmut "$MUTMUT" --jobs "${JOBS:-2}" "$@" "${SCOPE[@]}"
}

run() {
  local start=$SECONDS
  nice -n 10 "$MUTMUT" run --max-children "${JOBS:-2}" "$@" > mutants/run.log 2>&1 || {
    tail -c 4000 mutants/run.log >&2
    exit 1
  }
  elapsed=$((SECONDS - start))
}

case "${1:-}" in
  "")
    rm -rf mutants
    mkdir mutants
    run "${SCOPE[@]}"
    report --seconds "$elapsed"
    ;;
  --survivors)
    mapfile -t survivors < <(report --list-survivors)
    if [ ${#survivors[@]} -gt 0 ]; then run "${survivors[@]}"; fi
    report
    ;;
  --report) report ;;
  *)
    echo "usage: bench/mutation.sh [--survivors | --report]" >&2
    exit 2
    ;;
esac
