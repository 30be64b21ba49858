//! The fleet side: the agents' sessions (`agents`), the coordinator's shared state
//! and the abort and shutdown paths (`control`), and the leases (`leases`).
pub mod agents;
pub mod control;
pub mod leases;
