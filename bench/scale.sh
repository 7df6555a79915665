#!/usr/bin/env bash
# Scale: GET_HANDLE over SECRETS secrets spread across TENANTS tenants, against the same
# measurement with 1,000 secrets; peak resident memory; restart to ready. Writes
# results/<run>/scale.tsv and the scale table of BENCHMARKS.md.
#
#   bench/scale.sh                          # 1,000,000 secrets across 10,000 tenants
#   SECRETS=100000 TENANTS=1000 bench/scale.sh
# Only loopback traffic; the server is stopped by the PID this script started.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SECRETS=${SECRETS:-1000000}
TENANTS=${TENANTS:-10000}
DUR=${DUR:-15}
CONNS=${CONNS:-64}
THREADS=2
PORT=${PORT:-18781}
REPORT=${REPORT:-1}
RUN_ID=${RUN_ID:-$(date -u +%Y%m%dT%H%M%SZ)}
OUTDIR=$HERE/results/$RUN_ID
URL=http://127.0.0.1:$PORT

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
for tool in wrk jq curl python3; do
  command -v "$tool" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null; }
done
(cd "$ROOT" && cargo build --release --locked -q -p selene-kms)
KMS_BIN=$ROOT/target/release/selene-kms
mkdir -p "$OUTDIR"
WORK=$(mktemp -d /tmp/selene-kms-scale.XXXXXX)
PID=""
stop() { [ -n "$PID" ] && { kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }; PID=""; }
trap 'stop; rm -rf "$WORK"' EXIT
kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

start() { # start DATA_DIR; sets PID and READY_MS (milliseconds from exec to ready)
  local t0 t1
  t0=$(date +%s%N)
  SELENE_KMS_LOG=warn "$KMS_BIN" serve --data-dir "$1" --listen "127.0.0.1:$PORT" >> "$WORK/kms.log" 2>&1 &
  PID=$!
  for _ in $(seq 600); do curl -sf -o /dev/null "$URL/readyz" && break; sleep 0.01; done
  t1=$(date +%s%N)
  READY_MS=$(( (t1 - t0) / 1000000 ))
}

lua() { cat "$HERE/lua/scale.lua" "$HERE/lua/common.lua" > "$WORK/scale.lua"; echo "$WORK/scale.lua"; }

measure() { # measure LABEL SECRETS TENANTS
  local label=$1 secrets=$2 tenants=$3 dir=$WORK/$1 per tokens res
  per=$((secrets / THREADS))
  "$KMS_BIN" init --data-dir "$dir" --json > "$dir.tokens.json"
  tokens=$dir.tokens.json
  start "$dir"
  # One policy per tenant, over one keep-alive connection.
  python3 - "$URL" "$(jq -r .tokens.admin "$tokens")" "$tenants" <<'EOF'
import http.client, json, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1]); c = http.client.HTTPConnection(u.hostname, u.port)
doc = json.dumps({"rules": [{"secret_names": ["*"], "engines": ["PH1.BENCH"], "operations": ["GET_HANDLE"]}]})
for t in range(int(sys.argv[3])):
    c.request("PUT", f"/v1/admin/tenants/t-{t}/policy", doc, {"Authorization": f"Bearer {sys.argv[2]}", "Content-Type": "application/json"})
    r = c.getresponse(); r.read(); assert r.status == 200, r.status
EOF
  local t0 t1
  t0=$(date +%s)
  env SCENARIO=provision PER="$per" TENANTS="$tenants" THREADS="$THREADS" ADMIN_TOKEN="$(jq -r .tokens.admin "$tokens")" \
    wrk -t"$THREADS" -c"$CONNS" -d"$((secrets / 6000 + 15))s" --timeout 10s -s "$(lua)" "$URL" \
      > "$WORK/prov-$label.out" 2>&1
  t1=$(date +%s)
  res=$(grep '^RESULT' "$WORK/prov-$label.out")
  local created; created=$(sed -n 's/.* ok=\([0-9]*\).*/\1/p' <<< "$res")
  # A create still in flight when wrk stops may go uncounted; a few missing secrets only show as
  # wrong answers (404) in the GET_HANDLE run, which the table reports.
  [ "$created" -ge $((secrets * 999 / 1000)) ] || { echo "only $created of $secrets secrets created" >&2; grep -E "FIRST_BAD|RESULT|requests in" "$WORK/prov-$label.out" >&2; exit 1; }
  log "$label: $created secrets across $tenants tenants provisioned (wrk run of $((t1 - t0)) s)"
  run_get "$label" "$per" "$tenants" "$tokens"
  local rss_hot hwm
  rss_hot=$(kb "$PID" VmRSS); hwm=$(kb "$PID" VmHWM)
  stop
  start "$dir"
  local ready=$READY_MS
  local first; first=$(curl -s -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $(jq -r .tokens.os "$tokens")" \
    -H 'Content-Type: application/json' \
    -d '{"correlation_id":"c","turn_id":"t","idempotency_key":"first-after-restart","tenant_id":"t-1","operation":"GET_HANDLE","secret_name":"s-0-1","requester_engine_id":"PH1.BENCH"}' \
    "$URL/v1/kms/requests")
  stop
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$secrets" "$tenants" "$GET_OK" "$GET_P99" "$GET_BAD" \
    "$((rss_hot / 1024))" "$((hwm / 1024))" "$ready" "$first" >> "$OUTDIR/scale.tsv"
  log "$label: GET_HANDLE $GET_OK ops/s (p99 $GET_P99 ms, bad $GET_BAD); RSS $((rss_hot / 1024)) MiB (peak $((hwm / 1024)) MiB); restart to ready $ready ms; first request ${first}s"
}

run_get() { # run_get LABEL PER TENANTS TOKENS
  env SCENARIO=get_handle PER="$2" TENANTS="$3" THREADS="$THREADS" RUN_ID="$RUN_ID-$1" OS_TOKEN="$(jq -r .tokens.os "$4")" \
    wrk -t2 -c"$CONNS" -d"${DUR}s" --timeout 10s -s "$(lua)" "$URL" > "$WORK/get-$1.out" 2>&1
  local res; res=$(grep '^RESULT' "$WORK/get-$1.out")
  GET_OK=$(sed -n 's/.* ok_per_s=\([^ ]*\).*/\1/p' <<< "$res")
  GET_P99=$(sed -n 's/.* p99_ms=\([^ ]*\).*/\1/p' <<< "$res")
  GET_BAD=$(sed -n 's/.* bad=\([^ ]*\).*/\1/p' <<< "$res")
}

printf 'label\tsecrets\ttenants\tget_handle_ok_per_s\tp99_ms\tbad\trss_mib\tpeak_rss_mib\trestart_to_ready_ms\tfirst_request_s\n' > "$OUTDIR/scale.tsv"
measure small 1000 10
measure large "$SECRETS" "$TENANTS"
column -t -s $'\t' "$OUTDIR/scale.tsv" >&2
if [ "$REPORT" = 1 ]; then
  python3 "$HERE/report.py" --scale "$OUTDIR" "$ROOT/BENCHMARKS.md"
  log "BENCHMARKS.md updated from $OUTDIR"
fi
