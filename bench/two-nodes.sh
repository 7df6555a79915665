#!/usr/bin/env bash
# Two selene-kms nodes over one PostgreSQL 15 (fsync on), each driven by its own wrk with half of
# the connections, at the same time. Reports the summed completed operations per second and the
# worse p99 of the two, then, in the same run on the same machine, one node on the embedded
# SQLite store driven by one wrk with all the connections, and the ratio of the two, into
# results/<run>/two-nodes.tsv and the two-node table of BENCHMARKS.md.
#
#   bench/two-nodes.sh                    # DUR=15 CONNS=64 TESTS="get_handle issue rotate revoke"
#   KMS_BIN=path bench/two-nodes.sh       # a prebuilt server instead of this tree's
# Only loopback traffic and a unix socket; every process is stopped by the PID this script started.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
DUR=${DUR:-15}
CONNS=${CONNS:-64}
NOBJ=${NOBJ:-64}
TESTS=${TESTS:-"get_handle issue rotate revoke"}
PORTS=(${PORTS:-18761 18762})
REPORT=${REPORT:-1}
RUN_ID=${RUN_ID:-$(date -u +%Y%m%dT%H%M%SZ)}
OUTDIR=$HERE/results/$RUN_ID
PG_BIN=/usr/lib/postgresql/15/bin

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
for tool in wrk jq curl python3; do
  command -v "$tool" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null; }
done
[ -x "$PG_BIN/initdb" ] || { apt-get update -qq && apt-get install -y -qq postgresql-15 >/dev/null; }
if [ -z "${KMS_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --locked -q -p selene-kms)
  KMS_BIN=$ROOT/target/release/selene-kms
fi

# Something already answering on a port (an earlier run still going) would be provisioned and
# measured in place of this run's nodes.
for port in "${PORTS[@]}"; do
  if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then
    echo "port $port already answers: is another run still going?" >&2
    exit 1
  fi
done
mkdir -p "$OUTDIR"
WORK=$(mktemp -d /tmp/skb2.XXXXXX)
chmod 755 "$WORK"   # the postgres user must reach its directory inside
PIDS=()
PG=$WORK/pg
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -d "$PG/data" ] && runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- PostgreSQL, durable
mkdir -p "$PG" && chown postgres:postgres "$PG"
runuser -u postgres -- "$PG_BIN/initdb" -D "$PG/data" -U postgres -A trust >/dev/null
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG/data" -w -l "$PG/log" \
  -o "-c listen_addresses='' -c unix_socket_directories='$PG' -c max_connections=200" start >/dev/null
runuser -u postgres -- "$PG_BIN/createdb" -h "$PG" -U postgres kms
STORE="postgres://postgres@/kms?host=$PG"

# ---------------------------------------------------------------- two nodes, one store
"$KMS_BIN" init --data-dir "$WORK/kms" --store "$STORE" --json > "$WORK/tokens.json"
OS_TOKEN=$(jq -r .tokens.os "$WORK/tokens.json")
ADMIN_TOKEN=$(jq -r .tokens.admin "$WORK/tokens.json")
EXECUTOR_TOKEN=$(jq -r .tokens.executor "$WORK/tokens.json")
for port in "${PORTS[@]}"; do
  SELENE_KMS_LOG=warn "$KMS_BIN" serve --data-dir "$WORK/kms" --store "$STORE" --listen "127.0.0.1:$port" \
    > "$WORK/node-$port.log" 2>&1 &
  PIDS+=($!)
done
for port in "${PORTS[@]}"; do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/readyz" && break; sleep 0.1; done
done
python3 "$HERE/provision.py" "http://127.0.0.1:${PORTS[0]}" "$ADMIN_TOKEN" "$OS_TOKEN" "$NOBJ" "$WORK/handles.txt"
log "two nodes (pids ${PIDS[*]}) over PostgreSQL, $NOBJ secrets provisioned"

