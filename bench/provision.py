"""Provisions the benchmark tenant of a running selene-kms: policy, secrets, redeemable handles,
and keys with handles to them (HANDLES_FILE.sign: Ed25519 keys, HANDLES_FILE.encrypt: AES-256-GCM).

usage: provision.py URL ADMIN_TOKEN OS_TOKEN NOBJ HANDLES_FILE
"""
import http.client
import json
import sys
import urllib.parse

url, admin, os_token, nobj, handles_file = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
parsed = urllib.parse.urlparse(url)
conn = http.client.HTTPConnection(parsed.hostname, parsed.port)


def call(method, path, token, body, expect):
    conn.request(method, path, json.dumps(body), {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    if r.status != expect:
        sys.exit(f"{method} {path}: {r.status} {data[:200]!r}")
    return json.loads(data)


call("PUT", "/v1/admin/tenants/bench/policy", admin, {
    "rules": [{"secret_names": ["bench/*"], "engines": ["PH1.BENCH"],
               "operations": ["GET_HANDLE", "ISSUE_EPHEMERAL", "ROTATE", "REVOKE"]}],
    "admins": ["u-admin"],
}, 200)
names = [f"bench/s-{i}" for i in range(nobj)] + ["bench/hot"]
for name in names:
    call("POST", "/v1/admin/tenants/bench/secrets", admin, {"secret_name": name}, 201)


def handles(path, names):
    with open(path, "w") as out:
        for name in names:
            bundle = call("POST", "/v1/kms/requests", os_token, {
                "correlation_id": "setup", "turn_id": "setup", "idempotency_key": f"setup-{name}",
                "tenant_id": "bench", "operation": "GET_HANDLE", "secret_name": name,
                "requester_engine_id": "PH1.BENCH", "requester_user_id": "u-admin",
            }, 200)
            out.write(bundle["secret_handle"] + "\n")


handles(handles_file, names[:nobj])
for purpose, suffix in (("ed25519", "sign"), ("aes-256-gcm", "encrypt")):
    keys = [f"bench/{suffix}-{i}" for i in range(nobj)]
    for name in keys:
        call("POST", "/v1/admin/tenants/bench/secrets", admin, {"secret_name": name, "purpose": purpose}, 201)
    handles(f"{handles_file}.{suffix}", keys)
