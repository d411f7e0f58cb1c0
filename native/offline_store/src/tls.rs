//! TLS to Cassandra through rustls (no system OpenSSL, so the NIF loads on any EMQX image).
//!
//! The driver names the server by the node's IP address, so by default the certificate must
//! carry that IP in its subject alternative names. `server_name` checks a DNS name instead
//! (and is what the check uses for every node). `verify = false` accepts any certificate:
//! encryption without authentication, for tests only.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::StoreError;

/// TLS settings, as the plugin's `ssl` section gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file of the CA(s) that signed Cassandra's certificate (required with `verify`).
    pub ca_file: Option<String>,
    /// PEM client certificate and its PKCS#8/PKCS#1/SEC1 key, for mutual TLS.
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    /// Check the server certificate (chain and name); on by default. Off: encryption only,
    /// and the password goes to whoever answers (the plugin warns).
    pub verify: bool,
    /// DNS name the server certificate must carry; empty: the node's IP address.
    pub server_name: Option<String>,
}

/// Verification is on unless turned off: without it the password crosses a channel that
/// anyone in the path can answer.
impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca_file: None,
            cert_file: None,
            key_file: None,
            verify: true,
            server_name: None,
        }
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> StoreError {
    StoreError::InvalidConfig {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Builds the rustls client configuration; every file problem is an error naming its field.
pub fn client_config(tls: &TlsConfig) -> Result<Arc<ClientConfig>, StoreError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("ssl", e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = if tls.verify {
        let ca_file = tls
            .ca_file
            .as_deref()
            .filter(|f| !f.is_empty())
            .ok_or_else(|| invalid("ssl.cafile", "is required when ssl.verify is true"))?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| invalid("ssl.cafile", format!("{ca_file}: {e}")))?
        {
            let cert = cert.map_err(|e| invalid("ssl.cafile", format!("{ca_file}: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| invalid("ssl.cafile", format!("{ca_file}: {e}")))?;
        }
        if roots.is_empty() {
            return Err(invalid(
                "ssl.cafile",
                format!("{ca_file} holds no certificate"),
            ));
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| invalid("ssl.cafile", e.to_string()))?;
        let name = match tls.server_name.as_deref().filter(|n| !n.is_empty()) {
            Some(n) => Some(
                ServerName::try_from(n.to_owned())
                    .map_err(|e| invalid("ssl.server_name", format!("{n:?}: {e}")))?,
            ),
            None => None,
        };
        Arc::new(NamedVerifier {
            inner: webpki,
            name,
        })
    } else {
        Arc::new(AcceptAny(provider))
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let cert_file = tls.cert_file.as_deref().filter(|f| !f.is_empty());
    let key_file = tls.key_file.as_deref().filter(|f| !f.is_empty());
    let config = match (cert_file, key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert_file), Some(key_file)) => {
            let certs = CertificateDer::pem_file_iter(cert_file)
                .map_err(|e| invalid("ssl.certfile", format!("{cert_file}: {e}")))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid("ssl.certfile", format!("{cert_file}: {e}")))?;
            let key = PrivateKeyDer::from_pem_file(key_file)
                .map_err(|e| invalid("ssl.keyfile", format!("{key_file}: {e}")))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| invalid("ssl.keyfile", e.to_string()))?
        }
        (Some(_), None) => return Err(invalid("ssl.keyfile", "is required with ssl.certfile")),
        (None, Some(_)) => return Err(invalid("ssl.certfile", "is required with ssl.keyfile")),
    };
    Ok(Arc::new(config))
}

/// The standard chain and name check, against `name` when one is configured.
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: Option<ServerName<'static>>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = self.name.as_ref().unwrap_or(server_name);
        self.inner
            .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `verify = false`: any certificate is accepted (handshake signatures are still checked).
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(e: StoreError) -> String {
        match e {
            StoreError::InvalidConfig { field, .. } => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn file_problems_name_their_field() {
        let base = TlsConfig::default();
        assert!(base.verify, "verification is the default");
        assert_eq!(field(client_config(&base).unwrap_err()), "ssl.cafile");
        let missing = TlsConfig {
            ca_file: Some("/no/such/ca.pem".into()),
            ..base.clone()
        };
        assert_eq!(field(client_config(&missing).unwrap_err()), "ssl.cafile");
        let half = TlsConfig {
            verify: false,
            cert_file: Some("/no/such/cert.pem".into()),
            ..TlsConfig::default()
        };
        assert_eq!(field(client_config(&half).unwrap_err()), "ssl.keyfile");
        let no_verify = TlsConfig {
            verify: false,
            ..TlsConfig::default()
        };
        assert!(client_config(&no_verify).is_ok());
    }
}