cat "$HERE/lua/kms.lua" "$HERE/lua/common.lua" > "$WORK/kms.lua"
declare -A TWO
half=$((CONNS / 2))
for t in $TESTS; do
  case $t in rotate|revoke) threads=$half ;; *) threads=1 ;; esac
  sleep 2
  i=0
  WRK_PIDS=()
  for port in "${PORTS[@]}"; do
    # Each node's wrk works on its own half of the secrets' connections (thread ids differ).
    env SCENARIO="$t" NOBJ="$NOBJ" RUN_ID="$RUN_ID-2n-$t-$i" OS_TOKEN="$OS_TOKEN" EXECUTOR_TOKEN="$EXECUTOR_TOKEN" \
      HANDLES="$WORK/handles.txt" THREAD_OFFSET=$((i * half)) \
      wrk -t"$threads" -c"$half" -d"${DUR}s" --timeout 10s -s "$WORK/kms.lua" "http://127.0.0.1:$port" \
      > "$WORK/wrk-$t-$i.out" 2>&1 &
    WRK_PIDS+=($!)
    i=$((i + 1))
  done
  for pid in "${WRK_PIDS[@]}"; do wait "$pid"; done
  sum=0 p99=0 errors=0 bad=0 warn=0
  for i in 0 1; do
    res=$(grep '^RESULT' "$WORK/wrk-$t-$i.out") || { cat "$WORK/wrk-$t-$i.out" >&2; exit 1; }
    get() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<< " $res"; }
    sum=$(awk -v a="$sum" -v b="$(get ok_per_s)" 'BEGIN{print a + b}')
    p99=$(awk -v a="$p99" -v b="$(get p99_ms)" 'BEGIN{print (b > a) ? b : a}')
    errors=$((errors + $(get errors))); bad=$((bad + $(get bad))); warn=$((warn + $(get warn)))
  done
  TWO[$t]=$(printf '%.1f\t%s\t%s\t%s\t%s' "$sum" "$p99" "$errors" "$bad" "$warn")
  log "two nodes $t: $sum ops/s, worst p99 $p99 ms, errors $errors, bad $bad, stale re-plans $warn"
done
for pid in "${PIDS[@]}"; do kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; done
PIDS=()
"$KMS_BIN" audit verify --data-dir "$WORK/kms" --store "$STORE" --json | jq -c '{verified}' >&2

# ---------------------------------------------------------------- one node on SQLite, same run
"$KMS_BIN" init --data-dir "$WORK/one" --json > "$WORK/one-tokens.json"
OS_TOKEN=$(jq -r .tokens.os "$WORK/one-tokens.json")
ADMIN_TOKEN=$(jq -r .tokens.admin "$WORK/one-tokens.json")
EXECUTOR_TOKEN=$(jq -r .tokens.executor "$WORK/one-tokens.json")
SELENE_KMS_LOG=warn "$KMS_BIN" serve --data-dir "$WORK/one" --listen "127.0.0.1:${PORTS[0]}" \
  > "$WORK/one.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:${PORTS[0]}/readyz" && break; sleep 0.1; done
python3 "$HERE/provision.py" "http://127.0.0.1:${PORTS[0]}" "$ADMIN_TOKEN" "$OS_TOKEN" "$NOBJ" "$WORK/one-handles.txt"
log "one node (pid ${PIDS[*]}) on SQLite, $NOBJ secrets provisioned"
printf 'test\tconns\tok_per_s\tp99_ms_worst\terrors\tbad\twarn\tone_sqlite_ok_per_s\tratio\n' \
  > "$OUTDIR/two-nodes.tsv"
for t in $TESTS; do
  case $t in rotate|revoke) threads=$CONNS ;; *) threads=2 ;; esac
  sleep 2
  env SCENARIO="$t" NOBJ="$NOBJ" RUN_ID="$RUN_ID-1n-$t" OS_TOKEN="$OS_TOKEN" EXECUTOR_TOKEN="$EXECUTOR_TOKEN" \
    HANDLES="$WORK/one-handles.txt" \
    wrk -t"$threads" -c"$CONNS" -d"${DUR}s" --timeout 10s -s "$WORK/kms.lua" "http://127.0.0.1:${PORTS[0]}" \
    > "$WORK/wrk-$t-one.out" 2>&1
  res=$(grep '^RESULT' "$WORK/wrk-$t-one.out") || { cat "$WORK/wrk-$t-one.out" >&2; exit 1; }
  one=$(sed -n "s/.* ok_per_s=\([^ ]*\).*/\1/p" <<< " $res")
  two=${TWO[$t]%%$'\t'*}
  ratio=$(awk -v a="$two" -v b="$one" 'BEGIN{printf "%.2f", b ? a / b : 0}')
  printf '%s\t%s\t%s\t%s\t%s\n' "$t" "$CONNS" "${TWO[$t]}" "$one" "$ratio" >> "$OUTDIR/two-nodes.tsv"
  log "one SQLite node $t: $one ops/s; two nodes over PostgreSQL / one SQLite node: $ratio"
done
column -t -s $'\t' "$OUTDIR/two-nodes.tsv" >&2
if [ "$REPORT" = 1 ]; then
  python3 "$HERE/report.py" --two-nodes "$OUTDIR" "$ROOT/BENCHMARKS.md"
  log "BENCHMARKS.md updated from $OUTDIR"
fi
