//! The command line's client of a running server: the `selene-kms-client` crate, with the
//! token of the role each command acts as.

use reqwest::StatusCode;
use selene_kms_client::Method;

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

    /// The failure this answer is, for `what` the command did: refused (4xx) or failing (5xx),
    /// with the reason code and what the server said about it.
    pub(crate) fn failure(&self, what: &str) -> Failure {
        let error = selene_kms_client::Error::from_answer(self.status.as_u16(), &self.body);
        let reason_code = error.reason_code().map(str::to_owned);
        let message = format!("{what} refused: {error}");
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

impl From<selene_kms_client::Error> for Failure {
    fn from(error: selene_kms_client::Error) -> Self {
        let reason_code = error.reason_code().map(str::to_owned);
        let message = error.to_string();
        match error {
            selene_kms_client::Error::Invalid(why) => Self::Local(why),
            selene_kms_client::Error::Refused { .. } => Self::Refused {
                reason_code,
                message,
            },
            selene_kms_client::Error::Server { .. } | selene_kms_client::Error::Unreachable(_) => {
                Self::Unreachable {
                    reason_code,
                    message,
                }
            }
        }
    }
}

/// A configured client.
pub(crate) struct Client {
    inner: selene_kms_client::Client,
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
        // Every call of a command is sent once: a command the user retries is retried whole.
        let mut builder = selene_kms_client::Client::builder(url).retries(0);
        if let Some(ca) = conn.ca_cert.as_ref().or(config.client.ca_cert.as_ref()) {
            builder = builder
                .ca_certificate_pem(std::fs::read(ca).map_err(|e| format!("--ca-cert: {e}"))?);
        }
        if let Some(id) = conn
            .client_identity
            .as_ref()
            .or(config.client.client_identity.as_ref())
        {
            builder = builder.client_identity_pem(
                std::fs::read(id).map_err(|e| format!("--client-identity: {e}"))?,
            );
        }
        Ok(Self {
            inner: builder
                .build()
                .map_err(|e| format!("--ca-cert or --client-identity: {e}"))?,
            admin: env("SELENE_KMS_ADMIN_TOKEN").or_else(|| config.client.admin_token.clone()),
            os: env("SELENE_KMS_OS_TOKEN").or_else(|| config.client.os_token.clone()),
            executor: env("SELENE_KMS_EXECUTOR_TOKEN"),
        })
    }

    /// A client of `url` with the given tokens (quickstart, tests).
    pub(crate) fn with_tokens(
        url: String,
        admin: String,
        os: String,
        executor: String,
    ) -> Result<Self, String> {
        Ok(Self {
            inner: selene_kms_client::Client::builder(url)
                .build()
                .map_err(|e| e.to_string())?,
            admin: Some(admin),
            os: Some(os),
            executor: Some(executor),
        })
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
        let client = match token {
            Some(token) => self.inner.with_token(token.as_str()),
            None => self.inner.clone(),
        };
        let answer = client.call(method, path, body).await?;
        Ok(Answer {
            status: StatusCode::from_u16(answer.status)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body: answer.body,
        })
    }

    /// Sends a KMS request as the `os` caller.
    pub(crate) async fn kms(&self, request: &serde_json::Value) -> Result<Answer, Failure> {
        self.send(Method::POST, "/v1/kms/requests", As::Os, Some(request))
            .await
    }
}
