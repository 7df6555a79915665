-- OpenBao's nearest equivalents. SCENARIO picks one; BAO_TOKEN is a non-root token whose
-- policies grant exactly these paths, so every request pays for ACL evaluation.
--   get_handle   GET  /v1/secret/data/app/s-N with X-Vault-Wrap-TTL (response-wrapped KV v2 read)
--   issue        POST /v1/auth/token/create {"ttl":"5m"}
--   rotate       POST /v1/transit/keys/k-N/rotate, each connection on its own key (-t = -c)
--   rotate_hot   the same, every connection on one key
--   revoke       POST /v1/auth/token/create then /v1/auth/token/revoke-accessor of that token
--   sign         POST /v1/transit/sign/sk-N of 48 bytes (ed25519 keys)
--   encrypt      POST /v1/transit/encrypt/k-N of 48 bytes (aes256-gcm96 keys)
local scenario = os.getenv("SCENARIO")
local nobj = tonumber(os.getenv("NOBJ") or "64")
local counter = 0
local accessor = nil
local data_b64 = "c2VsZW5lLWttcyBiZW5jaG1hcms6IDQ4IGJ5dGVzIHRvIHVzZSBhIGtleSBvbi4u"

function init(args)
  thread_id = thread_id or 0
  wrk.headers["X-Vault-Token"] = os.getenv("BAO_TOKEN")
  wrk.headers["Content-Type"] = "application/json"
  if scenario == "get_handle" then wrk.headers["X-Vault-Wrap-TTL"] = "300" end
end

function request()
  counter = counter + 1
  if scenario == "get_handle" then
    return wrk.format("GET", "/v1/secret/data/app/s-" .. (counter % nobj))
  end
  if scenario == "issue" then
    return wrk.format("POST", "/v1/auth/token/create", nil, '{"ttl":"5m","policies":["app"]}')
  end
  if scenario == "rotate" then
    return wrk.format("POST", "/v1/transit/keys/k-" .. (thread_id % nobj) .. "/rotate", nil, "{}")
  end
  if scenario == "sign" then
    return wrk.format("POST", "/v1/transit/sign/sk-" .. (counter % nobj), nil, '{"input":"' .. data_b64 .. '"}')
  end
  if scenario == "encrypt" then
    return wrk.format("POST", "/v1/transit/encrypt/k-" .. (counter % nobj), nil, '{"plaintext":"' .. data_b64 .. '"}')
  end
  if scenario == "rotate_hot" then
    return wrk.format("POST", "/v1/transit/keys/hot/rotate", nil, "{}")
  end
  if scenario == "revoke" then
    if accessor then
      return wrk.format("POST", "/v1/auth/token/revoke-accessor", nil, '{"accessor":"' .. accessor .. '"}')
    end
    return wrk.format("POST", "/v1/auth/token/create", nil, '{"ttl":"5m","policies":["app"]}')
  end
end

function response(status, headers, body)
  if scenario == "revoke" then
    if accessor then
      accessor = nil
      if status == 204 then ok_count = ok_count + 1 else record_bad(status, body) end
    else
      accessor = status == 200 and body:match('"accessor":"([^"]+)"')
      if not accessor then record_bad(status, body) end
    end
    return
  end
  local wrapped = scenario ~= "get_handle" or body:find('"wrap_info":{"token":"', 1, true)
  if status == 200 and wrapped then ok_count = ok_count + 1 else record_bad(status, body) end
end
