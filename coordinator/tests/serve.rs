//! `serve` binds its ports before it announces itself: a gRPC or HTTP address in use
//! stops the start with that address named and a failing exit status, instead of a
//! process that logs "serving" and then dies (or that a readiness probe mistakes for
//! another listener's).
use std::process::Command;

mod common;

/// A second coordinator on the first one's gRPC port, or on its own free gRPC port
/// but the first one's HTTP port: refused at once, with the port named.
#[test]
fn an_address_in_use_stops_the_start_with_the_address_named() {
    let c = common::start("in-use", &[], common::Role::Viewer, &[]);
    let grpc = c.url.trim_start_matches("https://").to_owned();
    let d = |p: &str| c.dir.join(p).display().to_string();
    for (listen, http, named) in [
        (grpc.as_str(), "127.0.0.1:0", format!("bind gRPC {grpc}")),
        (
            "127.0.0.1:0",
            c.http.as_str(),
            format!("bind HTTP {}", c.http),
        ),
    ] {
        let out = Command::new(common::BIN)
            .args(["serve", "--listen", listen, "--http", http])
            .args(["--tls-dir", &d("tls"), "--tokens", &d("tokens.yaml")])
            .args(["--store", &d("db/second.db")])
            .env("RUST_LOG", "info")
            .output()
            .expect("run a second coordinator");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{listen} / {http}: started: {err}");
        assert!(err.contains(&named), "{named:?} not in: {err}");
        assert!(
            !err.contains("coordinator serving"),
            "announced before failing: {err}"
        );
    }
}
