#!/usr/bin/env bash
# WN18RR RotatE, MED with 64 sub-models, on one CUDA GPU, in one bounded call (the device tool's lease):
#   1. smoke: the CUDA path end to end on Kinships (train, validate, test);
#   2. MED at lr 0.005 with linear decay over 15 and 30 epochs, full filtered validation every 5 epochs
#      (docs/choices.md, "The learning rate and the schedule on WN18RR": which schedule length is best);
#   3. the paper's budget (configs/med-rotate-wn18rr.yaml with up to 3000 epochs at lr 0.001 decayed linearly,
#      early stopping on the full validation, patience 5), validating every 10 epochs, for as long as PAPER_CAP allows;
#      if the cap cut it off, then the kept model's test metrics at 10, 20, ..., 640.
# Results: $OUT/log.txt (everything printed) and $OUT/runs.tar.gz (each run's config, metrics.jsonl,
# results.json; no weights), rewritten after every stage so a cut-off call still returns what finished.
#
#   OUT=runs/gpu PAPER_CAP=240 bash benchmarks/gpu_wn18rr.sh
set -u
OUT=${OUT:-runs/gpu}
PAPER_CAP=${PAPER_CAP:-240}   # seconds of training for stage 3
SCHEDULE_CAP=${SCHEDULE_CAP:-150}   # seconds at most for each run of stage 2
DEVICE=${DEVICE:-cuda}
W=${WORK:-/tmp/medkge-gpu}
mkdir -p "$OUT" "$W"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
COMMON=(--set "train.device=$DEVICE" --set train.checkpoint_every=1000 --quiet)

pack() {  # the runs so far, without weights or vocabularies
    tar czf "$OUT/runs.tar.gz" -C "$W" --exclude='*.safetensors' --exclude='*.tsv' --exclude=checkpoints . 2>/dev/null
}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
    $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
    echo "== 1. smoke (kinships, 3 epochs)"
    $PY -m medkge train --dataset kinships --model rotate --dims 10,20,40 --epochs 3 --out "$W/smoke" "${COMMON[@]}" || exit 1
    pack
    for E in 15 30; do
        echo "== 2. MED, ${E}-epoch schedule at lr 0.005, full validation every 5 epochs"
        start=$(date +%s)
        timeout "$SCHEDULE_CAP" $PY -m medkge train --dataset wn18rr --model rotate --dims 10:640:10 --gamma 6 \
            --epochs "$E" --lr 0.005 --set loss.alpha=0.5 --eval-every 5 --patience 0 --out "$W/schedule-$E" "${COMMON[@]}"
        echo "rc $? after $(($(date +%s) - start)) s"
        pack
    done
    echo "== 3. the paper's budget for ${PAPER_CAP} s (3000 epochs at lr 0.001, validation every 10 epochs)"
    start=$(date +%s)
    timeout "$PAPER_CAP" $PY -m medkge train configs/med-rotate-wn18rr.yaml --epochs 3000 --lr 0.001 \
        --set eval.every=10 --set eval.patience=5 \
        --out "$W/paper" "${COMMON[@]}"
    echo "rc $? after $(($(date +%s) - start)) s"
    pack
    if [ ! -f "$W/paper/results.json" ]; then  # cut off by the cap: training printed no test metrics
        echo "== 3b. test metrics of the paper-budget run's kept model"
        $PY -m medkge evaluate "$W/paper" --device "$DEVICE" --dims 10,20,40,80,160,320,640 --quiet
        pack
    fi
    date -u
} 2>&1 | tee "$OUT/log.txt"
