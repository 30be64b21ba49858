//! What of the agent is a library: the framing of the typed messages between the
//! daemon and an order's child (`child`), shared by the `faultline-agent` binary and
//! the fuzz targets in tests/fuzz. Everything else is the binary's.
pub mod child;
