//! TLS for database connections: rustls with the ring provider, set up from the connection
//! string's [`SslMode`].
//!
//! `prefer` and `require` encrypt without verifying who answers (libpq's meaning: a passive
//! eavesdropper learns nothing, an active one can impersonate the server); `verify-ca` checks the
//! certificate chain against `sslrootcert`, `verify-full` the host name too. Handshake signatures
//! are checked in every mode, so that the session keys belong to the certificate presented.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use selene_kms_store::backend::{ErrorKind, StoreError, StoreResult};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::url::SslMode;

/// The connector for `mode`. Under `disable` it is never used (the client does not ask the
/// server for TLS), but one connector type serves every mode.
pub(crate) fn connector(mode: &SslMode) -> StoreResult<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| invalid("postgres: no TLS protocol version is available".to_owned()))?;
    let config = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainVerifier {
                roots: None,
                algorithms,
            }))
            .with_no_client_auth(),
        SslMode::VerifyCa(path) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainVerifier {
                roots: Some(roots(path)?),
                algorithms,
            }))
            .with_no_client_auth(),
        SslMode::VerifyFull(path) => builder
            .with_root_certificates(roots(path)?)
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

fn invalid(message: String) -> StoreError {
    StoreError::new(ErrorKind::Invalid, message)
}

/// The CA certificates of a PEM file; every certificate in it must be usable as a root.
fn roots(path: &Path) -> StoreResult<RootCertStore> {
    let unreadable = |e: rustls::pki_types::pem::Error| {
        invalid(format!(
            "postgres: sslrootcert {} cannot be read: {e}",
            path.display()
        ))
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(unreadable)? {
        roots.add(cert.map_err(unreadable)?).map_err(|e| {
            invalid(format!(
                "postgres: sslrootcert {} holds a certificate that is not a usable CA: {e}",
                path.display()
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(invalid(format!(
            "postgres: sslrootcert {} holds no certificate",
            path.display()
        )));
    }
    Ok(roots)
}

/// Accepts a server certificate whose chain leads to one of `roots`, whatever names it holds
/// (`verify-ca`); with no roots, any certificate (`prefer`, `require`).
#[derive(Debug)]
struct ChainVerifier {
    roots: Option<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &ParsedCertificate::try_from(end_entity)?,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(mode: &SslMode) -> StoreError {
        match connector(mode) {
            Ok(_) => panic!("{mode:?} builds"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_root_certificate_file_that_is_missing_empty_or_not_a_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        for (path, says) in [
            (dir.path().join("missing.pem"), "cannot be read"),
            (empty, "holds no certificate"),
            (garbage, "not a usable CA"),
        ] {
            for mode in [
                SslMode::VerifyCa(path.clone()),
                SslMode::VerifyFull(path.clone()),
            ] {
                let err = refused(&mode);
                assert_eq!(err.kind, ErrorKind::Invalid, "{mode:?}");
                assert!(err.message.contains(says), "{mode:?}: {err}");
            }
        }
    }

    #[test]
    fn the_modes_without_a_root_certificate_need_no_file() {
        for mode in [SslMode::Disable, SslMode::Prefer, SslMode::Require] {
            assert!(connector(&mode).is_ok(), "{mode:?}");
        }
    }
}
