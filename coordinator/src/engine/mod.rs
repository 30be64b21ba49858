//! The experiment engine: a spec resolved into a plan (`plan`) under the limits
//! (`limits`), one module per fault kind (`faults`), the prerequisites (`preflight`),
//! the guards (`guards`), and one experiment from lease to outcome in phases
//! (`experiment`).
pub mod experiment;
pub mod faults;
pub mod guards;
pub mod limits;
pub mod plan;
pub mod preflight;
