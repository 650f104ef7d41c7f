#!/usr/bin/env bash
# 1-GPU NCCL torchrun training on the tiny preset: 4 steps with a checkpoint every 2, then the same command
# with --max_steps 8 must resume at step 4 and finish at step 8. Prints PASS or FAIL lines; exit 1 on failure.
# DEVICE=cpu runs the same check over gloo (models/core/distributed.py: NCCL on GPUs, gloo on the CPU), as the suite's
# dry run does.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$PY" - "$work" <<'PYEOF'
import sys
from models.data.synthetic import make_synthetic_dataset
from models.networks.tiny_components import save_tiny_encoders

work = sys.argv[1]
save_tiny_encoders(f"{work}/encoders")
make_synthetic_dataset(f"{work}/videos", n_train=4, n_test=0, frames=12)
PYEOF
"$PY" project_latent_space.py --dataset "$work/videos/train" --output_dir "$work/latents" --preset tiny \
  --vae "$work/encoders/vae" --device "${DEVICE:-cuda}" --no_progress

train() {
  "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 train.py --preset tiny --dataset_vae "$work/latents" \
    --vae "$work/encoders/vae" --clip "$work/encoders/clip" --output_dir "$work/checkpoint" --log_dir "$work/logs" \
    --sample_dir "$work/samples" --device "${DEVICE:-cuda}" --batch_size 2 --checkpoint_every 2 --sample_every 0 --keep_last 0 --num_workers 0 --no-progress "$@"
}
train --max_steps 4 2>&1 | tee "$work/first.log"
train --max_steps 8 2>&1 | tee "$work/second.log"

"$PY" - "$work" "${DEVICE:-cuda}" <<'PYEOF'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
backend = "nccl" if sys.argv[2].startswith("cuda") else "gloo"
summary = json.loads((work / "checkpoint" / "train_summary.json").read_text())
first, second = ((work / name).read_text() for name in ("first.log", "second.log"))
checks = {
    f"DDP over a process group ({backend})": f"({backend})" in first,
    "the second run resumed from the first run's step-4 checkpoint": "resuming from" in second and "at step 4" in second,
    f"finished at step {summary.get('step')} (expected 8), last loss {summary.get('loss')}": summary.get("step") == 8,
    "checkpoints step 2, 4, 6, 8 written": all((work / "checkpoint" / f"step_{s:07d}.pth").is_file() for s in (2, 4, 6, 8)),
}
for name, passed in checks.items():
    print(f"{'PASS' if passed else 'FAIL'}: {name}")
ok = all(checks.values())
sys.exit(0 if ok else 1)
PYEOF
