#!/usr/bin/env bash
# Real profiler recordings on a GPU machine, in one command:
#
#   bash benchmarks/perf/gpu_profilers.sh OUT_DIR [facts|probe|stages|all]   (default: all)
#
#   facts   tool versions, `ncu --list-sets`, the metric names ncu knows for this GPU, and
#           `nsys` help texts when an nsys binary is found            -> OUT_DIR/facts.txt
#   probe   ncu on `python -m pytest_dsocr.profilers.probe` (a few kernels inside the
#           engine's NVTX ranges) with the ncu stage's own command builder; the raw CSV it
#           writes is the recorded parser fixture                       -> OUT_DIR/probe_raw.csv
#   stages  the torch_profiler stage with CUDA activities and the ncu stage on the tiny model,
#           through pytest                                              -> OUT_DIR/run/, OUT_DIR/ncu_raw.csv
#
# Needs a CUDA build of torch and ncu on PATH (or NCU=/path/to/ncu). A missing python
# package is installed from .whl/ when that folder holds wheels (see the device notes).
set -uo pipefail

OUT_DIR=${1:?usage: gpu_profilers.sh OUT_DIR [facts|probe|stages|all]}
WHAT=${2:-all}
PYTHON=${PYTHON:-python3}
NCU=${NCU:-$(command -v ncu || ls -d /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -1)}
NSYS=${NSYS:-$(command -v nsys || ls -d /opt/nvidia/nsight-compute/*/host/target-linux-x64/nsys 2>/dev/null | tail -1)}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1

if ls .whl/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

ENV_DUMP='import os; print(sorted((k, v) for k, v in os.environ.items() if any(s in k for s in ("NSYS", "INJECTION", "PRELOAD", "NV_", "QUADD", "NCU"))))'

facts() {
  {
    echo "## nvidia-smi"; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv 2>&1
    echo "## torch"; "$PYTHON" -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())' 2>&1
    echo "## ncu: $NCU"; "$NCU" --version 2>&1
    echo "## ncu --list-sets"; "$NCU" --list-sets 2>&1
    echo "## ncu --query-metrics (filtered)"
    "$NCU" --query-metrics 2>&1 | grep -E "^(gpu__time_duration|sm__throughput|gpu__compute_memory_throughput|dram__throughput|sm__warps_active|dram__bytes |sm__sass_thread_inst_executed_op_[fhd](add|mul|fma)_pred_on|sm__inst_executed_pipe_tensor|sm__ops_path_tensor|sm__pipe_tensor)" | cut -c1-160
    echo "## nsys: $NSYS"
    if [ -n "$NSYS" ]; then
      "$NSYS" --version 2>&1
      echo "## nsys stats --help-reports"; "$NSYS" stats --help-reports 2>&1 | head -80
      echo "## nsys profile --help (capture range)"; "$NSYS" profile --help 2>&1 | grep -A12 -E "capture-range(-end)?[ =]" | head -60
      echo "## environment of a process under nsys"
      "$NSYS" profile -t cuda,nvtx -o /tmp/dsocr_envprobe --force-overwrite=true "$PYTHON" -c "$ENV_DUMP" 2>&1 | head -20
    fi
    echo "## environment of a process under ncu"; "$NCU" "$PYTHON" -c "$ENV_DUMP" 2>&1 | head -20
  } >"$OUT_DIR/facts.txt" 2>&1
  echo "facts -> $OUT_DIR/facts.txt"
}

probe() {
  # The exact argv the ncu stage builds, around the probe instead of a pytest child.
  mapfile -t CMD < <("$PYTHON" -m pytest_dsocr.profilers.ncu command --ncu "$NCU" \
      --log-file "$OUT_DIR/probe_raw.csv" --export "$OUT_DIR/probe" -- "$PYTHON" -m pytest_dsocr.profilers.probe)
  printf '%q ' "${CMD[@]}" >"$OUT_DIR/probe_command.txt"; echo >>"$OUT_DIR/probe_command.txt"
  "${CMD[@]}" >"$OUT_DIR/probe_stdout.txt" 2>&1
  echo "probe ncu exit $?"
  if ! grep -q '^"ID"' "$OUT_DIR/probe_raw.csv" 2>/dev/null && [ -f "$OUT_DIR/probe.ncu-rep" ]; then
    "$NCU" --import "$OUT_DIR/probe.ncu-rep" --csv --page raw --print-units base >"$OUT_DIR/probe_raw_import.csv" 2>&1
  fi
  "$PYTHON" -m pytest_dsocr.profilers.ncu parse "$OUT_DIR/probe_raw.csv" 2>&1 | head -40
}

stages() {
  "$PYTHON" -m pytest benchmarks -m "direct_inference or torch_profiler" --dsocr-profiler=torch \
      --dsocr-run-dir "$OUT_DIR/run" -p no:cacheprovider -q 2>&1 | tail -25
  "$PYTHON" -m pytest benchmarks -m ncu --dsocr-profiler=ncu --dsocr-run-dir "$OUT_DIR/run_ncu" \
      -p no:cacheprovider -q 2>&1 | tail -25
  cp "$OUT_DIR"/run_ncu/ncu/raw/*.csv "$OUT_DIR/" 2>/dev/null
  for f in "$OUT_DIR"/run/torch_profiler/operators.md "$OUT_DIR"/run_ncu/ncu/kernels.md; do
    [ -f "$f" ] && { echo "== $f"; head -40 "$f"; }
  done
  "$PYTHON" - "$OUT_DIR/run/metrics.json" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1]))
print("profiler_overhead", json.dumps(data.get("profiler_overhead"), indent=1)[:1500])
EOF
}

case "$WHAT" in
  facts) facts ;;
  probe) probe ;;
  stages) stages ;;
  all) facts; probe; stages ;;
  *) echo "unknown step $WHAT (facts|probe|stages|all)" >&2; exit 2 ;;
esac
