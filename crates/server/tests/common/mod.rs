//! A real server on loopback over a fresh store (embedded SQLite, or a throwaway PostgreSQL
//! cluster), and a client for it.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

#[path = "../../../store-postgres/tests/pg_cluster/mod.rs"]
mod pg_cluster;

use std::sync::Arc;

use pg_cluster::Cluster;
use reqwest::{Method, StatusCode};
use selene_kms_backends::{StoreLocation, open_store};
use selene_kms_core::Role;
use selene_kms_server::{Engine, Listening, ServeOptions, now_ms, serve};
use selene_kms_store::{RootKey, Store};
use serde_json::{Value, json};

pub(crate) const TENANT: &str = "acme";

/// The store the server runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// `kms.db` in the server's data directory.
    Sqlite,
    /// A database in a cluster of its own, started for this server.
    Postgres,
}

pub(crate) struct Server {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) url: String,
    pub(crate) admin: String,
    pub(crate) os: String,
    pub(crate) executor: String,
    pub(crate) http: reqwest::Client,
    pub(crate) store: Arc<dyn Store>,
    listening: Option<Listening>,
    /// Behind `store` on PostgreSQL. Declared last so that it drops last: the server and the
    /// store go before the database they use.
    pub(crate) cluster: Option<Cluster>,
}

/// What a stopped server leaves behind for inspection.
pub(crate) struct Remains {
    /// The data directory (root key; on SQLite, the database files).
    pub(crate) dir: tempfile::TempDir,
    /// The cluster, still running, on PostgreSQL.
    pub(crate) cluster: Option<Cluster>,
}

pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub(crate) fn reason(&self) -> String {
        self.json()["reason_code"].as_str().unwrap_or("").to_owned()
    }
}

impl Server {
    /// Over the embedded store.
    pub(crate) async fn start() -> Self {
        Self::start_on(Backend::Sqlite).await
    }

    pub(crate) async fn start_on(backend: Backend) -> Self {
        Self::start_on_with(
            backend,
            ServeOptions {
                listen: "127.0.0.1:0".parse().expect("addr"),
                ..ServeOptions::default()
            },
        )
        .await
    }

    /// Over the embedded store.
    pub(crate) async fn start_with(options: ServeOptions) -> Self {
        Self::start_on_with(Backend::Sqlite, options).await
    }

    pub(crate) async fn start_on_with(backend: Backend, options: ServeOptions) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = RootKey::create_file(&dir.path().join("root.key")).expect("root key");
        let (location, cluster) = match backend {
            Backend::Sqlite => (StoreLocation::Embedded(dir.path().join("kms.db")), None),
            Backend::Postgres => {
                let cluster = Cluster::start();
                let url = cluster.create_database("kms");
                (StoreLocation::Postgres(url), Some(cluster))
            }
        };
        let store: Arc<dyn Store> = open_store(&location, root, true).await.expect("store");
        let engine = Arc::new(Engine::new(store.clone()));
        let made = engine
            .bootstrap(now_ms())
            .await
            .expect("bootstrap principals");
        let token = |role: Role| {
            made.0
                .iter()
                .find(|(r, _)| *r == role)
                .map(|(_, p)| p.token.expose().to_owned())
                .expect("a principal per role")
        };
        let tls = options.tls.is_some();
        let listening = serve(engine, options).await.expect("serves");
        let scheme = if tls { "https" } else { "http" };
        Self {
            url: format!("{scheme}://{}", listening.addr),
            dir,
            os: token(Role::Os),
            executor: token(Role::Executor),
            admin: token(Role::Admin),
            http: reqwest::Client::new(),
            store,
            listening: Some(listening),
            cluster,
        }
    }

    /// Stops the server; returns what it leaves behind for inspection.
    pub(crate) async fn stop(self) -> Remains {
        let Server {
            dir,
            listening,
            cluster,
            ..
        } = self;
        if let Some(l) = listening {
            l.shutdown().await.expect("clean shutdown");
        }
        Remains { dir, cluster }
    }

    pub(crate) async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.body(body).send().await.expect("request sent");
        let status = resp.status();
        Answer {
            status,
            body: resp.bytes().await.expect("body").to_vec(),
        }
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Answer {
        let bytes = body
            .map(|b| serde_json::to_vec(b).expect("json"))
            .unwrap_or_default();
        let ct = body.map(|_| "application/json");
        self.raw(method, path, Some(token), ct, bytes).await
    }

    pub(crate) async fn kms(&self, body: &Value) -> Answer {
        self.call(Method::POST, "/v1/kms/requests", &self.os, Some(body))
            .await
    }

    pub(crate) async fn redeem(&self, body: &Value) -> Answer {
        self.call(
            Method::POST,
            "/v1/material/redeem",
            &self.executor,
            Some(body),
        )
        .await
    }

    pub(crate) async fn healthy(&self) -> bool {
        self.raw(Method::GET, "/healthz", None, None, Vec::new())
            .await
            .status
            == StatusCode::OK
    }

    /// The default policy and one generated secret (or `material` imported).
    pub(crate) async fn provision(&self, name: &str, material_b64: Option<&str>) {
        let policy = json!({
            "rules": [
                {"secret_names": ["payments/*", "canary/*"], "engines": ["PH1.CONNECTOR"], "operations": ["GET_HANDLE", "ISSUE_EPHEMERAL"]},
                {"secret_names": ["*"], "engines": ["PH1.OS"], "operations": ["GET_HANDLE", "ROTATE", "REVOKE"]}
            ],
            "admins": ["u-admin"]
        });
        let a = self
            .call(
                Method::PUT,
                &format!("/v1/admin/tenants/{TENANT}/policy"),
                &self.admin,
                Some(&policy),
            )
            .await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "policy: {}",
            String::from_utf8_lossy(&a.body)
        );
        let mut body = json!({"secret_name": name});
        if let Some(m) = material_b64 {
            body["material_b64"] = Value::from(m);
        }
        let a = self
            .call(
                Method::POST,
                &format!("/v1/admin/tenants/{TENANT}/secrets"),
                &self.admin,
                Some(&body),
            )
            .await;
        assert_eq!(
            a.status,
            StatusCode::CREATED,
            "create: {}",
            String::from_utf8_lossy(&a.body)
        );
    }

    /// Dry run, then commit with the simulation id.
    pub(crate) async fn plan_and_commit(&self, req: &Value) -> (Answer, Answer) {
        let mut dry = req.clone();
        dry["dry_run"] = json!(true);
        dry["idempotency_key"] = json!(format!(
            "{}-plan",
            req["idempotency_key"].as_str().unwrap_or("k")
        ));
        let plan = self.kms(&dry).await;
        let mut commit = req.clone();
        commit["simulation_id"] = plan.json()["simulation_id"].clone();
        let done = self.kms(&commit).await;
        (plan, done)
    }
}

