//! The HTTP surface over TLS (`serve --http-tls`): the coordinator's own certificate
//! and key (the gRPC ones in `--tls-dir`), HTTP/1.1 and HTTP/2 by ALPN. No client
//! certificate is asked for: every route keeps its bearer token, exactly as over
//! plain HTTP, so TLS adds confidentiality for the tokens and the abort reason, not a
//! second way in.
//!
//! Invariants: a handshake that fails or stalls (10 s) costs one task and nothing
//! else; the caller's address reaches handlers as `ConnectInfo<SocketAddr>`, as it
//! does over plain HTTP, so the audit log records the same peer either way.
use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use axum::{Extension, Router, extract::ConnectInfo};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};
use tracing::{debug, warn};

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS acceptor for the certificate chain and key in PEM.
pub fn acceptor(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsAcceptor> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("coordinator.pem: no certificate in PEM")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("coordinator.key: no private key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("coordinator.pem / coordinator.key")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` over TLS on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving the rest.
                    warn!("HTTPS accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let app = router
            .clone()
            .layer(Extension(ConnectInfo::<SocketAddr>(peer)));
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(%peer, "HTTPS handshake: {e}"),
                Err(_) => return debug!(%peer, "HTTPS handshake timed out"),
            };
            let served = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                .await;
            if let Err(e) = served {
                debug!(%peer, "HTTPS connection: {e}");
            }
        });
    }
}
