//! Connection strings: parsing into a client configuration and a TLS mode (`sslmode`,
//! `sslrootcert`, with libpq's meanings), and redaction for logs and errors.
//!
//! A connection string may carry a password (`postgres://user:PASSWORD@host/db`, a `password=`
//! query parameter, or `password=…` in the key/value form). Nothing in this crate prints one:
//! errors and `Debug` output name the target through [`redact`] only, and a parse failure never
//! quotes the string (the client library's own `Debug` is not relied upon either).

use percent_encoding::percent_decode_str;
use selene_kms_store::backend::{ErrorKind, StoreError, StoreResult};
use std::path::PathBuf;
use std::time::Duration;

/// What replaces a password.
const HIDDEN: &str = "***";
/// How long opening one connection may take, unless the connection string says otherwise.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection string with every password replaced by `***`, safe to log.
///
/// Understands the URL form (`postgres://` or `postgresql://`, password in the user info or as
/// a `password` query parameter) and the key/value form (`host=… password='…'`). A string that
/// fits neither is replaced whole, since a password inside it could not be found reliably.
pub fn redact(url: &str) -> String {
    let url_form = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme).map(|rest| (*scheme, rest)));
    match url_form {
        Some((scheme, rest)) => format!("{scheme}{}", redact_url_body(rest)),
        None => redact_key_values(url).unwrap_or_else(|| "<connection string>".to_owned()),
    }
}

/// Redacts the part of a URL after `scheme://`.
fn redact_url_body(rest: &str) -> String {
    // The user info ends at the last `@` of the whole string, not of the part before the query:
    // an unencoded `@`, `?` or `/` in a password then still counts as part of it. An `@` later
    // in the string only makes the redaction hide more, never less.
    let out = match rest.rsplit_once('@') {
        Some((userinfo, after)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{HIDDEN}@{after}"),
            None => rest.to_owned(),
        },
        None => rest.to_owned(),
    };
    match out.split_once('?') {
        Some((before, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}={HIDDEN}")
                    }
                    _ => param.to_owned(),
                })
                .collect();
            format!("{before}?{}", params.join("&"))
        }
        None => out,
    }
}

/// Redacts the key/value form, or `None` when it does not scan as one.
fn redact_key_values(text: &str) -> Option<String> {
    let pairs: Vec<String> = key_values(text)?
        .into_iter()
        .map(|(key, value)| match key {
            "password" => format!("{key}={HIDDEN}"),
            _ => format!("{key}={value}"),
        })
        .collect();
    Some(pairs.join(" "))
}

/// The pairs of the key/value form, each value as written (quoted or bare), or `None` when the
/// text does not scan as that form.
fn key_values(text: &str) -> Option<Vec<(&str, &str)>> {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let key_end = rest.find(|c: char| c == '=' || c.is_whitespace())?;
        let (key, after_key) = rest.split_at(key_end);
        let after_eq = after_key.trim_start().strip_prefix('=')?.trim_start();
        let value_len = value_len(after_eq)?;
        let (value, tail) = after_eq.split_at(value_len);
        if key.is_empty() {
            return None;
        }
        out.push((key, value));
        rest = tail.trim_start();
    }
    Some(out)
}

/// A value of the key/value form as the client library reads it: quotes removed, backslash
/// escapes resolved.
fn unquote(value: &str) -> String {
    let inner = value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .unwrap_or(value);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// The length of one value of the key/value form: quoted (with backslash escapes) or bare.
fn value_len(text: &str) -> Option<usize> {
    let Some(quoted) = text.strip_prefix('\'') else {
        return Some(text.find(char::is_whitespace).unwrap_or(text.len()));
    };
    let mut escaped = false;
    for (i, c) in quoted.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '\'' => return Some(i + 2),
            _ => {}
        }
    }
    None
}

/// How a connection is protected: the string's `sslmode`, with libpq's meanings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SslMode {
    /// Plaintext.
    Disable,
    /// TLS without verification when the server offers it, plaintext when it does not (the
    /// default, as in libpq): no protection against an active attacker, none against a server
    /// that declines TLS, but no plaintext on the wire when the server has TLS on.
    Prefer,
    /// TLS, the server's certificate not verified: guards against eavesdropping only.
    Require,
    /// TLS, the certificate chain verified against the roots in this file, any host name.
    VerifyCa(PathBuf),
    /// TLS, the chain verified against the roots in this file and the host name against the
    /// certificate.
    VerifyFull(PathBuf),
}