/// The value of an unlabelled metric in a Prometheus exposition.
pub(crate) fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

pub(crate) fn request(op: &str, key: &str) -> Value {
    json!({
        "correlation_id": "c-1", "turn_id": "t-1", "idempotency_key": key,
        "tenant_id": TENANT, "operation": op, "secret_name": "payments/stripe",
        "requester_engine_id": "PH1.CONNECTOR", "requester_user_id": "u-42"
    })
}

pub(crate) fn admin_request(op: &str, key: &str) -> Value {
    let mut v = request(op, key);
    v["requester_engine_id"] = json!("PH1.OS");
    v["requester_user_id"] = json!("u-admin");
    v
}

/// A test PKI: a CA, a server certificate for `localhost`, and client certificates it signs.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).expect("ca");
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            ca,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    fn write(&self, name: &str, text: String) -> std::path::PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    /// The server's TLS options, with client certificates required when `mutual`.
    pub(crate) fn server(&self, mutual: bool) -> selene_kms_server::TlsOptions {
        let (cert, key) = self.server_pem();
        selene_kms_server::TlsOptions {
            cert: self.write("server.pem", cert),
            key: self.write("server.key", key),
            client_ca: mutual.then(|| self.write("ca.pem", self.ca.pem())),
        }
    }

    /// A new certificate for `localhost` this CA signed, and its key, as PEM.
    pub(crate) fn server_pem(&self) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .expect("params")
            .signed_by(&key, &self.issuer)
            .expect("server cert");
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate with these subject alternative names, and its key, as one PEM.
    pub(crate) fn client(&self, names: Vec<rcgen::SanType>) -> reqwest::Identity {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = names;
        let cert = params.signed_by(&key, &self.issuer).expect("client cert");
        reqwest::Identity::from_pem(format!("{}{}", cert.pem(), key.serialize_pem()).as_bytes())
            .expect("identity")
    }

    /// A rustls client configuration trusting the CA, for tests below HTTP.
    pub(crate) fn rustls_client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("the CA");
        Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// An HTTPS client trusting the CA, with `identity` when given.
    pub(crate) fn http(&self, identity: Option<reqwest::Identity>) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.ca.pem().as_bytes()).expect("ca");
        let mut builder = reqwest::Client::builder().add_root_certificate(ca);
        if let Some(id) = identity {
            builder = builder.identity(id);
        }
        builder.build().expect("client")
    }
}
