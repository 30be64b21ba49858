//! One module per fault, named like the eBPF side and the experiment spec.
pub mod cache;
pub mod cpu;
pub mod gc;
pub mod hooks;
pub mod latency;
pub mod loss;
pub mod memory;
