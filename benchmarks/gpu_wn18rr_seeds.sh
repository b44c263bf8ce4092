#!/usr/bin/env bash
# WN18RR RotatE on one CUDA GPU, 15-epoch schedule at lr 0.005 (docs/choices.md, "The learning rate and the
# schedule on WN18RR"), full filtered validation every 5 epochs, patience 3, through benchmarks/quality.py:
#   1. MED and base loss only, seeds 0, 1, 2;  2. DT at 10, 40, 160, 640, seed 0;
#   3. MED without ML and without DLW, seeds 0, 1, 2, for as long as ABLATION_CAP allows.
# Results: $OUT/log.txt and $OUT/results.tar.gz (quality.py's results folder: tables, plots, run records).
#
#   OUT=runs/gpu ABLATION_CAP=200 bash benchmarks/gpu_wn18rr_seeds.sh
set -u
OUT=${OUT:-runs/gpu}
ABLATION_CAP=${ABLATION_CAP:-200}
W=${WORK:-/tmp/medkge-gpu-seeds}
mkdir -p "$OUT" "$W"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
Q=($PY benchmarks/quality.py --datasets wn18rr --epochs 15 --eval-every 5 --patience 3 --dt-dims 10,40,160,640
   --set train.device=${DEVICE:-cuda} --set eval.valid_protocol=full --out "$W/runs" --results "$W/results")
pack() { tar czf "$OUT/results.tar.gz" -C "$W" results 2>/dev/null; }
{
    date -u
    "${Q[@]}" --methods med --ablations med-base-loss-only --seeds 3; pack
    "${Q[@]}" --methods dt --ablations ''; pack
    timeout "$ABLATION_CAP" "${Q[@]}" --methods '' --ablations med-no-ml,med-no-dlw --seeds 3; pack
    date -u
} 2>&1 | tee "$OUT/log.txt"
