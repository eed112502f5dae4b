#!/usr/bin/env bash
# One GPU session for a 128x128 DDPM: NETWORK=paper (default), the reference network, 18.04 M parameters, or
# NETWORK=demo128, the demo network at 128x128 (1.51 M). Train it (bundles/ddpm/train.json + train_paper.json or
# train_128.json) for T_TRAIN seconds, store its EMA weights as int8
# (python -m monai_diffad.quantization), check the int8 copy against the float one by partial-noise reconstruction,
# then evaluate PAPER_METHODS on the 128x128 development set with the int8 weights (what ships), through the
# inference_paper.json (inference_128.json) overlay, in bf16 autocast. Each evaluation also measures the methods' label thresholds at 5 %
# healthy FPR (results.json; python -m monai_diffad.calibration --from-results writes one into a bundle).
# INIT=file continues from earlier exported weights (int8 or float) with a fresh optimiser (train.json init_weights);
# RESUME=checkpoint_*.pt resumes a run exactly (optimiser included), e.g. the demo128 run trained on the CPU.
# With DEMO_METHODS=thor,ddpm,autoddpm, the demo network's candidate weights (DEMO_CANDIDATE: a weights file, or a
# training checkpoint whose EMA is taken) are evaluated against the shipped DEMO_SHIPPED at 64x64 while the
# paper network trains (Simplex: DEMO_METHODS=anoddpm,thor_simplex and model_simplex.pt files).
# The weights (int8 and float16, split into 15 MB parts) go to $OUT as soon as training ends, so a session that runs
# out of time still brings them back; logs, thresholds and reports follow.
#
#   OUT=outputs/gpu_paper bash scripts/gpu/paper.sh                   # on a CUDA machine, from the repository root
#   INIT=outputs/paper_int8/model_paper_int8.pt OUT=... bash scripts/gpu/paper.sh   # carry outputs/paper_int8 too
#   SMOKE=1 DEVICE=cpu OUT=/tmp/smoke bash scripts/gpu/paper.sh       # the same steps, tiny, on CPU
#   NETWORK=demo128 RESUME="runs/ddpm_128/checkpoints/checkpoint_iteration=N.pt" OUT=... bash scripts/gpu/paper.sh  # carry it
#
# Needs data_cache/{train_slices_128,dev_128,dev_64}.npz (python -m monai_diffad.data build --what all),
# and the wheels of session.sh in .whl/ on a bare device image.
set -u
NETWORK=${NETWORK:-paper}
case $NETWORK in  # the monai_diffad.networks.DDPM_NETWORKS entry: overlays' suffix, weights file stem
    paper) SUFFIX=paper; STEM=model_paper ;;
    demo128) SUFFIX=128; STEM=model_128 ;;
    *) echo "NETWORK must be paper or demo128, got $NETWORK" >&2; exit 2 ;;
esac
OUT=${OUT:-outputs/gpu_$NETWORK}
SMOKE=${SMOKE:-0}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
T_TRAIN=${T_TRAIN:-$([ "$SMOKE" = 1 ] && echo 20 || echo 300)}  # seconds of training
PAPER_METHODS=${PAPER_METHODS:-thor}  # evaluated at 128x128 (estimated 1-2 minutes each on an H200, not measured yet)
DEMO_METHODS=${DEMO_METHODS:-}  # e.g. thor,ddpm,autoddpm: benchmark the demo candidate meanwhile
DEMO_SHIPPED=${DEMO_SHIPPED:-bundles/ddpm/models/model.pt}  # model_simplex.pt for anoddpm,thor_simplex
DEMO_CANDIDATE=${DEMO_CANDIDATE:-}  # weights file, or a checkpoint_*.pt (its "ema" entry); needed with DEMO_METHODS
CHECK_FLOAT=${CHECK_FLOAT:-0}  # 1: also check the float weights (the int8 copy matched them to 0.001 SSIM)
INIT=${INIT:-}
RESUME=${RESUME:-}
if [ -n "$DEMO_METHODS" ] && [ -z "$DEMO_CANDIDATE" ]; then echo "DEMO_METHODS needs DEMO_CANDIDATE" >&2; exit 2; fi
W=${WORK:-outputs/gpu_work}
mkdir -p "$W"
source "$(dirname "$0")/env.sh"
echo '{"precision": "bf16"}' > "$W/bf16.json"
PAPER=(--overlay bundles/ddpm/inference_$SUFFIX.json --overlay "$W/bf16.json")
N=$W/$NETWORK  # the training run's output_dir
if [ -n "$RESUME" ]; then mkdir -p "$N/checkpoints" && cp "$RESUME" "$N/checkpoints/"; fi
DEMO=()

