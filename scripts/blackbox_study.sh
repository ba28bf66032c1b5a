#!/usr/bin/env bash
# Black-box NMTune end to end: serve all-MiniLM-L6-v2 as an OpenAI-compatible embeddings API on
# 127.0.0.1:8765, run the `real-blackbox` study against it (features only through the API),
# and stop the server however the study ends.
#
#   scripts/blackbox_study.sh [OUT_DIR] [extra `nmtune study` options, e.g. --quiet]
#
# OUT_DIR defaults to nmtune-results/real-blackbox; the server's log goes to OUT_DIR/server.log.
# With NMTUNE_API_KEY set, the server requires that key and the study sends it (as
# OPENAI_API_KEY); the key never appears on a command line.
# Killed and started again, the study resumes from its cached cells and features.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-nmtune-results/real-blackbox}
shift || true
HOST=127.0.0.1
PORT=8765   # configs/real-blackbox.yaml points at http://127.0.0.1:8765/v1
MODELS_URL="http://$HOST:$PORT/v1/models"

if [ -x .venv/bin/nmtune ]; then
  NMTUNE=.venv/bin/nmtune
  PYTHON=.venv/bin/python
elif command -v nmtune >/dev/null; then
  NMTUNE=nmtune
  PYTHON=python3
else
  echo "blackbox_study.sh: no nmtune (run scripts/setup.sh, or put nmtune on PATH)" >&2
  exit 1
fi

answers() {  # does an embeddings API answer at $MODELS_URL (with our key, if any)?
  "$PYTHON" -c '
import os, sys, urllib.request
key = os.environ.get("NMTUNE_API_KEY")
headers = {"Authorization": f"Bearer {key}"} if key else {}
urllib.request.urlopen(urllib.request.Request(sys.argv[1], headers=headers), timeout=2)' \
    "$MODELS_URL" 2>/dev/null
}

port_in_use() {
  "$PYTHON" -c 'import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1)' \
    "$HOST" "$PORT" 2>/dev/null
}

if port_in_use; then
  echo "blackbox_study.sh: something already listens on $HOST:$PORT; stop it first" >&2
  exit 1
fi

mkdir -p "$OUT"
"$NMTUNE" serve-embeddings --backbone minilm --backbone-arg max_seq_length=128 \
  --host "$HOST" --port "$PORT" >"$OUT/server.log" 2>&1 &
SERVER=$!

stop_server() {
  if kill -0 "$SERVER" 2>/dev/null; then
    kill -TERM "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
  fi
}
trap stop_server EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "starting the embeddings server (log: $OUT/server.log) ..."
for _ in $(seq 240); do
  if ! kill -0 "$SERVER" 2>/dev/null; then
    echo "blackbox_study.sh: the server exited; its log:" >&2
    cat "$OUT/server.log" >&2
    exit 1
  fi
  answers && break
  sleep 0.5
done
answers || { echo "blackbox_study.sh: no answer from $MODELS_URL after 120 s" >&2; exit 1; }
grep -m1 '^serving' "$OUT/server.log" || true

if [ -n "${NMTUNE_API_KEY:-}" ]; then
  export OPENAI_API_KEY="$NMTUNE_API_KEY"
fi
"$NMTUNE" study real-blackbox --out "$OUT" "$@"