/// A parsed connection string: what the client library reads, and how TLS is used. No `Debug`:
/// the client configuration holds the password.
pub(crate) struct Target {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) ssl: SslMode,
}

/// The TLS parameters the client library does not understand (`verify-ca`, `verify-full`,
/// `sslrootcert`): taken out of the string before it is parsed, and read here.
#[derive(Default)]
struct SslParams {
    mode: Option<String>,
    root_cert: Option<String>,
}

impl SslParams {
    /// Takes `key`'s value if it is one of ours; later occurrences win, as in libpq.
    fn take(&mut self, key: &str, value: String) -> bool {
        match key {
            "sslmode" => self.mode = Some(value),
            "sslrootcert" => self.root_cert = Some(value),
            _ => return false,
        }
        true
    }
}

/// Parses a connection string into a client configuration, with a connect timeout and an
/// application name unless the string sets them. The error never quotes the string.
pub(crate) fn parse(url: &str) -> StoreResult<Target> {
    let invalid = || {
        StoreError::new(
            ErrorKind::Invalid,
            format!(
                "the PostgreSQL connection string does not parse: {}",
                redact(url)
            ),
        )
    };
    let (rest, params) = split_ssl_params(url).ok_or_else(invalid)?;
    let mut config: tokio_postgres::Config = rest.parse().map_err(|_| invalid())?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("selene-kms");
    }
    let mut ssl = ssl_mode(params)?;
    // PostgreSQL has no TLS on a unix socket (the server declines it there), and libpq ignores
    // `sslmode` for one: so does the store when every host is a socket.
    let only_sockets = !config.get_hosts().is_empty()
        && config.get_hostaddrs().is_empty()
        && config
            .get_hosts()
            .iter()
            .all(|host| matches!(host, tokio_postgres::config::Host::Unix(_)));
    if only_sockets {
        ssl = SslMode::Disable;
    }
    config.ssl_mode(match ssl {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa(_) | SslMode::VerifyFull(_) => {
            tokio_postgres::config::SslMode::Require
        }
    });
    Ok(Target { config, ssl })
}

/// The mode the parameters ask for.
fn ssl_mode(params: SslParams) -> StoreResult<SslMode> {
    let root = params.root_cert.map(PathBuf::from);
    let needs_root = |mode: &str| {
        StoreError::new(
            ErrorKind::Invalid,
            format!(
                "postgres: sslmode={mode} needs sslrootcert=PATH (a PEM file of the CA \
                 certificates to trust)"
            ),
        )
    };
    Ok(match params.mode.as_deref() {
        None | Some("prefer") => SslMode::Prefer,
        Some("disable") => SslMode::Disable,
        // libpq verifies the chain under `require` too when a root certificate is given.
        Some("require") => root.map_or(SslMode::Require, SslMode::VerifyCa),
        Some("verify-ca") => SslMode::VerifyCa(root.ok_or_else(|| needs_root("verify-ca"))?),
        Some("verify-full") => SslMode::VerifyFull(root.ok_or_else(|| needs_root("verify-full"))?),
        Some(_) => {
            return Err(StoreError::new(
                ErrorKind::Invalid,
                "postgres: sslmode must be disable, prefer, require, verify-ca or verify-full",
            ));
        }
    })
}

