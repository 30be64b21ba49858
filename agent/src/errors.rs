//! The agent's errors. The framing of the daemon's talk with its children has its
//! own (`faultline_agent::child::FrameError`, in the library part).

/// Bad input or an unusable environment: reported with exit code 2 (and to the
/// daemon as a refusal), and raised only before anything was applied.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
