//! `faultline-coordinator certs init|agent`: a CA and certificates for a dev or demo
//! setup. Production deployments bring their own PKI; these files have the same
//! shape (PEM), so nothing else changes.
//!
//! Layout of a certificate directory:
//! `ca.pem`, `ca.key` (keep it off the nodes), `coordinator.pem`/`.key` (server),
//! `<node>.pem`/`.key` per agent (client), `cli.pem`/`.key` (not needed by the CLI,
//! which authenticates with a bearer token; present for tools that want mTLS).
//!
//! An agent's certificate says what it is: its subject's organizational unit is
//! `faultline-agent` (`AGENT_UNIT`), and the coordinator accepts only such
//! certificates as agent identities, so a client certificate issued for a tool
//! (`cli.pem`, OU `faultline-cli`) cannot register as a node. A PKI of your own
//! issues agent certificates with the node name as CN and OU `faultline-agent`.
use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// The DNS name always present in the coordinator's certificate.
pub const COORDINATOR_NAME: &str = "faultline-coordinator";
/// The organizational unit of every agent certificate (and of no other).
pub const AGENT_UNIT: &str = "faultline-agent";
/// The organizational unit of a tool's client certificate (`cli.pem`).
pub const CLI_UNIT: &str = "faultline-cli";

fn write(path: &Path, contents: &str, secret: bool) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn validity(params: &mut CertificateParams, days: i64, expired: bool) {
    let now = OffsetDateTime::now_utc();
    if expired {
        params.not_before = now - Duration::days(days + 2);
        params.not_after = now - Duration::days(1);
    } else {
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(days);
    }
}

fn named(cn: &str, sans: Vec<String>) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(sans).context("subject alternative names")?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "faultline");
    p.distinguished_name = dn;
    Ok(p)
}

/// Creates `dir` with a new CA, the coordinator's server certificate (for
/// `faultline-coordinator` plus `sans`) and one client certificate per agent name.
pub fn init(dir: &Path, sans: &[String], agents: &[String], days: i64) -> Result<()> {
    if dir.join("ca.key").exists() {
        bail!(
            "{} already holds a CA (ca.key); use `certs agent` to add agents",
            dir.display()
        );
    }
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let ca_key = KeyPair::generate()?;
    let mut ca = named("faultline CA", vec![])?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca, days, false);
    let ca_cert = ca.self_signed(&ca_key)?;
    write(&dir.join("ca.pem"), &ca_cert.pem(), false)?;
    write(&dir.join("ca.key"), &ca_key.serialize_pem(), true)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut names = vec![
        COORDINATOR_NAME.to_owned(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    names.extend(sans.iter().cloned());
    let mut server = named(COORDINATOR_NAME, names)?;
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut server, days, false);
    let key = KeyPair::generate()?;
    let cert = server.signed_by(&key, &issuer)?;
    write(&dir.join("coordinator.pem"), &cert.pem(), false)?;
    write(&dir.join("coordinator.key"), &key.serialize_pem(), true)?;

    for name in agents {
        client(dir, &issuer, name, AGENT_UNIT, days, false)?;
    }
    client(dir, &issuer, "cli", CLI_UNIT, days, false)?;
    Ok(())
}

fn client(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    name: &str,
    unit: &str,
    days: i64,
    expired: bool,
) -> Result<PathBuf> {
    if name.is_empty() || name.contains(['/', '.']) {
        bail!("'{name}' is not a usable node name for a certificate file");
    }
    let mut params = named(name, vec![name.to_owned()])?;
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, unit);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut params, days, expired);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    let pem = dir.join(format!("{name}.pem"));
    write(&pem, &cert.pem(), false)?;
    write(&dir.join(format!("{name}.key")), &key.serialize_pem(), true)?;
    Ok(pem)
}

/// Issues one more agent certificate from the CA in `dir`.
pub fn agent(dir: &Path, name: &str, days: i64, expired: bool) -> Result<PathBuf> {
    let read = |f: &str| {
        fs::read_to_string(dir.join(f)).with_context(|| format!("read {}", dir.join(f).display()))
    };
    let key = KeyPair::from_pem(&read("ca.key")?).context("ca.key")?;
    let issuer = Issuer::from_ca_cert_pem(&read("ca.pem")?, key).context("ca.pem")?;
    client(dir, &issuer, name, AGENT_UNIT, days, expired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_ca_a_server_and_clients_with_private_keys() {
        let dir = std::env::temp_dir().join(format!("fl-certs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        init(&dir, &["10.0.0.1".into()], &["node-1".into()], 30).unwrap();
        for f in ["ca.pem", "coordinator.pem", "node-1.pem", "cli.pem"] {
            assert!(
                fs::read_to_string(dir.join(f))
                    .unwrap()
                    .starts_with("-----BEGIN CERTIFICATE")
            );
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.join("node-1.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            init(&dir, &[], &[], 30).is_err(),
            "a second init must not replace the CA"
        );
        agent(&dir, "node-2", 30, false).unwrap();
        assert!(agent(&dir, "../x", 30, false).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
