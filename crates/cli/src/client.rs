//! An HTTP client of a running selene-kms server.

use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::Connection;
use crate::config::Config;

/// Which token a call uses.
#[derive(Clone, Copy, Debug)]
pub(crate) enum As {
    Admin,
    Os,
    Executor,
}

/// A response: status and body.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The reason code of a refusal or error body, or the status.
    pub(crate) fn describe(&self) -> String {
        let v = self.json();
        match v.get("reason_code").and_then(|r| r.as_str()) {
            Some(code) => format!("{} ({})", code, self.status.as_u16()),
            None => format!("HTTP {}", self.status.as_u16()),
        }
    }
}

/// A configured client.
pub(crate) struct Client {
    http: reqwest::Client,
    url: String,
    admin: Option<String>,
    os: Option<String>,
    executor: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Client {
    /// A client from flags, environment and config, in that order of precedence.
    pub(crate) fn new(conn: &Connection, config: &Config) -> Result<Self, String> {
        let url = conn
            .url
            .clone()
            .or_else(|| config.client.url.clone())
            .unwrap_or_else(|| "http://127.0.0.1:8750".to_owned());
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(ca) = conn.ca_cert.as_ref().or(config.client.ca_cert.as_ref()) {
            let pem = std::fs::read(ca).map_err(|e| format!("--ca-cert: {e}"))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|_| "--ca-cert: not a PEM certificate".to_owned())?;
            builder = builder.add_root_certificate(cert);
        }
        if let Some(id) = conn
            .client_identity
            .as_ref()
            .or(config.client.client_identity.as_ref())
        {
            let pem = std::fs::read(id).map_err(|e| format!("--client-identity: {e}"))?;
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|_| "--client-identity: not a PEM certificate and key".to_owned())?;
            builder = builder.identity(identity);
        }
        Ok(Self {
            http: builder.build().map_err(|e| format!("HTTP client: {e}"))?,
            url: url.trim_end_matches('/').to_owned(),
            admin: env("SELENE_KMS_ADMIN_TOKEN").or_else(|| config.client.admin_token.clone()),
            os: env("SELENE_KMS_OS_TOKEN").or_else(|| config.client.os_token.clone()),
            executor: env("SELENE_KMS_EXECUTOR_TOKEN"),
        })
    }

    /// A client of `url` with the given tokens (quickstart, tests).
    pub(crate) fn with_tokens(url: String, admin: String, os: String, executor: String) -> Self {
        Self {
            http: reqwest::Client::new(),
            url,
            admin: Some(admin),
            os: Some(os),
            executor: Some(executor),
        }
    }

    /// Sends one request.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        who: As,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, String> {
        let token = match who {
            As::Admin => self
                .admin
                .as_ref()
                .ok_or("no admin token: set SELENE_KMS_ADMIN_TOKEN or [client].admin_token")?,
            As::Os => self
                .os
                .as_ref()
                .ok_or("no os token: set SELENE_KMS_OS_TOKEN or [client].os_token")?,
            As::Executor => self
                .executor
                .as_ref()
                .ok_or("no executor token: set SELENE_KMS_EXECUTOR_TOKEN")?,
        };
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token);
        if let Some(b) = body {
            request = request.json(b);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("cannot reach {}: {}", self.url, e.without_url()))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("reading the answer: {}", e.without_url()))?
            .to_vec();
        Ok(Answer { status, body })
    }

    /// Sends a KMS request as the `os` caller.
    pub(crate) async fn kms(&self, request: &serde_json::Value) -> Result<Answer, String> {
        self.send(Method::POST, "/v1/kms/requests", As::Os, Some(request))
            .await
    }
}
