//! HTTPS: rustls (aws-lc-rs provider) in front of the same router. Certificate and key come
//! from PEM files; TLS 1.2 and 1.3 with rustls' safe defaults.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

pub use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use crate::Server;
use crate::error::{KmsError, Result};

/// Loads a certificate chain and private key (PEM) into a rustls server configuration.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| KmsError::Config(format!("cannot read TLS certificate {}: {e}", cert.display())))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| KmsError::Config(format!("bad PEM in {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(KmsError::Config(format!("{} holds no certificate", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| KmsError::Config(format!("cannot read TLS private key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| KmsError::Config(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| KmsError::Config(format!("TLS certificate and key do not fit: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves the AWS KMS API over HTTPS on `listener` until `shutdown` completes, then lets
/// in-flight requests finish (bounded). The same limits as plain HTTP apply
/// (see [`crate::server::serve`]), plus 10 s for the TLS handshake.
pub async fn serve_tls(
    listener: TcpListener,
    state: Arc<Server>,
    tls: Arc<ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::server::serve_connections(listener, state, Some(tokio_rustls::TlsAcceptor::from(tls)), shutdown).await
}
