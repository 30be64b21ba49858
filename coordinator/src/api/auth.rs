//! Bearer tokens for the client API (gRPC ChaosService and the HTTP surface).
//!
//! Tokens live in a YAML file as SHA-256 hashes only (a token is 32 random bytes, so a
//! fast hash is enough: there is nothing to brute-force), each with a name and a role:
//!
//! ```yaml
//! tokens:
//!   - name: ci-pipeline
//!     role: operator
//!     sha256: 3f9a...
//! ```
//!
//! Roles are ordered: a viewer reads (status, nodes, experiments); an operator also
//! starts and aborts experiments; an admin also clears the kill switch.
use std::{fmt, path::Path};

use anyhow::{Context, Result};
use ring::{digest, rand::SecureRandom};
use serde::{Deserialize, Serialize};
use tonic::{Request, Status};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role '{s}' (viewer, operator, admin)")),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    pub role: Role,
    pub sha256: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    pub tokens: Vec<TokenEntry>,
}

/// Who made a request (put into the request's extensions by the interceptor).
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    /// Where the call came from (the audit log's "who" is name and peer).
    pub peer: String,
}

fn hash(token: &str) -> String {
    digest::digest(&digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl TokenFile {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let file: TokenFile =
            serde_yaml_ng::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        for t in &file.tokens {
            anyhow::ensure!(
                t.sha256.len() == 64 && t.sha256.bytes().all(|b| b.is_ascii_hexdigit()),
                "{}: token '{}': sha256 must be 64 hex digits",
                path.display(),
                t.name
            );
        }
        Ok(file)
    }

    /// Adds a new random token with `name` and `role` to the file at `path` (created
    /// if missing, mode 0600) and returns the token: the only time it is shown.
    pub fn add(path: &Path, name: &str, role: Role) -> Result<String> {
        let mut file = if path.exists() {
            Self::load(path)?
        } else {
            Self::default()
        };
        anyhow::ensure!(
            !file.tokens.iter().any(|t| t.name == name),
            "a token named '{name}' already exists in {}",
            path.display()
        );
        let mut bytes = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| anyhow::anyhow!("no system randomness"))?;
        let token: String = std::iter::once("fl_".to_owned())
            .chain(bytes.iter().map(|b| format!("{b:02x}")))
            .collect();
        file.tokens.push(TokenEntry {
            name: name.to_owned(),
            role,
            sha256: hash(&token),
        });
        use std::{io::Write, os::unix::fs::OpenOptionsExt};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("write {}", path.display()))?;
        f.write_all(serde_yaml_ng::to_string(&file)?.as_bytes())?;
        f.sync_all()?;
        Ok(token)
    }

    /// The caller a presented token belongs to.
    pub fn identify(&self, token: &str) -> Option<Caller> {
        let h = hash(token);
        self.tokens
            .iter()
            .find(|t| t.sha256.eq_ignore_ascii_case(&h))
            .map(|t| Caller {
                name: t.name.clone(),
                role: t.role,
                peer: String::new(),
            })
    }

    /// The caller behind an `Authorization: Bearer <token>` header value.
    pub fn authorize(&self, header: Option<&str>) -> Result<Caller, Status> {
        let token = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing 'authorization: Bearer <token>'"))?;
        self.identify(token.trim())
            .ok_or_else(|| Status::unauthenticated("unknown token"))
    }
}

/// The tokens file as the coordinator serves it: re-read whenever the file changes
/// (its size, modification time or inode; checked at every request, a `stat`), and
/// on SIGHUP, so a removed token stops working at once, without a restart. A file
/// that no longer parses refuses every token until it is fixed (fail closed: a
/// revoked token must not keep working because of a typo next to it).
pub struct Tokens {
    path: std::path::PathBuf,
    live: std::sync::RwLock<Live>,
}

struct Live {
    file: TokenFile,
    stamp: Option<Stamp>,
    /// Why the current file is refused, if it is.
    broken: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: m.len(),
        modified: m.modified().ok(),
        inode: m.ino(),
    })
}

impl Tokens {
    /// Loads the file; a bad one stops the start.
    pub fn load(path: &Path) -> Result<Self> {
        let stamp = stamp(path);
        let file = TokenFile::load(path)?;
        Ok(Self {
            path: path.to_owned(),
            live: std::sync::RwLock::new(Live {
                file,
                stamp,
                broken: None,
            }),
        })
    }

