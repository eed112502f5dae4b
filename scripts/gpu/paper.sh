#!/usr/bin/env bash
# One GPU session for the reference (paper-size) DDPM, 18.04 M parameters at 128x128: train it
# (bundles/ddpm/train.json + train_paper.json) for T_TRAIN seconds, calibrate THOR's label threshold with it and
# evaluate THOR and DDPM (METHODS) on the 128x128 development set through the inference_paper.json overlay.
# The weights (split into 15 MB parts), logs, threshold and reports land in $OUT.
#
#   OUT=outputs/gpu_paper bash scripts/gpu/paper.sh                   # on a CUDA machine, from the repository root
#   SMOKE=1 DEVICE=cpu OUT=/tmp/smoke bash scripts/gpu/paper.sh       # the same steps, tiny, on CPU
#
# Needs data_cache/train_slices_128.npz and data_cache/dev_128.npz (python -m monai_diffad.data build --what all),
# and the wheels of session.sh in .whl/ on a bare device image.
set -u
OUT=${OUT:-outputs/gpu_paper}
SMOKE=${SMOKE:-0}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
T_TRAIN=${T_TRAIN:-$([ "$SMOKE" = 1 ] && echo 20 || echo 300)}  # seconds of training
METHODS=${METHODS:-thor,ddpm}  # add autoddpm where the session has 3 more minutes
W=${WORK:-outputs/gpu_work}
mkdir -p "$W"
source "$(dirname "$0")/env.sh"
OVERLAYS=(--overlay bundles/ddpm/inference_paper.json)

if [ "$SMOKE" = 1 ]; then
    TRAIN="--batch_size 2 --epoch_length 2 --val_interval 1 --train_loader#num_workers 0"
    LIMIT="--limit 4"; CAL_LIMIT="--limit 2"; EVAL_BATCH=2; CAL_TIMEOUT=900; EVAL_TIMEOUT=900
    # short schedules as overlays (each applies where it fits): 3 noise steps for all, THOR's harmonization at 2
    echo '{"noise_level": 3}' > "$W/smoke_steps.json"
    echo '{"harmonization_steps": [2], "record_interval": 1}' > "$W/smoke_thor.json"
    OVERLAYS+=(--overlay "$W/smoke_steps.json" --overlay "$W/smoke_thor.json")
else
    TRAIN="--val_interval 200 --train_loader#num_workers 12 --train_loader#persistent_workers True"
    LIMIT=""; CAL_LIMIT=""; EVAL_BATCH=100; CAL_TIMEOUT=150; EVAL_TIMEOUT=270
fi

# ---------------------------------------------------------------- 1. training
log "training the paper-size network for ${T_TRAIN}s"
$PY -m monai.bundle run --config_file "['bundles/ddpm/train.json','bundles/ddpm/train_paper.json']" --device "$DEVICE" \
    --output_dir "$W/paper" --model_file "$W/paper/model_paper.pt" --max_epochs 1000000 \
    --time_limit_s "$T_TRAIN" --checkpoint_interval 100000 --export_interval_s 120 $TRAIN > "$W/train_paper.log" 2>&1
log "training exit $?"
tail -n 3 "$W/paper/logs/val_loss.csv" 2>/dev/null | sed "s/^/val: /"
grep -m 3 -i "error\|Traceback" "$W/train_paper.log"
cp "$W/train_paper.log" "$W"/paper/logs/*.csv "$OUT/" 2>/dev/null
if [ ! -f "$W/paper/model_paper.pt" ]; then log "no weights: stopping"; exit 1; fi
split -b 15M "$W/paper/model_paper.pt" "$OUT/model_paper.pt.part-"  # rejoin: cat model_paper.pt.part-* > model_paper.pt
# the new weights for what follows, through an overlay (the tree's bundles/ddpm/models stays as it is)
echo "{\"checkpoint\": \"$(cd "$W/paper" && pwd)/model_paper.pt\"}" > "$W/paper_weights.json"
OVERLAYS+=(--overlay "$W/paper_weights.json")

# ---------------------------------------------------------------- 2. THOR's threshold (5 % healthy-pixel FPR)
log "calibrating"
timeout $CAL_TIMEOUT $PY -m monai_diffad.calibration --bundle thor --data data_cache/dev_128.npz "${OVERLAYS[@]}" \
    --device "$DEVICE" $CAL_LIMIT > "$OUT/calibration_thor.log" 2>&1
log "calibration exit $?"
grep -h '"threshold"' "$OUT/calibration_thor.log"

# ---------------------------------------------------------------- 3. evaluation at 128x128
log "evaluating"
timeout $EVAL_TIMEOUT $PY -m monai_diffad.evaluate --methods "$METHODS" --data data_cache/dev_128.npz "${OVERLAYS[@]}" \
    --seed 0 --device "$DEVICE" --batch-size $EVAL_BATCH --no-progress $LIMIT --out "$W/results_paper" \
    --override all.max_batch_size=$EVAL_BATCH > "$W/evaluate_paper.log" 2>&1
log "evaluate exit $?"
head -30 "$W/results_paper/results.md" 2>/dev/null
tar -czf "$OUT/results_paper.tgz" -C "$W" results_paper evaluate_paper.log 2>/dev/null
log "done"
