#!/usr/bin/env bash
# One GPU session, end to end: train the demo DDPM with Gaussian and with Simplex noise and the DISYRE network side
# by side (the networks are small: three runs share one GPU), calibrate every bundle's threshold with the new weights,
# evaluate all methods on the whole development set (and the strided schedules), and benchmark the precision and
# torch.compile paths. Everything it makes lands in $OUT (weights, logs, reports, benchmark JSON).
#
#   OUT=outputs/gpu_session bash scripts/gpu/session.sh            # on a CUDA machine, from the repository root
#   SMOKE=1 DEVICE=cpu OUT=/tmp/smoke bash scripts/gpu/session.sh  # the same steps, tiny, on CPU
#
# Needs data_cache/train_slices_64.npz and data_cache/dev_64.npz (python -m monai_diffad.data build --what all).
# Wheels in .whl/ (monai, pytorch-ignite, nibabel, lpips, fire, termcolor) are installed first where the machine
# lacks them: python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl monai==1.6.1 ...
set -u
OUT=${OUT:-outputs/gpu_session}
SMOKE=${SMOKE:-0}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
T_TRAIN=${T_TRAIN:-200}
W=${WORK:-outputs/gpu_work}
mkdir -p "$W"
source "$(dirname "$0")/env.sh"

if [ "$SMOKE" = 1 ]; then
    BATCH=4; DBATCH=4; WORKERS=0; VAL=1; LIMIT="--limit 4"; CAL_LIMIT="--limit 2"; EPOCHLEN="--epoch_length 2"; BENCH="--noise-level 3 --batch 4 --repeats 1"
    EVAL_BATCH=4
else
    BATCH=64; DBATCH=32; WORKERS=5; VAL=50; LIMIT=""; CAL_LIMIT=""; EPOCHLEN=""; BENCH="--noise-level 100 --batch 64 --repeats 2"
    EVAL_BATCH=100
fi

# ---------------------------------------------------------------- 1. training, three runs in parallel
log "training for ${T_TRAIN}s each"
train_ddpm() {  # $1 = noise type
    $PY -m monai.bundle run --config_file bundles/ddpm/train.json --device "$DEVICE" --noise_type "$1" \
        --output_dir "$W/$1" --model_file "$W/$1/model.pt" --batch_size $BATCH $EPOCHLEN \
        --max_epochs 1000000 --time_limit_s "$T_TRAIN" --val_interval $VAL --checkpoint_interval 100000 \
        --export_interval_s 60 --num_threads 2 --train_loader#num_workers $WORKERS \
        --train_loader#persistent_workers "$([ $WORKERS -gt 0 ] && echo True || echo False)" > "$W/train_$1.log" 2>&1
    log "ddpm $1 training exit $?"
}
train_disyre() {
    $PY -m monai.bundle run --config_file bundles/disyre/train.json --device "$DEVICE" --output_dir "$W/disyre" \
        --model_dir "$W/disyre" --batch_size $DBATCH --max_epochs 1000000 --time_limit_s "$T_TRAIN" \
        --val_interval $((VAL / 5 + 1)) --checkpoint_interval 100000 --export_interval_s 60 --num_threads 2 \
        --train_loader#num_workers $WORKERS > "$W/train_disyre.log" 2>&1
    log "disyre training exit $?"
}
train_ddpm gaussian & p1=$!
train_ddpm simplex & p2=$!
train_disyre & p3=$!
wait $p1 $p2 $p3  # by pid: a bare wait would also wait for the log's tee
for run in gaussian simplex disyre; do
    tail -n 3 "$W/$run/logs/val_loss.csv" 2>/dev/null | sed "s/^/$run val: /"
    tail -n 1 "$W/$run/logs/train_loss.csv" 2>/dev/null | sed "s/^/$run train: /"
    grep -m 3 -i "error\|Traceback" "$W/train_$run.log" | sed "s/^/$run log: /"
