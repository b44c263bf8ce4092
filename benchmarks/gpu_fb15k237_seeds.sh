#!/usr/bin/env bash
# FB15k-237 RotatE on one CUDA GPU, in one bounded call (the device tool's lease): MED against base loss only
# with the settings of benchmarks/fb15k237_seeds.sh (30 epochs, lr 0.005 decayed linearly, sampled validation
# every 10 epochs, patience 3, full filtered test), over seeds 0 to 4, through benchmarks/quality.py.
# One run keeps the GPU busy only between Python's kernel launches, so six run side by side, each in its own
# process ("lane"): the first wave is MED and base loss only over seeds 0, 1, 2 (the 3-seed comparison), the
# second adds seeds 3 and 4 for as long as CAP allows. Weights are never checkpointed (train.checkpoint_every
# beyond the epochs): a run cut off by the cap is left out, not resumed.
# Results: $OUT/log.txt and $OUT/results.tar.gz (quality.py's results folder: tables, plots, run records),
# rewritten as each run finishes so a cut-off call still returns the records of the runs that finished.
#
#   OUT=runs/gpu CAP=470 bash benchmarks/gpu_fb15k237_seeds.sh
#   DATASET=kinships EPOCHS=2 DEVICE=cpu THREADS=1 bash benchmarks/gpu_fb15k237_seeds.sh   # a smoke test
set -u
OUT=${OUT:-runs/gpu}
CAP=${CAP:-470}   # seconds for all the lanes
DATASET=${DATASET:-fb15k237}
W=${WORK:-/tmp/medkge-gpu-fb-seeds}
mkdir -p "$OUT" "$W/lanes"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
Q=($PY benchmarks/quality.py --threads "${THREADS:-2}" --set eval.valid_protocol=sampled --datasets "$DATASET"
   --model rotate --dt-dims 10,20,40,160,640 --epochs "${EPOCHS:-30}" --eval-every 10 --patience 3
   --set "train.device=${DEVICE:-cuda}" --set train.checkpoint_every=1000 --out "$W/runs")
pack() {  # each lane's folder holds its finished runs' records; results/ the table once all are done
    tar czf "$OUT/.pack.$BASHPID" -C "$W" results lanes 2>/dev/null; mv "$OUT/.pack.$BASHPID" "$OUT/results.tar.gz"
}
table() { "${Q[@]}" --methods med --ablations med-base-loss-only --seeds 5 --results "$W/results" --records-only; }

lane() {  # "med:<seed>" or "base:<seed>" one after the other; each run's table goes to the lane's own folder
    for run in "$@"; do
        kind=${run%:*} seed=${run#*:}
        if [ "$kind" = med ]; then methods=med ablations=''; else methods='' ablations=med-base-loss-only; fi
        start=$(date +%s)
        "${Q[@]}" --methods "$methods" --ablations "$ablations" --seed "$seed" --seeds 1 \
            --results "$W/lanes/$kind$seed" || return
        echo "== $kind seed $seed done in $(($(date +%s) - start)) s, $(date -u)"
        pack
    done
}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
    $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
    pids=()
    for runs in "med:0 med:3" "med:1 med:4" "med:2" "base:0 base:3" "base:1 base:4" "base:2"; do
        # shellcheck disable=SC2086  # the runs are words
        lane $runs > "$W/lanes/${runs// /-}.log" 2>&1 &
        pids+=($!)
    done
    # the cap: the lanes and their runs (whose command lines hold $W/runs) stopped; no pipe held open
    ( sleep "$CAP"; pkill -f "$W/runs"; kill "${pids[@]}" ) > /dev/null 2>&1 &
    watchdog=$!
    wait "${pids[@]}"
    kill "$watchdog" 2>/dev/null
    pkill -f "$W/runs"
    cat "$W"/lanes/*.log
    table
    pack
    date -u
} 2>&1 | tee "$OUT/log.txt"
