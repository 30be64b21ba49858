//! faultline's control plane, as a library the `faultline-coordinator` binary (and its
//! tests) use: leases and the safety limits requests are checked against.
pub mod leases;
pub mod limits;