done
tar -cf "$OUT/models.tar" -C "$W" --exclude='*/checkpoints' gaussian simplex disyre train_gaussian.log \
    train_simplex.log train_disyre.log 2>/dev/null
ckpt=$(ls -t "$W"/gaussian/checkpoints/*.pt 2>/dev/null | head -1)
[ -n "$ckpt" ] && split -b 15M "$ckpt" "$OUT/ckpt_gaussian.part-" && echo "resume checkpoint: $(basename "$ckpt")"

# the new weights replace the shipped ones for what follows (this machine's copy of the tree only)
[ -f "$W/gaussian/model.pt" ] && cp "$W/gaussian/model.pt" bundles/ddpm/models/model.pt
[ -f "$W/simplex/model.pt" ] && cp "$W/simplex/model.pt" bundles/ddpm/models/model_simplex.pt
[ -f "$W/disyre/model.pt" ] && cp "$W/disyre/model.pt" bundles/disyre/models/model.pt

# ---------------------------------------------------------------- 2. thresholds (5 % healthy-pixel FPR)
log "calibrating"
pids=()
for b in thor ddpm anoddpm autoddpm disyre; do
    timeout 120 $PY -m monai_diffad.calibration --bundle $b --data data_cache/dev_64.npz --fpr 0.05 $CAL_LIMIT \
        --device "$DEVICE" --write > "$W/calibration_$b.log" 2>&1 &
    pids+=($!)
done
wait "${pids[@]}"
grep -h '"threshold"' "$W"/calibration_*.log
tar -cf "$OUT/bundles.tar" bundles/*/inference.json bundles/*/metadata.json "$W"/calibration_*.log

# ---------------------------------------------------------------- 3. evaluation on the whole development set
log "evaluating"
EV="$PY -m monai_diffad.evaluate --data data_cache/dev_64.npz --seed 0 --device $DEVICE --batch-size $EVAL_BATCH --no-progress $LIMIT"
timeout 170 $EV --methods ddpm,autoddpm,thor,anoddpm,thor_simplex,disyre --out "$W/results" \
    --override all.max_batch_size=$EVAL_BATCH > "$W/evaluate.log" 2>&1
log "evaluate exit $?"
timeout 60 $EV --methods ddpm,autoddpm,thor --out "$W/results_stride_10" \
    --override all.max_batch_size=$EVAL_BATCH all.step_stride=10 > "$W/evaluate_stride.log" 2>&1
log "evaluate stride 10 exit $?"
cat "$W/results/results.md" 2>/dev/null | head -40
tar -czf "$OUT/results.tgz" -C "$W" results results_stride_10 evaluate.log evaluate_stride.log 2>/dev/null

# ---------------------------------------------------------------- 4. precision and compile benchmark
# each group repeats the fp32 baseline, so every ratio is measured within one process; later groups are skipped
# when the session's time (BUDGET_S) is nearly spent
BUDGET_S=${BUDGET_S:-560}
bench() {  # $1 = name, $2 = timeout, rest = bench_precision.py arguments
    local name=$1 limit=$2; shift 2
    if [ $((SECONDS + limit)) -gt "$BUDGET_S" ]; then log "skipping benchmark $name (time)"; return; fi
    log "benchmark $name"
    (cd benchmarks && timeout "$limit" $PY bench_precision.py --device "$DEVICE" $BENCH --json "$OUT/bench_$name.json" "$@")
}
bench demo_precision 50 --networks demo --checkpoint ../bundles/ddpm/models/model.pt \
    --variants fp32,bf16,fp16,bf16+channels_last
bench paper_precision 90 --networks paper --variants fp32,bf16,bf16+channels_last --repeats 1  # did not fit 50 s
bench demo_compile 110 --networks demo --checkpoint ../bundles/ddpm/models/model.pt \
    --variants fp32,fp32+compile,bf16+compile
log "done"
