-- Shared tail of every scenario: per-thread counters, summed in done() into one RESULT line.
ok_count, bad_count, warn_count = 0, 0, 0
first_bad = ""

function record_bad(status, body)
  bad_count = bad_count + 1
  if first_bad == "" then first_bad = status .. " " .. string.sub(body or "", 1, 200) end
end

local all_threads = {}
function setup(thread)
  thread:set("thread_id", #all_threads)
  table.insert(all_threads, thread)
end

function done(summary, latency, requests)
  local ok, nbad, warn = 0, 0, 0
  for _, t in ipairs(all_threads) do
    ok = ok + t:get("ok_count"); nbad = nbad + t:get("bad_count"); warn = warn + t:get("warn_count")
    local fb = t:get("first_bad")
    if fb ~= "" then io.write("FIRST_BAD ", fb, "\n") end
  end
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    "RESULT requests=%d duration_s=%.3f rps=%.1f ok_per_s=%.1f p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f " ..
    "errors=%d ok=%d bad=%d warn=%d\n",
    summary.requests, secs, summary.requests / secs, ok / secs,
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, latency:percentile(99.9) / 1e3, latency.max / 1e3,
    e.connect + e.read + e.write + e.timeout, ok, nbad, warn))
end
