#!/usr/bin/env bash
# Scale: GET_HANDLE over SECRETS secrets spread across TENANTS tenants, against the same
# measurement with 1,000 secrets; peak resident memory; restart to ready. Both stores are
# provisioned first, each by its own server, then measured in alternation, ROUNDS times each, so
# that neither always runs on a warmer or quieter machine; the table gives the median round of
# each (with an even ROUNDS, the slower of the middle two), and every round. GET_HANDLE writes,
# so each store grows from round to round. Writes results/<run>/scale.tsv and the scale table of
# BENCHMARKS.md.
#
#   bench/scale.sh                          # 1,000,000 secrets across 10,000 tenants
#   SECRETS=100000 TENANTS=1000 ROUNDS=1 bench/scale.sh
# Only loopback traffic; the servers are stopped by the PIDs this script started.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SECRETS=${SECRETS:-1000000}
TENANTS=${TENANTS:-10000}
DUR=${DUR:-15}
CONNS=${CONNS:-64}
THREADS=2
PORT=${PORT:-18781}
ROUNDS=${ROUNDS:-3}
REPORT=${REPORT:-1}
RUN_ID=${RUN_ID:-$(date -u +%Y%m%dT%H%M%SZ)}
OUTDIR=$HERE/results/$RUN_ID

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
for tool in wrk jq curl python3; do
  command -v "$tool" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null; }
done
(cd "$ROOT" && cargo build --release --locked -q -p selene-kms)
KMS_BIN=$ROOT/target/release/selene-kms
mkdir -p "$OUTDIR"
WORK=$(mktemp -d /tmp/selene-kms-scale.XXXXXX)
declare -A PIDS PORTS
stop() { # stop LABEL
  local pid=${PIDS[$1]:-}
  [ -n "$pid" ] && { kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
  PIDS[$1]=""
}
stop_all() { local label; [ "${#PIDS[@]}" -gt 0 ] || return 0; for label in "${!PIDS[@]}"; do stop "$label"; done; }
trap 'stop_all; rm -rf "$WORK"' EXIT
kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
url() { echo "http://127.0.0.1:${PORTS[$1]}"; }
tokens() { echo "$WORK/$1.tokens.json"; }

start() { # start LABEL; sets PIDS[LABEL] and READY_MS (milliseconds from exec to ready)
  local t0 t1
  t0=$(date +%s%N)
  SELENE_KMS_LOG=warn "$KMS_BIN" serve --data-dir "$WORK/$1" --listen "127.0.0.1:${PORTS[$1]}" \
    >> "$WORK/kms.log" 2>&1 &
  PIDS[$1]=$!
  for _ in $(seq 600); do curl -sf -o /dev/null "$(url "$1")/readyz" && break; sleep 0.01; done
  t1=$(date +%s%N)
  READY_MS=$(( (t1 - t0) / 1000000 ))
}

lua() { cat "$HERE/lua/scale.lua" "$HERE/lua/common.lua" > "$WORK/scale.lua"; echo "$WORK/scale.lua"; }

provision() { # provision LABEL SECRETS TENANTS PORT: a new store, served and filled, left running
  local label=$1 secrets=$2 tenants=$3 res
  PORTS[$label]=$4
  "$KMS_BIN" init --data-dir "$WORK/$label" --json > "$(tokens "$label")"
  start "$label"
  # One policy per tenant, over one keep-alive connection.
  python3 - "$(url "$label")" "$(jq -r .tokens.admin "$(tokens "$label")")" "$tenants" <<'EOF'
import http.client, json, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1]); c = http.client.HTTPConnection(u.hostname, u.port)
doc = json.dumps({"rules": [{"secret_names": ["*"], "engines": ["PH1.BENCH"], "operations": ["GET_HANDLE"]}]})
for t in range(int(sys.argv[3])):
    c.request("PUT", f"/v1/admin/tenants/t-{t}/policy", doc, {"Authorization": f"Bearer {sys.argv[2]}", "Content-Type": "application/json"})
    r = c.getresponse(); r.read(); assert r.status == 200, r.status
EOF
  local t0 t1
  t0=$(date +%s)
  env SCENARIO=provision PER="$((secrets / THREADS))" TENANTS="$tenants" THREADS="$THREADS" \
    ADMIN_TOKEN="$(jq -r .tokens.admin "$(tokens "$label")")" \
    wrk -t"$THREADS" -c"$CONNS" -d"$((secrets / 6000 + 15))s" --timeout 10s -s "$(lua)" "$(url "$label")" \
      > "$WORK/prov-$label.out" 2>&1
  t1=$(date +%s)
  res=$(grep '^RESULT' "$WORK/prov-$label.out") || { cat "$WORK/prov-$label.out" >&2; exit 1; }
  local created; created=$(sed -n 's/.* ok=\([0-9]*\).*/\1/p' <<< "$res")
  # A create still in flight when wrk stops may go uncounted; a few missing secrets only show as
  # wrong answers (404) in the GET_HANDLE runs, which the table reports.
  [ "$created" -ge $((secrets * 999 / 1000)) ] || { echo "only $created of $secrets secrets created" >&2; grep -E "FIRST_BAD|RESULT|requests in" "$WORK/prov-$label.out" >&2; exit 1; }
  log "$label: $created secrets across $tenants tenants provisioned (wrk run of $((t1 - t0)) s)"
}

