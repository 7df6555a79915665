//! What went wrong with a call, with the server's reason code when it gave one.

use std::fmt;

/// A failed call.
#[derive(Debug)]
pub enum Error {
    /// The server refused the request (a 4xx answer). `body` is the answer as sent: a refusal
    /// bundle on `POST /v1/kms/requests` and redemption, `{"reason_code","message"}` elsewhere.
    Refused {
        /// The HTTP status.
        status: u16,
        /// The reason code, when the answer names one.
        reason_code: Option<String>,
        /// What the server said: an error's message and a bundle's diagnostics.
        detail: String,
        /// The answer's body, parsed (`Null` when it was not JSON).
        body: serde_json::Value,
    },
    /// The server answered 5xx.
    Server {
        /// The HTTP status.
        status: u16,
        /// The reason code, when the answer names one.
        reason_code: Option<String>,
        /// What the server said.
        detail: String,
    },
    /// No answer: the connection was refused, TLS failed (the cause says why), or it timed out.
    Unreachable(String),
    /// A local error: a certificate file that does not parse, an answer that is not the
    /// expected shape.
    Invalid(String),
}

impl Error {
    /// The server's reason code, when it gave one.
    pub fn reason_code(&self) -> Option<&str> {
        match self {
            Self::Refused { reason_code, .. } | Self::Server { reason_code, .. } => {
                reason_code.as_deref()
            }
            Self::Unreachable(_) | Self::Invalid(_) => None,
        }
    }

    /// Whether a retry may succeed: the server was not reached or failed, and did not refuse.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable(_))
            || matches!(self, Self::Server { status, .. } if matches!(status, 502..=504))
    }

    /// The error for a non-success answer: a refusal (4xx) or a server error (5xx), with
    /// the reason code and what the server said.
    pub fn from_answer(status: u16, body: &[u8]) -> Self {
        let body: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let reason_code = body["reason_code"].as_str().map(str::to_owned);
        let said: Vec<&str> = body["message"]
            .as_str()
            .into_iter()
            .chain(
                body["diagnostics"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|d| d.as_str()),
            )
            .collect();
        let detail = format!(
            "{} ({status}){}",
            reason_code.as_deref().unwrap_or("HTTP"),
            if said.is_empty() {
                String::new()
            } else {
                format!(": {}", said.join("; "))
            }
        );
        if status >= 500 {
            Self::Server {
                status,
                reason_code,
                detail,
            }
        } else {
            Self::Refused {
                status,
                reason_code,
                detail,
                body,
            }
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused { detail, .. } | Self::Server { detail, .. } => f.write_str(detail),
            Self::Unreachable(why) | Self::Invalid(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Error {}

/// What a reqwest error says, in words a user can act on: the innermost cause (connection
/// refused, a certificate not trusted and why), or a timeout.
pub(crate) fn unreachable(url: &str, e: &reqwest::Error) -> Error {
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    let what = if e.is_timeout() {
        "no answer in time".to_owned()
    } else {
        cause.to_string()
    };
    Error::Unreachable(format!("cannot reach {}: {what}", without_credentials(url)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_becomes_a_refusal_or_a_server_error_with_what_the_server_said() {
        let refused = Error::from_answer(
            403,
            br#"{"validation_status":"FAIL","reason_code":"KMS_NOT_AUTHORIZED","diagnostics":["policy:no_matching_rule"]}"#,
        );
        assert_eq!(refused.reason_code(), Some("KMS_NOT_AUTHORIZED"));
        assert_eq!(
            refused.to_string(),
            "KMS_NOT_AUTHORIZED (403): policy:no_matching_rule"
        );
        assert!(!refused.is_transient());
        let failing = Error::from_answer(503, b"not json");
        assert_eq!(failing.to_string(), "HTTP (503)");
        assert!(failing.is_transient());
    }

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
