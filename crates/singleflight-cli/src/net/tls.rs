//! TLS settings from files: a listener's certificate and key, the roots an
//! HTTPS upstream is checked against, and a certificate error said in one
//! line with its fix.
//!
//! rustls on the `ring` provider throughout: no OpenSSL, no C build beyond ring's.

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::BadInput;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file; `flag` names where the path came from.
fn certificates(path: &Path, flag: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bad = |why: String| BadInput::new(format!("{flag} {}: {why}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(format!("{e}; give a PEM file of certificates")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("{e}; give a PEM file of certificates")))?;
    if certs.is_empty() {
        return Err(bad(
            "no certificate in it; give a PEM file with -----BEGIN CERTIFICATE----- blocks".into(),
        )
        .into());
    }
    Ok(certs)
}

/// The TLS settings of a listener: its certificate chain and key, ALPN `h2`
/// then `http/1.1`.
pub(crate) fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let chain = certificates(cert, "--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        BadInput::new(format!(
            "--tls-key {}: {e}; give the certificate's private key as PEM",
            key.display()
        ))
    })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS protocol versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            BadInput::new(format!(
                "--tls-cert and --tls-key do not go together: {e}; give the key of that certificate"
            ))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS settings for HTTPS upstreams: the platform's root certificates,
/// plus those of `extra_ca` (`--upstream-ca`). ALPN is set by the connector.
pub(crate) fn client_config(extra_ca: Option<&Path>) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!("reading the platform's root certificates: {error}");
    }
    let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        for cert in certificates(path, "--upstream-ca")? {
            roots.add(cert).map_err(|e| {
                BadInput::new(format!(
                    "--upstream-ca {}: {e}; give the CA certificate as PEM",
                    path.display()
                ))
            })?;
        }
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS protocol versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The rustls error somewhere in `error`'s chain, if any. rustls errors
/// travel inside `io::Error`s (nested, as the connector wraps tokio-rustls's),
/// whose `source()` skips the error they wrap, so each is opened too.
fn rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// A certificate error in `error`'s chain as one line naming `host` and
/// the fix; `None` when the error is not about a certificate.
pub(crate) fn certificate_problem(
    error: &(dyn std::error::Error + 'static),
    host: &str,
) -> Option<String> {
    use rustls::CertificateError as C;
    let rustls::Error::InvalidCertificate(problem) = rustls_error(error)? else {
        return None;
    };
    let fix = match problem {
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "use a host name the certificate names in the URL"
        }
        C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
            "renew the upstream's certificate, or check this machine's clock"
        }
        _ => "if it is signed by your own CA, pass that CA's certificate with --upstream-ca FILE",
    };
    Some(format!(
        "the TLS certificate of {host} is not trusted ({}); {fix}",
        rustls::Error::InvalidCertificate(problem.clone())
    ))
}
