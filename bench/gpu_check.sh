#!/usr/bin/env bash
# The GPU check (docs/benchmarks.md, "The GPU check"): on one GPU, in under 10 minutes, one JSON object on stdout:
#   learner   bench/learner.py: learner-only updates/s of the Nature CNN Double DQN at batch 32 and 256, K = 1, 8, 32
#             updates per call (scalar head, no layer norm);
#   probes    bench/probes.py: the plasticity probe set's wall time and peak GPU memory on one checkpoint, at the
#             GPU's probe sizes;
#   e2e       where dm-reverb imports: bench/e2e.py, a 2-minute real job (actors on the CPU cores, Reverb, the
#             learner on the GPU); otherwise a note that it was skipped and why.
# Each part's progress goes to stderr; a part that fails is recorded with its exit code and last line, and the
# others still run.
#
#   bash bench/gpu_check.sh > gpu_check.json
#   PYTHON=python3.12 bash bench/gpu_check.sh            # another interpreter (see docs/benchmarks.md)
#   LEARNER_FLAGS="--torso mlp --batch-sizes 32 --updates-per-calls 1 8 --min-duration-s 1" \
#     PROBES_FLAGS="--preset smoke" E2E_FLAGS="--total-env-steps 3000 --env-seconds 2 --learner-seconds 2" \
#     E2E_TRAIN_FLAGS="--preset smoke" bash bench/gpu_check.sh   # the script itself, quickly, on a CPU (3 minutes)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
LEARNER_FLAGS=${LEARNER_FLAGS:---heads scalar --layer-norms False --batch-sizes 32 256 --updates-per-calls 1 8 32 --min-duration-s 3}
PROBES_FLAGS=${PROBES_FLAGS:-}
E2E_FLAGS=${E2E_FLAGS:---total-env-steps 300000}
E2E_TRAIN_FLAGS=${E2E_TRAIN_FLAGS:---preset dqn_zoo --num-actors 12 --num-envs-per-actor 8 --replay.min-replay-size 20000 --log-every-s 5}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

part() {  # part NAME TIMEOUT_S COMMAND...: its JSON in $tmp/NAME.json, or what went wrong
  local name=$1 limit=$2
  shift 2
  echo "gpu_check: $name: $*" >&2
  local started=$SECONDS
  timeout "$limit" "$@" > "$tmp/$name.json" 2> "$tmp/$name.err"
  local code=$?
  echo "{\"exit_code\": $code, \"wall_s\": $((SECONDS - started))}" > "$tmp/$name.status"
  tail -n 3 "$tmp/$name.err" >&2
}

part learner 240 "$PYTHON" bench/learner.py $LEARNER_FLAGS
part probes 180 "$PYTHON" bench/probes.py $PROBES_FLAGS
if "$PYTHON" -c "import reverb" 2> "$tmp/reverb.err"; then
  # shellcheck disable=SC2086  # E2E_FLAGS is a list of words
  part e2e 240 "$PYTHON" bench/e2e.py $E2E_FLAGS "--train-flags=$E2E_TRAIN_FLAGS"  # one word, with the =
else
  echo "{\"skipped\": \"dm-reverb does not import here: $(tail -n 1 "$tmp/reverb.err" | tr -d '"\\')\"}" > "$tmp/e2e.json"
  echo '{"exit_code": null, "wall_s": 0}' > "$tmp/e2e.status"
fi

"$PYTHON" - "$tmp" <<'PY'
import json, os, platform, subprocess, sys

tmp = sys.argv[1]
result = {"machine": {"python": platform.python_version(), "cpu_count": os.cpu_count()}}
try:
  result["machine"]["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                            "--format=csv,noheader"], capture_output=True, text=True,
                                           timeout=20).stdout.strip() or None
except (OSError, subprocess.TimeoutExpired):
  result["machine"]["gpu"] = None
try:
  result["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
except OSError:
  result["commit"] = None
for name in ("learner", "probes", "e2e"):
  with open(os.path.join(tmp, f"{name}.status")) as handle:
    status = json.load(handle)
  try:
    with open(os.path.join(tmp, f"{name}.json")) as handle:
      status["result"] = json.load(handle)
  except (OSError, ValueError):
    status["result"] = None
    try:
      with open(os.path.join(tmp, f"{name}.err")) as handle:
        status["last_lines"] = handle.read().strip().splitlines()[-3:]
    except OSError:
      pass
  result[name] = status
print(json.dumps(result, indent=1))
PY