/// The string without its `sslmode` and `sslrootcert` parameters, and their values; `None` when
/// a value is not valid percent-encoded UTF-8. A key/value string that does not scan is
/// returned whole, for the client library to refuse.
fn split_ssl_params(url: &str) -> Option<(String, SslParams)> {
    let mut params = SslParams::default();
    let url_form = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme).map(|rest| (*scheme, rest)));
    if let Some((scheme, body)) = url_form {
        // Where the client library finds the query: the first `?` after the first `@`.
        let query_from = body.find('@').map_or(0, |at| at + 1);
        let Some(query_at) = body[query_from..].find('?').map(|q| q + query_from) else {
            return Some((url.to_owned(), params));
        };
        let (before, query) = (&body[..query_at], &body[query_at + 1..]);
        let mut kept = Vec::new();
        for param in query.split('&') {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            let key = percent_decode_str(key).decode_utf8().ok()?;
            let value = percent_decode_str(value).decode_utf8().ok()?;
            if !params.take(&key, value.into_owned()) {
                kept.push(param);
            }
        }
        let query = if kept.is_empty() {
            String::new()
        } else {
            format!("?{}", kept.join("&"))
        };
        return Some((format!("{scheme}{before}{query}"), params));
    }
    let Some(pairs) = key_values(url) else {
        return Some((url.to_owned(), params));
    };
    let mut kept = Vec::new();
    for (key, value) in pairs {
        if !params.take(key, unquote(value)) {
            kept.push(format!("{key}={value}"));
        }
    }
    Some((kept.join(" "), params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_in_every_form() {
        for (input, expected) in [
            (
                "postgres://kms:s3cret@db.internal:5432/kms",
                "postgres://kms:***@db.internal:5432/kms",
            ),
            (
                "postgresql://kms:p%40ss@h1,h2/kms?sslmode=require",
                "postgresql://kms:***@h1,h2/kms?sslmode=require",
            ),
            (
                "postgres://kms:we@ird@host/kms",
                "postgres://kms:***@host/kms",
            ),
            (
                "postgres://kms:s3cret?a/b@host/kms",
                "postgres://kms:***@host/kms",
            ),
            (
                "postgres:///kms?password=s3cret&application_name=a@b",
                "postgres:///kms?password=***&application_name=a@b",
            ),
            (
                "postgres:///kms?host=/run/pg&password=s3cret&user=kms",
                "postgres:///kms?host=/run/pg&password=***&user=kms",
            ),
            (
                "postgres://kms@host/kms?PASSWORD=s3cret",
                "postgres://kms@host/kms?PASSWORD=***",
            ),
            ("postgres://host/kms", "postgres://host/kms"),
            (
                "postgres://kms:s3cret@db:5432/kms?sslmode=verify-full&sslrootcert=/etc/ca.pem",
                "postgres://kms:***@db:5432/kms?sslmode=verify-full&sslrootcert=/etc/ca.pem",
            ),
            (
                "host=db sslmode=verify-full sslrootcert='/etc/ca.pem' password=s3cret",
                "host=db sslmode=verify-full sslrootcert='/etc/ca.pem' password=***",
            ),
            (
                "host=/run/pg user=kms password=s3cret dbname=kms",
                "host=/run/pg user=kms password=*** dbname=kms",
            ),
            (
                "host=h password = 'it\\'s s3cret' dbname=kms",
                "host=h password=*** dbname=kms",
            ),
            (
                "user=kms password='unterminated s3cret",
                "<connection string>",
            ),
            ("not a connection string s3cret", "<connection string>"),
        ] {
            let redacted = redact(input);
            assert_eq!(redacted, expected, "{input}");
            assert!(!redacted.contains("s3cret"));
        }
    }

    #[test]
    fn a_string_that_does_not_parse_is_not_quoted() {
        let Err(err) = parse("postgres://kms:s3cret@host:notaport/kms") else {
            panic!("a bad port parses");
        };
        assert_eq!(err.kind, ErrorKind::Invalid);
        assert!(!err.message.contains("s3cret"), "{}", err.message);
        assert!(!format!("{err:?}").contains("s3cret"));
    }

    #[test]
    fn defaults_are_filled_in_but_never_override_the_string() {
        let config = parse("postgres://kms@host/kms?connect_timeout=3&application_name=x")
            .expect("parses")
            .config;
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(config.get_application_name(), Some("x"));
        let config = parse("postgres://kms@host/kms").expect("parses").config;
        assert_eq!(config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert_eq!(config.get_application_name(), Some("selene-kms"));
    }

    fn ssl_of(url: &str) -> (SslMode, tokio_postgres::config::SslMode) {
        match parse(url) {
            Ok(target) => (target.ssl, target.config.get_ssl_mode()),
            Err(e) => panic!("{url}: {e}"),
        }
    }

    fn refused(url: &str) -> StoreError {
        match parse(url) {
            Ok(_) => panic!("{url} parses"),
            Err(e) => e,
        }
    }

    #[test]
    fn sslmode_takes_the_libpq_meanings() {
        use tokio_postgres::config::SslMode as Wire;
        let ca = || PathBuf::from("/etc/kms/ca.pem");
        for (url, ssl, wire) in [
            ("postgres://kms@db/kms", SslMode::Prefer, Wire::Prefer),
            (
                "postgres://kms@db/kms?sslmode=disable",
                SslMode::Disable,
                Wire::Disable,
            ),
            (
                "postgres://kms@db/kms?sslmode=prefer",
                SslMode::Prefer,
                Wire::Prefer,
            ),
            (
                "postgres://kms@db/kms?sslmode=require",
                SslMode::Require,
                Wire::Require,
            ),
            (
                "postgres://kms@db/kms?sslmode=verify-ca&sslrootcert=/etc/kms/ca.pem",
                SslMode::VerifyCa(ca()),
                Wire::Require,
            ),
            (
                "postgres://kms@db/kms?sslrootcert=%2Fetc%2Fkms%2Fca.pem&sslmode=verify-full",
                SslMode::VerifyFull(ca()),
                Wire::Require,
            ),
            // libpq checks the chain under `require` when a root certificate is named.
            (
                "postgres://kms@db/kms?sslmode=require&sslrootcert=/etc/kms/ca.pem",
                SslMode::VerifyCa(ca()),
                Wire::Require,
            ),
            // The last occurrence wins.
            (
                "postgres://kms@db/kms?sslmode=verify-full&sslmode=disable",
                SslMode::Disable,
                Wire::Disable,
            ),
            (
                "host=db sslmode=verify-full sslrootcert='/etc/kms/ca.pem' dbname=kms",
                SslMode::VerifyFull(ca()),
                Wire::Require,
            ),
            (
                "host=db sslmode = require user=kms",
                SslMode::Require,
                Wire::Require,
            ),
            // No TLS exists on a unix socket: libpq ignores `sslmode` there, and so do we.
            (
                "postgres://kms@/kms?host=/run/pg&sslmode=verify-full&sslrootcert=/x",
                SslMode::Disable,
                Wire::Disable,
            ),
            (
                "host=/run/pg sslmode=require",
                SslMode::Disable,
                Wire::Disable,
            ),
        ] {
            assert_eq!(ssl_of(url), (ssl, wire), "{url}");
        }
    }

    #[test]
    fn a_path_with_spaces_and_quotes_survives_both_forms() {
        let path = PathBuf::from("/etc/my kms/it's.pem");
        for url in [
            "postgres://kms@db/kms?sslmode=verify-full&sslrootcert=/etc/my%20kms/it's.pem",
            "host=db sslmode=verify-full sslrootcert='/etc/my kms/it\\'s.pem'",
        ] {
            assert_eq!(ssl_of(url).0, SslMode::VerifyFull(path.clone()), "{url}");
        }
    }

    #[test]
    fn the_other_parameters_are_kept() {
        let target = parse(
            "postgres://kms:pw@db:6432/kms?application_name=x&sslmode=require&connect_timeout=3",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(target.config.get_application_name(), Some("x"));
        assert_eq!(target.config.get_dbname(), Some("kms"));
        assert_eq!(target.config.get_ports(), [6432]);
        assert_eq!(target.config.get_password(), Some(&b"pw"[..]));
        assert_eq!(
            target.config.get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
        let target = parse("host=db sslmode=require password='a b' dbname=kms")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(target.config.get_password(), Some(&b"a b"[..]));
        assert_eq!(target.config.get_dbname(), Some("kms"));
    }

    #[test]
    fn verification_without_a_root_certificate_or_an_unknown_mode_is_refused() {
        for url in [
            "postgres://kms:s3cret@db/kms?sslmode=verify-full",
            "postgres://kms:s3cret@db/kms?sslmode=verify-ca",
            "postgres://kms:s3cret@db/kms?sslmode=allow",
            "postgres://kms:s3cret@db/kms?sslmode=VERIFY-FULL",
            "postgres://kms:s3cret@db/kms?sslrootcert=%FF&sslmode=verify-full",
            "host=db password=s3cret sslmode=verify-full",
        ] {
            let err = refused(url);
            assert_eq!(err.kind, ErrorKind::Invalid, "{url}");
            assert!(!err.message.contains("s3cret"), "{}", err.message);
        }
        assert!(
            refused("postgres://kms@db/kms?sslmode=verify-full")
                .message
                .contains("needs sslrootcert")
        );
    }
}