if [ "$SMOKE" = 1 ]; then
    TRAIN="--batch_size 2 --epoch_length 2 --val_interval 1 --train_loader#num_workers 0"
    LIMIT="--limit 4"; EVAL_BATCH=2; TIMEOUT=900; LEVELS="3"; RECON_NUM=2
    # short schedules as overlays (each applies where it fits): 3 noise steps for all, THOR's harmonization at 2
    echo '{"noise_level": 3}' > "$W/smoke_steps.json"
    echo '{"harmonization_steps": [2], "record_interval": 1}' > "$W/smoke_thor.json"
    echo '{"resample_level": 2, "resample_passes": 1}' > "$W/smoke_autoddpm.json"
    for f in steps thor autoddpm; do PAPER+=(--overlay "$W/smoke_$f.json"); DEMO+=(--overlay "$W/smoke_$f.json"); done
else
    TRAIN="--val_interval 200 --train_loader#num_workers 12 --train_loader#persistent_workers True"
    LIMIT=""; EVAL_BATCH=100; TIMEOUT=120; LEVELS="200 350"; RECON_NUM=8
fi
thresholds() {  # the label thresholds a benchmark measured (calibration --from-results stores them in a bundle)
    $PY -c "import json, sys; [print('threshold at 5% healthy FPR:', m['name'], m['metrics'].get('calibrated_threshold'))
        for m in json.load(open(sys.argv[1]))['methods'] if m['status'] == 'ok']" "$1" 2>/dev/null
}
weights_overlay() {  # $1 = weights file, $2 = overlay to write; prints the overlay's path
    echo "{\"checkpoint\": \"$(cd "$(dirname "$1")" && pwd)/$(basename "$1")\"}" > "$2" && echo "$2"
}

# ---------------------------------------------------------------- 1. training (background)
log "training the $NETWORK network for ${T_TRAIN}s"
$PY -m monai.bundle run --config_file "['bundles/ddpm/train.json','bundles/ddpm/train_$SUFFIX.json']" --device "$DEVICE" \
    --output_dir "$N" --model_file "$N/$STEM.pt" --max_epochs 1000000 \
    --time_limit_s "$T_TRAIN" --checkpoint_interval 100000 --export_interval_s 120 $TRAIN \
    ${INIT:+--init_weights "$INIT"} > "$W/train_$NETWORK.log" 2>&1 &
train_pid=$!

# ---------------------------------------------------------------- 2. demo candidate vs shipped, 64x64 (meanwhile)
if [ -n "$DEMO_METHODS" ]; then
    candidate=$DEMO_CANDIDATE
    if [[ "$(basename "$candidate")" == checkpoint_* ]]; then  # a training checkpoint: its EMA weights
        mkdir -p "$W/candidate" && candidate=$W/candidate/model.pt
        $PY -c "import sys, torch; torch.save(torch.load(sys.argv[1], weights_only=True)['ema'], sys.argv[2])" \
            "$DEMO_CANDIDATE" "$candidate"
    fi
    log "demo candidate: $candidate (from $DEMO_CANDIDATE) against $DEMO_SHIPPED"
    for tag in shipped candidate; do
        weights=$DEMO_SHIPPED; [ $tag = candidate ] && weights=$candidate
        overlay=$(weights_overlay "$weights" "$W/demo_$tag.json")
        timeout $TIMEOUT $PY -m monai_diffad.evaluate --methods "$DEMO_METHODS" --data data_cache/dev_64.npz \
            "${DEMO[@]}" --overlay "$overlay" --seed 0 --device "$DEVICE" --batch-size $EVAL_BATCH --no-progress \
            $LIMIT --out "$W/demo_$tag" --override all.max_batch_size=$EVAL_BATCH > "$W/demo_$tag.log" 2>&1
        log "demo $tag evaluate exit $?"
        grep -h "^| " "$W/demo_$tag/results.md" 2>/dev/null | head -8
        thresholds "$W/demo_$tag/results.json"
    done
