#!/usr/bin/env bash
# `trainguard run` on trainers that know nothing of trainguard.
#
#   bash examples/wrap_any_trainer.sh            # both demos, in ./runs/wrap-*
#
# 1. A script that only prints JSON metric lines (no trainguard import, no events file): its
#    output is passed through unchanged and parsed; when the loss turns NaN, trainguard writes
#    the control file and, since this trainer cannot be reading it, sends SIGTERM to its process
#    group at once. Exit code 3 = trainguard stopped it.
# 2. The minimal PyTorch loop, which reads the control file through EventWriter (it finds the
#    run directory in $TRAINGUARD_RUN_DIR, exported by `trainguard run`): it saves and stops by
#    itself at the next step, so no signal is needed.
#
# Each run leaves RUN_DIR/alerts.jsonl and RUN_DIR/postmortem.json (how it ended, last step and
# metrics, the stop and whether it was obeyed, the checkpoint to resume from, the last output).
set -u
PY=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
STAMP=$(date +%Y%m%d-%H%M%S)

echo "== 1. a JSON-printing trainer that diverges at step 8 =="
"$PY" -m trainguard run --run-dir "runs/wrap-json-$STAMP" -- "$PY" -c '
import json, time
for step in range(1, 200):
    loss = float("nan") if step >= 8 else 1.0 / step
    print(json.dumps({"step": step, "metrics": {"loss": loss, "grad_norm": 0.5}}))
    time.sleep(0.1)
'
echo "exit code: $? (3 = stopped by trainguard)"
"$PY" -c 'import json,sys; p=json.load(open(sys.argv[1])); print("postmortem:", p["status"], p["exit"]["description"], "| obeyed:", p["stop"]["obeyed"])' "runs/wrap-json-$STAMP/postmortem.json"

echo
echo "== 2. the minimal PyTorch loop, blown up at step 10, obeying the control file =="
RUN="runs/wrap-loop-$STAMP"
"$PY" -m trainguard run --run-dir "$RUN" -- \
    "$PY" "$HERE/minimal_streaming_loop.py" --run-dir "$RUN" --steps 60 --blowup-at 10
echo "exit code: $? (3 = stopped by trainguard)"
"$PY" -c 'import json,sys; p=json.load(open(sys.argv[1])); print("postmortem:", p["status"], "last step", p["last_step"], "| stop:", p["stop"]["outcome"])' "$RUN/postmortem.json"
