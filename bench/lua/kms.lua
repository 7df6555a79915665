-- selene-kms scenarios. SCENARIO picks one; every request carries a fresh idempotency key.
--   noop            GET /v1/noop (the HTTP floor: a bundle-sized JSON answer, no engine work)
--   get_handle      GET_HANDLE over NOBJ secrets
--   issue           ISSUE_EPHEMERAL (ttl 5 min) over NOBJ secrets
--   rotate          dry run, then its commit, each connection on its own secret (-t = -c)
--   rotate_hot      the same, every connection on one secret; a stale simulation is re-planned
--   revoke          GET_HANDLE, dry run, commit of its revocation, own secret per connection
--   redeem          executor redemption of pre-issued handles (HANDLES file, one per line)
--   sign            executor Ed25519 signature of 48 bytes with pre-issued key handles (HANDLES.sign)
--   encrypt         executor AES-256-GCM encryption of 48 bytes (HANDLES.encrypt)
local scenario = os.getenv("SCENARIO")
local nobj = tonumber(os.getenv("NOBJ") or "64")
local run = os.getenv("RUN_ID") or "run"
local counter = 0
local step = "plan"      -- rotate/revoke state: plan -> commit (revoke: handle -> plan -> commit)
local sim_id, handle = nil, nil
local handles = {}
-- 48 bytes, base64: the data every signature and encryption is of.
local data_b64 = "c2VsZW5lLWttcyBiZW5jaG1hcms6IDQ4IGJ5dGVzIHRvIHVzZSBhIGtleSBvbi4u"
local crypto_field = { sign = "data_b64", encrypt = "plaintext_b64" }

wrk.headers["Content-Type"] = "application/json"

local function secret_for(i)
  if scenario == "rotate_hot" then return "bench/hot" end
  if scenario == "rotate" or scenario == "revoke" then return "bench/s-" .. (thread_id % nobj) end
  return "bench/s-" .. (i % nobj)
end

local function kms(op, extra)
  counter = counter + 1
  local body = '{"correlation_id":"c","turn_id":"t","idempotency_key":"' .. run .. '-' .. thread_id .. '-' .. counter ..
    '","tenant_id":"bench","operation":"' .. op .. '","secret_name":"' .. secret_for(counter) ..
    '","requester_engine_id":"PH1.BENCH","requester_user_id":"u-admin"' .. (extra or "") .. '}'
  return wrk.format("POST", "/v1/kms/requests", nil, body)
end

function init(args)
  -- THREAD_OFFSET keeps the threads of two load generators on distinct secrets.
  thread_id = (thread_id or 0) + tonumber(os.getenv("THREAD_OFFSET") or "0")
  if scenario == "noop" then
    wrk.method = "GET"; wrk.path = "/v1/noop"
  elseif scenario == "redeem" then
    for line in io.lines(os.getenv("HANDLES")) do handles[#handles + 1] = line end
    wrk.headers["Authorization"] = "Bearer " .. os.getenv("EXECUTOR_TOKEN")
  elseif crypto_field[scenario] then
    for line in io.lines(os.getenv("HANDLES") .. "." .. scenario) do handles[#handles + 1] = line end
    wrk.headers["Authorization"] = "Bearer " .. os.getenv("EXECUTOR_TOKEN")
  end
  if scenario ~= "redeem" and scenario ~= "noop" and not crypto_field[scenario] then
    wrk.headers["Authorization"] = "Bearer " .. os.getenv("OS_TOKEN")
  end
end

function request()
  if scenario == "noop" then return wrk.format() end
  if scenario == "get_handle" then return kms("GET_HANDLE") end
  if scenario == "issue" then return kms("ISSUE_EPHEMERAL", ',"requested_ttl_ms":300000') end
  if scenario == "redeem" then
    counter = counter + 1
    local h = handles[(counter + thread_id) % #handles + 1]
    return wrk.format("POST", "/v1/material/redeem", nil, '{"tenant_id":"bench","secret_handle":"' .. h .. '"}')
  end
  if crypto_field[scenario] then
    counter = counter + 1
    local h = handles[(counter + thread_id) % #handles + 1]
    return wrk.format("POST", "/v1/crypto/" .. scenario, nil, '{"tenant_id":"bench","secret_handle":"' .. h ..
      '","' .. crypto_field[scenario] .. '":"' .. data_b64 .. '"}')
  end
  if scenario == "rotate" or scenario == "rotate_hot" then
    if step == "commit" then return kms("ROTATE", ',"simulation_id":"' .. sim_id .. '"') end
    return kms("ROTATE", ',"dry_run":true')
  end
  if scenario == "revoke" then
    if step == "handle" or handle == nil then step = "handle"; return kms("GET_HANDLE") end
    local target = ',"revoke_target":{"secret_handle":"' .. handle .. '"}'
    if step == "commit" then return kms("REVOKE", target .. ',"simulation_id":"' .. sim_id .. '"') end
    return kms("REVOKE", target .. ',"dry_run":true')
  end
end

function response(status, headers, body)
  if scenario == "noop" or scenario == "get_handle" or scenario == "issue" or scenario == "redeem"
      or crypto_field[scenario] then
    if status == 200 then ok_count = ok_count + 1 else record_bad(status, body) end
    return
  end
  if step == "handle" then
    handle = status == 200 and body:match('"secret_handle":"([^"]+)"')
    if handle then step = "plan" else record_bad(status, body) end
    return
  end
  if step == "plan" then
    sim_id = status == 200 and body:match('"simulation_id":"([^"]+)"')
    if sim_id then step = "commit" else record_bad(status, body) end
    return
  end
  -- commit
  if status == 200 then
    ok_count = ok_count + 1
  elseif status == 409 and body:find("KMS_SIMULATION_STALE", 1, true) then
    warn_count = warn_count + 1   -- another client moved the secret first: plan again
  else
    record_bad(status, body)
  end
  step = (scenario == "revoke") and "handle" or "plan"
end
