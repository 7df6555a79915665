-- Scale scenarios over many tenants. Names: secret "s-<thread>-<k>" in tenant "t-<(thread * PER + k) % TENANTS>".
--   provision   admin: creates PER secrets per wrk thread, then stops its thread
--   get_handle  os: GET_HANDLE of a random provisioned secret
local scenario = os.getenv("SCENARIO")
local per = tonumber(os.getenv("PER"))
local tenants = tonumber(os.getenv("TENANTS"))
local threads = tonumber(os.getenv("THREADS"))
local run = os.getenv("RUN_ID") or "run"
local counter = 0
-- When this thread has sent its last create, it idles two more seconds (creates still in flight
-- are answered well within that), then stops.
local idle_since = nil

wrk.headers["Content-Type"] = "application/json"

local function place(tid, k)
  return "t-" .. ((tid * per + k) % tenants), "s-" .. tid .. "-" .. k
end

function init(args)
  thread_id = thread_id or 0
  math.randomseed(thread_id * 7919 + 17)
  if scenario == "provision" then
    wrk.headers["Authorization"] = "Bearer " .. os.getenv("ADMIN_TOKEN")
  else
    wrk.headers["Authorization"] = "Bearer " .. os.getenv("OS_TOKEN")
  end
end

-- wrk calls request() once in thread 0's state to check the script before it starts sending;
-- that request is never sent, so it must not use up a secret name.
local checked = false

function request()
  if scenario == "provision" and thread_id == 0 and not checked then
    checked = true
    return wrk.format("GET", "/healthz")
  end
  counter = counter + 1
  if scenario == "provision" then
    if counter > per then
      return wrk.format("GET", "/healthz")
    end
    local tenant, name = place(thread_id, counter - 1)
    return wrk.format("POST", "/v1/admin/tenants/" .. tenant .. "/secrets", nil, '{"secret_name":"' .. name .. '"}')
  end
  local tid = math.random(0, threads - 1)
  local tenant, name = place(tid, math.random(0, per - 1))
  local body = '{"correlation_id":"c","turn_id":"t","idempotency_key":"' .. run .. '-' .. thread_id .. '-' .. counter ..
    '","tenant_id":"' .. tenant .. '","operation":"GET_HANDLE","secret_name":"' .. name ..
    '","requester_engine_id":"PH1.BENCH"}'
  return wrk.format("POST", "/v1/kms/requests", nil, body)
end

function response(status, headers, body)
  if scenario == "provision" then
    if status == 201 then
      ok_count = ok_count + 1
    elseif status == 200 then
      idle_since = idle_since or os.time()
      if os.time() - idle_since >= 2 then wrk.thread:stop() end
    else
      record_bad(status, body)
    end
    return
  end
  if status == 200 then ok_count = ok_count + 1 else record_bad(status, body) end
end