run_get() { # run_get LABEL SECRETS TENANTS ROUND: one GET_HANDLE run, appended to rounds-LABEL
  sleep 2  # let the previous run's checkpoints and flushes settle
  env SCENARIO=get_handle PER="$(($2 / THREADS))" TENANTS="$3" THREADS="$THREADS" RUN_ID="$RUN_ID-$1-$4" \
    OS_TOKEN="$(jq -r .tokens.os "$(tokens "$1")")" \
    wrk -t2 -c"$CONNS" -d"${DUR}s" --timeout 10s -s "$(lua)" "$(url "$1")" > "$WORK/get-$1-$4.out" 2>&1
  local res; res=$(grep '^RESULT' "$WORK/get-$1-$4.out") || { cat "$WORK/get-$1-$4.out" >&2; exit 1; }
  field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<< " $res"; }
  echo "$(field ok_per_s) $(field p99_ms) $(field bad)" >> "$WORK/rounds-$1"
  log "$1, round $4: GET_HANDLE $(field ok_per_s) ops/s (p99 $(field p99_ms) ms, bad $(field bad))"
}

report_row() { # report_row LABEL SECRETS TENANTS: median round, memory, restart; stops the server
  local label=$1 pid=${PIDS[$1]} rss_hot hwm median rounds bad
  rss_hot=$(kb "$pid" VmRSS); hwm=$(kb "$pid" VmHWM)
  # The median round by throughput (with its p99), the wrong answers of all rounds, every figure.
  median=$(sort -n -k1,1 "$WORK/rounds-$label" | awk '{ l[NR] = $0 } END { print l[int((NR + 1) / 2)] }')
  rounds=$(awk '{ printf "%s%.0f", (NR > 1 ? " / " : ""), $1 }' "$WORK/rounds-$label")
  bad=$(awk '{ n += $3 } END { print n }' "$WORK/rounds-$label")
  stop "$label"
  start "$label"
  local ready=$READY_MS first
  first=$(curl -s -o /dev/null -w '%{time_total}' \
    -H "Authorization: Bearer $(jq -r .tokens.os "$(tokens "$label")")" -H 'Content-Type: application/json' \
    -d '{"correlation_id":"c","turn_id":"t","idempotency_key":"first-after-restart","tenant_id":"t-1","operation":"GET_HANDLE","secret_name":"s-0-1","requester_engine_id":"PH1.BENCH"}' \
    "$(url "$label")/v1/kms/requests")
  stop "$label"
  local ok p99
  read -r ok p99 _ <<< "$median"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$2" "$3" "$ok" "$p99" "$bad" \
    "$((rss_hot / 1024))" "$((hwm / 1024))" "$ready" "$first" "$rounds" >> "$OUTDIR/scale.tsv"
  log "$label: GET_HANDLE median $ok ops/s of $rounds (p99 $p99 ms, bad $bad); RSS $((rss_hot / 1024)) MiB (peak $((hwm / 1024)) MiB); restart to ready $ready ms; first request ${first}s"
}

printf 'label\tsecrets\ttenants\tget_handle_ok_per_s\tp99_ms\tbad\trss_mib\tpeak_rss_mib\trestart_to_ready_ms\tfirst_request_s\trounds_ok_per_s\n' \
  > "$OUTDIR/scale.tsv"
provision small 1000 10 "$PORT"
provision large "$SECRETS" "$TENANTS" "$((PORT + 1))"
for round in $(seq "$ROUNDS"); do
  # Alternate which store goes first.
  if [ $((round % 2)) = 1 ]; then order="small large"; else order="large small"; fi
  for label in $order; do
    case $label in
      small) run_get small 1000 10 "$round" ;;
      large) run_get large "$SECRETS" "$TENANTS" "$round" ;;
    esac
  done
done
report_row small 1000 10
report_row large "$SECRETS" "$TENANTS"
column -t -s $'\t' "$OUTDIR/scale.tsv" >&2
if [ "$REPORT" = 1 ]; then
  python3 "$HERE/report.py" --scale "$OUTDIR" "$ROOT/BENCHMARKS.md"
  log "BENCHMARKS.md updated from $OUTDIR"
fi
