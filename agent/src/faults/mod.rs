//! One module per fault, named like the eBPF side and the experiment spec.
pub mod loss;
