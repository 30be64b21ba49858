//! One module per fault, named like the eBPF side and the experiment spec.
pub mod cpu;
pub mod loss;
pub mod memory;
