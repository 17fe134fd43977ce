#!/usr/bin/env bash
# Run every benchmark script in benchmarks/ (each with its defaults), one after the other.
#
#   bash benchmarks/run_all.sh                  # logs in ${BENCH_LOG_DIR:-/tmp/medbalance_bench}
#   PYTHON=/tmp/venv/bin/python bash benchmarks/run_all.sh
#   bash benchmarks/run_all.sh bench_train bench_nn_search   # only these (names without .py)
#
# A failing script does not stop the others; the exit code is the number of failures.
# Benchmarks that need ../shared/datasets skip or fail clearly when it is absent.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
py="${PYTHON:-python}"
logdir="${BENCH_LOG_DIR:-/tmp/medbalance_bench}"
mkdir -p "$logdir"
export MEDBALANCE_QUIET=1

if [ "$#" -gt 0 ]; then
  scripts=()
  for n in "$@"; do scripts+=("$here/${n%.py}.py"); done
else
  scripts=("$here"/*.py)
fi

failed=0
summary=()
cd "$root" || exit 1
for s in "${scripts[@]}"; do
  name="$(basename "$s" .py)"
  if [ ! -f "$s" ]; then
    echo "== $name: no such script" >&2
    failed=$((failed + 1)); summary+=("$name: missing"); continue
  fi
  echo "== $name ($(date +%H:%M:%S)) -> $logdir/$name.log"
  start=$(date +%s)
  if "$py" "$s" >"$logdir/$name.log" 2>&1; then
    status="ok"
  else
    status="FAILED (exit $?)"; failed=$((failed + 1))
  fi
  secs=$(( $(date +%s) - start ))
  tail -n 25 "$logdir/$name.log"
  summary+=("$name: $status in ${secs}s")
done
echo
echo "== summary"
printf '%s\n' "${summary[@]}"
exit "$failed"
