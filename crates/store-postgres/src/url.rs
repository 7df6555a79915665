//! Connection strings: parsing into a client configuration, and redaction for logs and errors.
//!
//! A connection string may carry a password (`postgres://user:PASSWORD@host/db`, a `password=`
//! query parameter, or `password=…` in the key/value form). Nothing in this crate prints one:
//! errors and `Debug` output name the target through [`redact`] only, and a parse failure never
//! quotes the string (the client library's own `Debug` is not relied upon either).

use selene_kms_store::backend::{ErrorKind, StoreError, StoreResult};
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
        if key == "password" {
            out.push(format!("{key}={HIDDEN}"));
        } else {
            out.push(format!("{key}={value}"));
        }
        rest = tail.trim_start();
    }
    Some(out.join(" "))
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

/// Parses a connection string into a client configuration, with a connect timeout and an
/// application name unless the string sets them. The error never quotes the string.
pub(crate) fn parse(url: &str) -> StoreResult<tokio_postgres::Config> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|_| {
        StoreError::new(
            ErrorKind::Invalid,
            format!(
                "the PostgreSQL connection string does not parse: {}",
                redact(url)
            ),
        )
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("selene-kms");
    }
    Ok(config)
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
        let err = parse("postgres://kms:s3cret@host:notaport/kms").expect_err("bad port");
        assert_eq!(err.kind, ErrorKind::Invalid);
        assert!(!err.message.contains("s3cret"), "{}", err.message);
        assert!(!format!("{err:?}").contains("s3cret"));
    }

    #[test]
    fn defaults_are_filled_in_but_never_override_the_string() {
        let config =
            parse("postgres://kms@host/kms?connect_timeout=3&application_name=x").expect("parses");
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(config.get_application_name(), Some("x"));
        let config = parse("postgres://kms@host/kms").expect("parses");
        assert_eq!(config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert_eq!(config.get_application_name(), Some("selene-kms"));
    }
}
