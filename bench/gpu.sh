#!/usr/bin/env bash
# GPU ingest figures (issue 18), one JSON line per run, for RESULTS.md. On a CUDA machine:
#
#   bash bench/gpu.sh                 # clip-vit-b16 and biomedclip, fp16 and bf16, random weights
#   N=512 DEVICE=cpu bash bench/gpu.sh   # the same script on the CPU, to try it anywhere
#
# Each run of bench/ingest.py embeds the same N synthetic 512x512 CT DICOMs from a local folder end
# to end (read, decode, preprocess, embed, upsert into the embedded store) and, in the same process,
# encoder-only on the already-preprocessed batch. The decode pool is sized to the machine's cores
# (DECODE_WORKERS) so that decoding keeps the GPU fed, and batches are large (BATCH).
# Targets on an H100/H200: encoder-only >= 5,000 images/s, end to end >= 2,000 images/s; the last
# line says which runs missed them and the exit status is 1 if any did.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
N=${N:-4096}
BATCH=${BATCH:-256}
DECODE_WORKERS=${DECODE_WORKERS:-$(nproc)}
ENCODER_ONLY_TARGET=${ENCODER_ONLY_TARGET:-5000}
END_TO_END_TARGET=${END_TO_END_TARGET:-2000}

if [ "$DEVICE" = cuda ]; then
  "$PY" - <<'PYCHECK' || { echo '{"bench": "gpu", "error": "no CUDA device visible to torch"}'; exit 2; }
import sys, torch
print(f'{{"bench": "gpu-device", "device": "{torch.cuda.get_device_name(0)}", "torch": "{torch.__version__}"}}')
sys.exit(0 if torch.cuda.is_available() else 1)
PYCHECK
fi

lines=$(mktemp)
trap 'rm -f "$lines"' EXIT
for encoder in clip-vit-b16 biomedclip; do
  for dtype in float16 bfloat16; do
    "$PY" bench/ingest.py --n "$N" --encoder "$encoder" --weights random --source local \
      --device "$DEVICE" --dtype "$dtype" --batch-size "$BATCH" --workers "$DECODE_WORKERS" --no-check \
      2>/dev/null | grep '"bench": "ingest"' | tee -a "$lines"
  done
done

"$PY" - "$lines" "$ENCODER_ONLY_TARGET" "$END_TO_END_TARGET" <<'PYCHECK'
import json, sys
path, encoder_only_target, end_to_end_target = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
runs = [json.loads(line) for line in open(path) if line.strip()]
missed = [
    f"{r['encoder']} {r['dtype']}: encoder-only {r['encoder_only_images_per_s']}, end to end {r['images_per_s']}"
    for r in runs
    if r["encoder_only_images_per_s"] < encoder_only_target or r["images_per_s"] < end_to_end_target
]
print(json.dumps({"bench": "gpu-check", "runs": len(runs), "missed": missed, "ok": bool(runs) and not missed}))
sys.exit(0 if runs and not missed else 1)
PYCHECK
