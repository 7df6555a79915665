//! An HTTP client of a running selene-kms server.

use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::Connection;
use crate::config::Config;
use crate::failure::Failure;

/// Which token a call uses.
#[derive(Clone, Copy, Debug)]
pub(crate) enum As {
    Admin,
    Os,
    Executor,
    /// No token: the routes anyone may read.
    Anyone,
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

    /// The reason code of a refusal or error body, or the status, and what the server said
    /// about it (an error's message, a bundle's diagnostics).
    pub(crate) fn describe(&self) -> String {
        let v = self.json();
        let mut said = format!("HTTP {}", self.status.as_u16());
        if let Some(code) = v.get("reason_code").and_then(|r| r.as_str()) {
            said = format!("{code} ({})", self.status.as_u16());
        }
        let message = v.get("message").and_then(|m| m.as_str());
        let diagnostics = v.get("diagnostics").and_then(|d| d.as_array());
        let details: Vec<&str> = message
            .into_iter()
            .chain(diagnostics.into_iter().flatten().filter_map(|d| d.as_str()))
            .collect();
        if !details.is_empty() {
            said = format!("{said}: {}", details.join("; "));
        }
        said
    }

    /// The failure this answer is, for `what` the command did: refused (4xx) or failing (5xx).
    pub(crate) fn failure(&self, what: &str) -> Failure {
        let reason_code = self
            .json()
            .get("reason_code")
            .and_then(|r| r.as_str())
            .map(str::to_owned);
        let message = format!("{what} refused: {}", self.describe());
        if self.status.is_server_error() {
            Failure::Unreachable {
                reason_code,
                message,
            }
        } else {
            Failure::Refused {
                reason_code,
                message,
            }
        }
    }
}

/// What went wrong with a request that got no answer, in words a user can act on: the
/// innermost cause (connection refused, a certificate not trusted and why, a timeout).
fn unreachable(url: &str, e: &reqwest::Error) -> Failure {
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    let what = if e.is_timeout() {
        "no answer in time".to_owned()
    } else {
        cause.to_string()
    };
    Failure::Unreachable {
        reason_code: None,
        message: format!("cannot reach {}: {what}", without_credentials(url)),
    }
}

/// A URL as it may be shown: without a user name or password in it.
fn without_credentials(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.has_authority() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string().trim_end_matches('/').to_owned()
        }
        _ => "the server".to_owned(),
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
    ) -> Result<Answer, Failure> {
        let token = match who {
            As::Admin => Some(
                self.admin
                    .as_ref()
                    .ok_or("no admin token: set SELENE_KMS_ADMIN_TOKEN or [client].admin_token")?,
            ),
            As::Os => Some(
                self.os
                    .as_ref()
                    .ok_or("no os token: set SELENE_KMS_OS_TOKEN or [client].os_token")?,
            ),
            As::Executor => Some(
                self.executor
                    .as_ref()
                    .ok_or("no executor token: set SELENE_KMS_EXECUTOR_TOKEN")?,
            ),
            As::Anyone => None,
        };
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(b) = body {
            request = request.json(b);
        }
        let response = request
            .send()
            .await
            .map_err(|e| unreachable(&self.url, &e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| unreachable(&self.url, &e))?
            .to_vec();
        Ok(Answer { status, body })
    }

    /// Sends a KMS request as the `os` caller.
    pub(crate) async fn kms(&self, request: &serde_json::Value) -> Result<Answer, Failure> {
        self.send(Method::POST, "/v1/kms/requests", As::Os, Some(request))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_credentials() {
        assert_eq!(
            without_credentials("https://ops:s3cret@kms.internal:8750/"),
            "https://kms.internal:8750"
        );
        assert_eq!(
            without_credentials("http://127.0.0.1:8750"),
            "http://127.0.0.1:8750"
        );
        assert_eq!(without_credentials("not a url s3cret"), "the server");
    }
}
