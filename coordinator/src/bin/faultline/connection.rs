//! The connection to the coordinator: TLS with its CA, and the bearer token on
//! every call.
use std::time::Duration;

use faultline_proto::v1::chaos_service_client::ChaosServiceClient;
use tonic::{
    Request,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use crate::{
    args::Cli,
    exit::{Fail, INFRA, usage},
};

pub async fn connect(cli: &Cli) -> Result<ChaosServiceClient<Channel>, Fail> {
    let ca =
        std::fs::read(&cli.ca).map_err(|e| usage(format!("--ca {}: {e}", cli.ca.display())))?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(n) = &cli.tls_server_name {
        tls = tls.domain_name(n.clone());
    }
    let channel = Endpoint::from_shared(cli.coordinator.clone())
        .map_err(|e| usage(format!("--coordinator: {e}")))?
        .tls_config(tls)
        .map_err(|e| Fail(INFRA, format!("TLS: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| {
            Fail(
                INFRA,
                format!(
                    "cannot reach the coordinator at {}: {}",
                    cli.coordinator,
                    causes(&e)
                ),
            )
        })?;
    Ok(ChaosServiceClient::new(channel))
}

/// An error and its sources, `a: b: c`.
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out = format!("{out}: {s}");
        next = s.source();
    }
    out
}

/// `msg` with the caller's bearer token.
pub fn authed<T>(cli: &Cli, msg: T) -> Result<Request<T>, Fail> {
    let token = cli
        .token
        .as_deref()
        .ok_or_else(|| usage("no token: set FAULTLINE_TOKEN (or --token)"))?;
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| usage("the token contains characters a header cannot carry"))?,
    );
    Ok(req)
}