fi

wait $train_pid
log "training exit $?"
tail -n 3 "$N/logs/val_loss.csv" 2>/dev/null | sed "s/^/val: /"
tail -n 1 "$N/logs/train_loss.csv" 2>/dev/null | sed "s/^/train: /"
grep -m 3 -i "error\|Traceback" "$W/train_$NETWORK.log"
if [ ! -f "$N/$STEM.pt" ]; then log "no weights: stopping"; tar -czf "$OUT/work.tgz" -C "$W" .; exit 1; fi

# ---------------------------------------------------------------- 3. int8 copy (what ships), back first, and its fidelity
$PY -m monai_diffad.quantization "$N/$STEM.pt" "$N/${STEM}_int8.pt"
split -b 15M "$N/${STEM}_int8.pt" "$OUT/${STEM}_int8.pt.part-"  # rejoin: cat parts > file
$PY -c "import sys, torch; s = torch.load(sys.argv[1], weights_only=True); torch.save({k: v.half() for k, v in s.items()}, sys.argv[2])" \
    "$N/$STEM.pt" "$N/${STEM}_fp16.pt"
split -b 15M "$N/${STEM}_fp16.pt" "$OUT/${STEM}_fp16.pt.part-"
int8=$($PY -c "import sys; from monai_diffad.quantization import materialize_int8; print(materialize_int8(*sys.argv[1:]))" \
    "$N/${STEM}_int8.pt" "$N")
for tag in $([ "$CHECK_FLOAT" = 1 ] && echo float) int8; do
    weights=$N/$STEM.pt; [ $tag = int8 ] && weights=$int8
    timeout $TIMEOUT $PY -m monai_diffad.training.check_reconstruction --weights "$weights" --network $NETWORK \
        --dev-npz data_cache/dev_128.npz --levels $LEVELS --num $RECON_NUM --device "$DEVICE" \
        --png "$W/reconstruction_${NETWORK}_$tag.png" > "$W/reconstruction_${NETWORK}_$tag.json" 2>"$W/reconstruction_${NETWORK}_$tag.log"
    log "reconstruction $tag exit $?"; tr -d '\n ' < "$W/reconstruction_${NETWORK}_$tag.json"; echo
done
PAPER+=(--overlay "$(weights_overlay "$int8" "$W/${NETWORK}_weights.json")")

# ---------------------------------------------------------------- 4. the evaluation at 128x128 (and its thresholds)
for method in ${PAPER_METHODS//,/ }; do
    timeout $TIMEOUT $PY -m monai_diffad.evaluate --methods $method --data data_cache/dev_128.npz "${PAPER[@]}" \
        --seed 0 --device "$DEVICE" --batch-size $EVAL_BATCH --no-progress $LIMIT --out "$W/${NETWORK}_$method" \
        --override all.max_batch_size=$EVAL_BATCH > "$W/${NETWORK}_$method.log" 2>&1
    log "$NETWORK evaluate $method exit $?"
    grep -h "^| " "$W/${NETWORK}_$method/results.md" 2>/dev/null | head -4
    thresholds "$W/${NETWORK}_$method/results.json"
done

# ---------------------------------------------------------------- 5. logs and reports
tar -czf "$OUT/work.tgz" -C "$W" --exclude='*.pt' .
log "done"
