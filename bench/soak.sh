#!/usr/bin/env bash
# Crash soak: the load harness against a server that is killed with SIGKILL and restarted, ROUNDS
# times. Every acknowledged answer carries its audit_seq; afterwards the chain must verify and
# hold every acknowledged record (all requests go to one tenant, so one chain, no gaps allowed).
#
#   bench/soak.sh                 # ROUNDS=5, each a few seconds of ROTATE and GET_HANDLE load
# Only loopback traffic; the server is stopped by the PID this script started.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
ROUNDS=${ROUNDS:-5}
CONNS=${CONNS:-32}
PORT=${PORT:-18771}
URL=http://127.0.0.1:$PORT

for tool in wrk jq curl python3; do
  command -v "$tool" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null; }
done
(cd "$ROOT" && cargo build --release --locked -q -p selene-kms)
KMS_BIN=$ROOT/target/release/selene-kms
WORK=$(mktemp -d /tmp/selene-kms-soak.XXXXXX)
PID=""
cleanup() { [ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

start() {
  SELENE_KMS_LOG=warn "$KMS_BIN" serve --data-dir "$WORK/kms" --listen "127.0.0.1:$PORT" >> "$WORK/kms.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do curl -sf -o /dev/null "$URL/readyz" && return 0; sleep 0.05; done
  echo "server did not come back" >&2; exit 1
}

"$KMS_BIN" init --data-dir "$WORK/kms" --json > "$WORK/tokens.json"
OS_TOKEN=$(jq -r .tokens.os "$WORK/tokens.json")
start
python3 "$HERE/provision.py" "$URL" "$(jq -r .tokens.admin "$WORK/tokens.json")" "$OS_TOKEN" 64 "$WORK/handles.txt"

# The acknowledged audit_seq of every OK answer, per thread; done() prints the highest.
cat "$HERE/lua/kms.lua" "$HERE/lua/common.lua" - > "$WORK/soak.lua" <<'LUA'
max_seq = 0
local inner_response = response
response = function(status, headers, body)
  if status == 200 then
    local seq = tonumber(body:match('"audit_seq":(%d+)'))
    if seq and seq > max_seq then max_seq = seq end
  end
  inner_response(status, headers, body)
end
local inner_done = done
done = function(summary, latency, requests)
  inner_done(summary, latency, requests)
  local m = 0
  for _, t in ipairs(all_threads) do m = math.max(m, t:get("max_seq")) end
  io.write("MAX_ACKED_SEQ ", m, "\n")
end
LUA
acked=0
for round in $(seq "$ROUNDS"); do
  for scenario in rotate get_handle; do
    threads=$([ "$scenario" = rotate ] && echo "$CONNS" || echo 2)
    env SCENARIO="$scenario" NOBJ=64 RUN_ID="soak-$round-$scenario" OS_TOKEN="$OS_TOKEN" \
      wrk -t"$threads" -c"$CONNS" -d3s --timeout 2s -s "$WORK/soak.lua" "$URL" > "$WORK/wrk.out" 2>&1 &
    WRK=$!
    sleep "1.$((RANDOM % 9))"
    kill -KILL "$PID"; wait "$PID" 2>/dev/null || true
    wait "$WRK" || true
    round_max=$(sed -n 's/^MAX_ACKED_SEQ //p' "$WORK/wrk.out")
    acked=$(( ${round_max:-0} > acked ? ${round_max:-0} : acked ))
    start
  done
  echo "round $round: killed twice under load and restarted; highest acknowledged audit_seq $acked" >&2
done
kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; PID=""
"$KMS_BIN" audit verify --data-dir "$WORK/kms" --tenant bench --json | tee "$WORK/verify.json" >&2
jq -e '.verified' "$WORK/verify.json" >/dev/null
records=$(jq '.tenants[0].records' "$WORK/verify.json")
if [ "$records" -lt "$acked" ]; then
  echo "LOST: the chain holds $records records but audit_seq $acked was acknowledged" >&2
  exit 1
fi
echo "soak passed: $((ROUNDS * 2)) kills under load; the chain verifies and holds all $acked acknowledged records (of $records)" >&2
