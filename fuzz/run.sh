#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) each, seeded from fuzz/seeds, with the nightly
# toolchain and AddressSanitizer. A crash stops the run and leaves its input in
# fuzz/artifacts/<target>/ (add it to the seeds and a regression test once fixed).
#
#   fuzz/run.sh            # one minute per target
#   fuzz/run.sh 600        # ten minutes per target
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in kms_request open_ref policy_document audit_export replay_inputs; do
  mkdir -p "corpus/$target"
  cp -n seeds/$target/* "corpus/$target/" 2>/dev/null || true
  echo "== $target: ${SECONDS_EACH}s"
  cargo +nightly fuzz run "$target" "corpus/$target" -- \
    -max_total_time="$SECONDS_EACH" -max_len=4096 -timeout=5 -print_final_stats=1 2>&1 \
    | grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ +DONE|==[0-9]+==ERROR|SUMMARY|Done)' || true
  if ls "artifacts/$target"/crash-* >/dev/null 2>&1; then
    echo "crash found in $target: see fuzz/artifacts/$target" >&2
    exit 1
  fi
done
