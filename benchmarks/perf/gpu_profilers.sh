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
#   stages  the torch_profiler stage with CUDA activities (after direct_inference, the overhead
#           baseline) and the ncu stage on the tiny model, through pytest, SAMPLES pages (3)
#           -> OUT_DIR/torch_operators.md, torch_metrics.json, kernels.md, kernels.csv, ncu_raw_decode.csv
#           (ONLY=torch or ONLY=ncu runs one of the two)
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
      --log-file "$OUT_DIR/probe_raw.csv" --export "$OUT_DIR/probe" --include dsocr@prefill/ --include dsocr@decode/ \
      -- "$PYTHON" -m pytest_dsocr.profilers.probe)
  printf '%q ' "${CMD[@]}" >"$OUT_DIR/probe_command.txt"; echo >>"$OUT_DIR/probe_command.txt"
  "${CMD[@]}" >"$OUT_DIR/probe_stdout.txt" 2>&1
  echo "probe ncu exit $?"
  if ! grep -q '^"ID"' "$OUT_DIR/probe_raw.csv" 2>/dev/null && [ -f "$OUT_DIR/probe.ncu-rep" ]; then
    "$NCU" --import "$OUT_DIR/probe.ncu-rep" --csv --page raw --print-units base >"$OUT_DIR/probe_raw_import.csv" 2>&1
  fi
  "$PYTHON" -m pytest_dsocr.profilers.ncu parse "$OUT_DIR/probe_raw.csv" 2>&1 | head -40
}

stages() {
  # Runs live under RUN_ROOT; the files worth keeping are copied flat into OUT_DIR.
  local runs=${RUN_ROOT:-/tmp/dsocr_gpu_profilers} samples=${SAMPLES:-3}
  rm -rf "$runs"; mkdir -p "$runs"
  if ! "$PYTHON" -c 'import importlib.metadata as m, sys; sys.exit(not any(e.name == "dsocr" for e in m.entry_points(group="pytest11")))'; then
    "$PYTHON" -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 \
      || echo "could not install pytest-dsocr (the plugin must be importable as an entry point)"
  fi
  local common=(-p no:cacheprovider -q --dsocr-set "dataset.sampling.num_samples_per_epoch=$samples")
  if [ "${ONLY:-}" != ncu ]; then
    "$PYTHON" -m pytest benchmarks -m "direct_inference or torch_profiler" --dsocr-profiler=torch \
        --dsocr-run-dir "$runs/torch" "${common[@]}" 2>&1 | tail -15
  fi
  if [ "${ONLY:-}" != torch ]; then
    "$PYTHON" -m pytest benchmarks -m ncu --dsocr-profiler=ncu --dsocr-run-dir "$runs/ncu" "${common[@]}" 2>&1 | tail -15
  fi
  cp "$runs/torch/torch_profiler/operators.md" "$OUT_DIR/torch_operators.md" 2>/dev/null
  cp "$runs/torch/torch_profiler/stage_operators.md" "$OUT_DIR/torch_stage_operators.md" 2>/dev/null
  cp "$runs/torch/metrics.json" "$OUT_DIR/torch_metrics.json" 2>/dev/null
  cp "$runs/ncu/ncu/kernels.md" "$runs/ncu/ncu/kernels.csv" "$OUT_DIR/" 2>/dev/null
  cp "$(ls "$runs"/ncu/ncu/raw/*.decode.csv 2>/dev/null | head -1)" "$OUT_DIR/ncu_raw_decode.csv" 2>/dev/null
  ls "$runs"/ncu/ncu/logs/*.log >/dev/null 2>&1 && tail -c 4000 "$(ls "$runs"/ncu/ncu/logs/*.log | head -1)" >"$OUT_DIR/ncu_child.log"
  for f in "$OUT_DIR/torch_operators.md" "$OUT_DIR/kernels.md"; do
    [ -f "$f" ] && { echo "== $f"; head -45 "$f"; }
  done
  "$PYTHON" - "$OUT_DIR/torch_metrics.json" <<'EOF2'
import json, sys
try:
    data = json.load(open(sys.argv[1]))
except OSError as exc:
    sys.exit(f"no metrics: {exc}")
overhead = data.get("profiler_overhead") or {}
print("profiler_overhead ratio", overhead.get("ratio"), "baseline", overhead.get("baseline"),
      "per_stage", overhead.get("per_stage"))
print("torch activities", (data.get("torch_profiler") or {}).get("activities"))
EOF2
}

case "$WHAT" in
  facts) facts ;;
  probe) probe ;;
  stages) stages ;;
  all) facts; probe; stages ;;
  *) echo "unknown step $WHAT (facts|probe|stages|all)" >&2; exit 2 ;;
esac
