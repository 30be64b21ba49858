//! The CLI's exit codes, stable for CI. They come from typed values: a gRPC status
//! code, or an experiment's `Outcome` (verdict and classification), never from text.
//!
//! - 0: the experiment passed, absorbed or self-healed (or the command succeeded)
//! - 1: infrastructure error (coordinator unreachable, TLS, an agent or lease failed)
//! - 2: usage error or bad spec (a flag, a field, a limit; nothing was started)
//! - 3: rejected (preflight, the lease, the kill switch, the token's role, or the
//!   agent's own caps); nothing was applied
//! - 4: aborted (a guard, a dark signal, or a person)
//! - 5: the steady state did not come back within the recovery timeout
//! - 6: interrupted (the coordinator stopped or restarted mid-experiment)
//! - 7: passed, but an alert of incident severity fired (classification `incident`)
use faultline_proto::v1::{Classification, Outcome, Verdict};
use tonic::{Code, Status};

pub const INFRA: u8 = 1;
pub const USAGE: u8 = 2;
pub const REJECTED: u8 = 3;
pub const ABORTED: u8 = 4;
pub const NOT_RECOVERED: u8 = 5;
pub const INTERRUPTED: u8 = 6;
pub const INCIDENT: u8 = 7;

/// A command's failure: its exit code and what to print.
pub struct Fail(pub u8, pub String);

impl From<Status> for Fail {
    fn from(s: Status) -> Self {
        let code = match s.code() {
            Code::InvalidArgument => USAGE,
            Code::FailedPrecondition
            | Code::ResourceExhausted
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::NotFound => REJECTED,
            _ => INFRA,
        };
        let what = match s.code() {
            Code::Unavailable => format!("coordinator unavailable: {}", s.message()),
            c => format!("{c:?}: {}", s.message()),
        };
        Fail(code, what)
    }
}

pub fn usage(msg: impl Into<String>) -> Fail {
    Fail(USAGE, msg.into())
}

/// The exit code of a finished experiment.
pub fn of(o: &Outcome) -> u8 {
    match Verdict::try_from(o.verdict) {
        Ok(Verdict::Passed) if o.classification == Classification::Incident as i32 => INCIDENT,
        Ok(Verdict::Passed) => 0,
        Ok(Verdict::Rejected) => REJECTED,
        Ok(Verdict::Aborted) => ABORTED,
        Ok(Verdict::NotRecovered) => NOT_RECOVERED,
        Ok(Verdict::Interrupted) => INTERRUPTED,
        Ok(Verdict::Failed | Verdict::Unspecified) | Err(_) => INFRA,
    }
}
