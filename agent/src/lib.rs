//! What of the agent is a library: the pure translation between the daemon and its
//! children (`child`), shared by the `faultline-agent` binary and the fuzz targets in
//! tests/fuzz. Everything else is the binary's.
pub mod child;
