//! TLS with rustls (ring provider): server certificates, and client certificates (mTLS) when a
//! client CA is given.

use std::path::PathBuf;
use std::sync::Arc;

use axum_server::tls::TlsInfo;
use selene_kms_core::SpiffeId;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Where the TLS material is.
#[derive(Clone, Debug)]
pub struct TlsOptions {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed.
    pub client_ca: Option<PathBuf>,
}

fn io_error(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_owned())
}

impl TlsOptions {
    /// The rustls server configuration (HTTP/1.1 and HTTP/2 by ALPN).
    pub fn server_config(&self) -> std::io::Result<Arc<ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|_| io_error("--tls-cert: cannot read a PEM certificate chain"))?
            .collect::<Result<_, _>>()
            .map_err(|_| io_error("--tls-cert: not a PEM certificate chain"))?;
        if certs.is_empty() {
            return Err(io_error("--tls-cert: no certificate in the file"));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|_| io_error("--tls-key: cannot read a PEM private key"))?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|_| io_error("TLS: no usable protocol version"))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca)
                    .map_err(|_| io_error("--tls-client-ca: cannot read a PEM bundle"))?
                {
                    let cert = cert.map_err(|_| io_error("--tls-client-ca: not a PEM bundle"))?;
                    roots.add(cert).map_err(|_| {
                        io_error("--tls-client-ca: a certificate is not usable as a CA")
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|_| io_error("--tls-client-ca: no usable CA"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|_| io_error("--tls-key does not match --tls-cert"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The SPIFFE id of a connection's client certificate: the one URI SAN of the end-entity
/// certificate (an X.509-SVID carries exactly one), when it is a valid SPIFFE id. The chain was
/// verified against `--tls-client-ca` during the handshake, before any request was read.
pub(crate) fn peer_spiffe_id(info: &TlsInfo) -> Option<SpiffeId> {
    let der = info.peer_certificates.first()?;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    match (uris.next(), uris.next()) {
        (Some(uri), None) => SpiffeId::try_from(uri).ok(),
        _ => None,
    }
}
