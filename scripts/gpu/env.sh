# Sourced by the GPU session scripts: output folder and log, the wheels a bare device image lacks, the environment.
# Expects OUT (report folder) and PY (python) to be set; defines log().
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee -a "$OUT/log.txt") 2>&1
log() { echo "[$(date +%T) +${SECONDS}s] $*"; }

if [ -d .whl ] && ! $PY -c "import monai, ignite, nibabel, lpips, fire" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi -L 2>/dev/null
$PY -c "import torch, monai, numpy; print('torch', torch.__version__, 'monai', monai.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())"
