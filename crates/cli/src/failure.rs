//! Why a command failed, and so its exit code: 1 when the server refused (4xx), 2 for a usage or
//! local error, 3 when the server could not be reached or failed (5xx). A failure is a line on
//! stderr with what the server said about it, and with `--json` also
//! `{"error":{"reason_code","message"}}` on stdout (`reason_code` is null when no server gave
//! one).

use std::process::ExitCode;

use crate::output;

/// A command's failure.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server refused the request (a 4xx answer).
    Refused {
        reason_code: Option<String>,
        message: String,
    },
    /// A usage or local error: nothing reached a server, or a local check failed.
    Local(String),
    /// The server could not be reached, or answered with a 5xx.
    Unreachable {
        reason_code: Option<String>,
        message: String,
    },
}

impl Failure {
    /// The process's exit code for it.
    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Self::Refused { .. } => 1,
            Self::Local(_) => 2,
            Self::Unreachable { .. } => 3,
        })
    }

    fn parts(&self) -> (Option<&str>, &str) {
        match self {
            Self::Refused {
                reason_code,
                message,
            }
            | Self::Unreachable {
                reason_code,
                message,
            } => (reason_code.as_deref(), message),
            Self::Local(message) => (None, message),
        }
    }

    /// Tells the user: a line on stderr, and with `--json` the failure as JSON on stdout, where
    /// a program reading the command's output looks for it.
    pub(crate) fn report(&self, json: bool) {
        let (reason_code, message) = self.parts();
        output::fail(message);
        if json {
            output::json(&serde_json::json!({
                "error": { "reason_code": reason_code, "message": message }
            }));
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self::Local(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Self::Local(message.to_owned())
    }
}

/// Where only the words matter (the quickstart tells its story in text).
impl From<Failure> for String {
    fn from(failure: Failure) -> Self {
        failure.parts().1.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_failure_has_its_exit_code() {
        let refused = Failure::Refused {
            reason_code: Some("KMS_NOT_AUTHORIZED".into()),
            message: "m".into(),
        };
        let unreachable = Failure::Unreachable {
            reason_code: None,
            message: "m".into(),
        };
        assert_eq!(refused.exit_code(), ExitCode::from(1));
        assert_eq!(Failure::from("usage").exit_code(), ExitCode::from(2));
        assert_eq!(unreachable.exit_code(), ExitCode::from(3));
        assert_eq!(String::from(refused), "m");
    }
}