    /// Re-reads the file if it changed since it was read (or always, with `force`).
    pub fn refresh(&self, force: bool) {
        let now = stamp(&self.path);
        let current = self.live.read().unwrap_or_else(|p| p.into_inner()).stamp;
        if !force && now == current {
            return;
        }
        let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
        live.stamp = now;
        match TokenFile::load(&self.path) {
            Ok(file) => {
                tracing::info!(path = %self.path.display(), tokens = file.tokens.len(), "tokens file re-read");
                live.file = file;
                live.broken = None;
            }
            Err(e) => {
                let why = format!("{e:#}");
                tracing::error!(path = %self.path.display(), "tokens file unusable, every token is refused until it is fixed: {why}");
                live.file = TokenFile::default();
                live.broken = Some(why);
            }
        }
    }

    /// The caller behind an `Authorization: Bearer <token>` header value, by the
    /// tokens file as it is now.
    pub fn authorize(&self, header: Option<&str>) -> Result<Caller, Status> {
        self.refresh(false);
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = &live.broken {
            return Err(Status::unauthenticated(format!(
                "the coordinator's tokens file is unusable ({why}); every token is refused"
            )));
        }
        live.file.authorize(header)
    }
}

impl Caller {
    /// Whether this caller's role may do `action`, which needs `role`.
    pub fn allow(&self, role: Role, action: &str) -> Result<(), Status> {
        if self.role < role {
            return Err(Status::permission_denied(format!(
                "token '{}' has role {}; {action} needs {role} or higher",
                self.name, self.role
            )));
        }
        Ok(())
    }
}

/// The role check each ChaosService method makes on the caller the interceptor found.
pub fn require<T>(req: &Request<T>, role: Role, action: &str) -> Result<Caller, Status> {
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no caller"))?;
    caller.allow(role, action)?;
    Ok(caller)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_hashed_and_roles_are_ordered() {
        let path = std::env::temp_dir().join(format!("fl-tokens-{}.yaml", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let op = TokenFile::add(&path, "ci", Role::Operator).unwrap();
        let view = TokenFile::add(&path, "dash", Role::Viewer).unwrap();
        assert!(TokenFile::add(&path, "ci", Role::Admin).is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&op) && !text.contains(&view[3..]), "{text}");
        let file = TokenFile::load(&path).unwrap();
        assert_eq!(file.identify(&op).unwrap().role, Role::Operator);
        assert_eq!(
            file.authorize(Some(&format!("Bearer {view}")))
                .unwrap()
                .name,
            "dash"
        );
        assert_eq!(
            file.authorize(Some("Bearer fl_nope")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            file.authorize(None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        let mut req = Request::new(());
        req.extensions_mut().insert(file.identify(&view).unwrap());
        let e = require(&req, Role::Operator, "abort").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("abort needs operator"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_token_removed_from_the_file_stops_working_without_a_restart() {
        let path = std::env::temp_dir().join(format!("fl-tokens-live-{}.yaml", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let ci = TokenFile::add(&path, "ci", Role::Operator).unwrap();
        let sre = TokenFile::add(&path, "sre", Role::Admin).unwrap();
        let tokens = Tokens::load(&path).unwrap();
        let bearer = |t: &str| format!("Bearer {t}");
        assert_eq!(tokens.authorize(Some(&bearer(&ci))).unwrap().name, "ci");
        // Remove "ci" (a rewrite, as an editor or `sed -i` does).
        let mut file = TokenFile::load(&path).unwrap();
        file.tokens.retain(|t| t.name != "ci");
        std::fs::write(&path, serde_yaml_ng::to_string(&file).unwrap()).unwrap();
        assert_eq!(
            tokens.authorize(Some(&bearer(&ci))).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(tokens.authorize(Some(&bearer(&sre))).unwrap().name, "sre");
        // A broken file refuses everyone until it is fixed.
        std::fs::write(&path, "tokens: [oops").unwrap();
        let e = tokens.authorize(Some(&bearer(&sre))).unwrap_err();
        assert!(e.message().contains("unusable"), "{e}");
        std::fs::write(&path, serde_yaml_ng::to_string(&file).unwrap()).unwrap();
        tokens.refresh(true);
        assert_eq!(tokens.authorize(Some(&bearer(&sre))).unwrap().name, "sre");
        std::fs::remove_file(&path).unwrap();
    }
}
