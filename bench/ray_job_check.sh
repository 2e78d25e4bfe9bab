#!/usr/bin/env bash
# Scripted check (CI can run it): `ray job submit` of a small synthesis against a local `ray start --head`,
# with Ray's token authentication kept on.
#
#   bash bench/ray_job_check.sh [MODEL_DIR] [OUT_DIR]
#
# MODEL_DIR defaults to a 2-step tiny model trained here; OUT_DIR to a temporary folder. The head runs in
# a private temp dir with its own token file and free ports, so it neither touches ~/.ray nor meets another
# Ray cluster on this machine, and it is stopped by its own process id (never `ray stop`, which stops every
# Ray cluster on the machine). Prints "ray job submit: ok" on success.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ -x "$ROOT/.venv/bin/python" ] && [ -z "${VIRTUAL_ENV:-}" ]; then . "$ROOT/.venv/bin/activate"; fi
PYTHON="$(command -v python)"
WORK="$(mktemp -d /tmp/dakter-rayjob-XXXXXX)"  # short: Ray's socket paths must stay under 108 bytes
MODEL="${1:-}"
OUT="${2:-$WORK/shards}"
HEAD_PID=""
cleanup() {
  if [ -n "$HEAD_PID" ] && kill -0 "$HEAD_PID" 2>/dev/null; then
    kill -TERM "$HEAD_PID" 2>/dev/null || true  # `ray start --block` stops the processes it started
    for _ in $(seq 1 60); do kill -0 "$HEAD_PID" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ -z "$MODEL" ]; then
  MODEL="$WORK/model"
  "$PYTHON" "$ROOT/jobs/train_diffusion.py" --out "$MODEL" --max-steps 2 \
    "data.spec=synthetic:8?size=32&test=4" data.resolution=32 "diffusion.unet.block_out_channels=[8,16]" diffusion.batch_size=4 >"$WORK/train.log" 2>&1
fi

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
DASH=$(free_port); CLIENT=$(free_port); AGENT_HTTP=$(free_port); AGENT_GRPC=$(free_port); RUNTIME_ENV=$(free_port); METRICS=$(free_port)

# Token authentication: the head and every client read the same token. Ray's default file is
# ~/.ray/auth_token (`ray start` creates it when missing); here a private file stands in for it.
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$WORK/auth_token"
"$PYTHON" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$RAY_AUTH_TOKEN_PATH"
chmod 600 "$RAY_AUTH_TOKEN_PATH"

setsid ray start --head --block --port=0 --temp-dir="$WORK/ray" --num-cpus=2 --disable-usage-stats \
  --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASH" --ray-client-server-port="$CLIENT" \
  --dashboard-agent-listen-port="$AGENT_HTTP" --dashboard-agent-grpc-port="$AGENT_GRPC" \
  --runtime-env-agent-port="$RUNTIME_ENV" --metrics-export-port="$METRICS" >"$WORK/head.log" 2>&1 &
HEAD_PID=$!
ADDRESS="http://127.0.0.1:$DASH"
for _ in $(seq 1 240); do
  if ray job list --address "$ADDRESS" >/dev/null 2>&1; then break; fi
  kill -0 "$HEAD_PID" 2>/dev/null || { cat "$WORK/head.log"; echo "ray start --head failed"; exit 1; }
  sleep 1
done
ray job list --address "$ADDRESS" >/dev/null || { cat "$WORK/head.log"; echo "the head's job server never answered"; exit 1; }

# Authentication is on: a client without the token is turned away.
if env -u RAY_AUTH_MODE -u RAY_AUTH_TOKEN_PATH HOME="$WORK/no-home" ray job list --address "$ADDRESS" >"$WORK/noauth.log" 2>&1; then
  echo "a client without the token was let in: token authentication is off"; exit 1
fi
echo "ray job submit without the token is refused: ok ($(grep -o -i -m1 'missing authentication token\|unauthenticated\|401[^"]*' "$WORK/noauth.log" | head -1))"

ID="dakter-check-$$"
ray job submit --address "$ADDRESS" --submission-id "$ID" -- \
  "$PYTHON" "$ROOT/jobs/synthesize.py" --model "$MODEL" --n 8 --out "$OUT" --samples-per-shard 4 --batch-size 4 --actors 2 sampling.steps=3
# `ray job submit` exits 1 when the job fails; the status is checked once more through the SDK.
STATUS=$("$PYTHON" -c 'import sys; from ray.job_submission import JobSubmissionClient as C; print(C(sys.argv[1]).get_job_status(sys.argv[2]).value)' "$ADDRESS" "$ID")
[ "$STATUS" = "SUCCEEDED" ] || { echo "job $ID ended $STATUS"; exit 1; }
"$PYTHON" - "$OUT" <<'PY'
import json, sys
info = json.load(open(f"{sys.argv[1]}/dataset.json"))
assert info["status"] == "complete" and info["count"] == 8, info
PY
echo "ray job submit: ok (job $ID SUCCEEDED, 8 pairs in $OUT)"
