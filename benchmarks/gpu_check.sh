#!/usr/bin/env bash
# The GPU check in one command, for a machine that has PyTorch but not every dependency and no internet
# (docs/performance.md): installs the carried wheels (.whl/, if any) into /tmp/site, puts src/ on PYTHONPATH
# (no install of medbalance needed), checks the imports, then runs benchmarks/gpu_check.py.
#   bash benchmarks/gpu_check.sh OUT_DIR [more gpu_check.py options]
# Environment: DEVICE (auto), BUDGET_S (480), DATA (.gpudata/brain-tumor-mri-64/labels.csv when present).
# Run from anywhere; paths are relative to the repository root.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT_DIR=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR [gpu_check.py options]}
shift
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "error: installing the wheels in .whl/ failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 -c "import sys, torch, monai, pydantic, nibabel, sklearn, medbalance.training.engine, medbalance.cli.main
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      'monai', monai.__version__, 'pydantic', pydantic.VERSION, 'sklearn', sklearn.__version__)" \
  || { echo "error: a dependency does not import (see above)" >&2; exit 1; }
python3 -c "import imblearn" || echo "warning: imbalanced-learn does not import; the tests that use it will fail" >&2
DATA=${DATA:-.gpudata/brain-tumor-mri-64/labels.csv}
DATA_ARGS=()
[ -f "$DATA" ] && DATA_ARGS=(--data "$DATA")
exec python3 benchmarks/gpu_check.py --device "${DEVICE:-auto}" --out "$OUT_DIR" --budget-s "${BUDGET_S:-480}" \
  ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} "$@"
