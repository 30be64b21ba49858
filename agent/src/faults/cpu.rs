//! CPU stress: burners in a cgroup whose CFS quota is exactly the requested share
//! of the node, so the kernel enforces it as a hard ceiling; underneath it each
//! burner paces itself to its share (see `stress::pace`), so that the node's own
//! monitoring, tick-sampled `/proc/stat` included, reads the share asked for.
use clap::Args;
use faultline_proto::limits::Percent;

use crate::{
    cgroup::CPU_PERIOD_US,
    faults::loss::parse_percent,
    stress::{StressArgs, StressPlan},
};

#[derive(Args, Clone, Debug)]
pub struct CpuArgs {
    /// Share of the whole node's CPU (all cores) to consume, in percent.
    #[arg(long, value_parser = parse_percent, allow_negative_numbers = true)]
    pub percent: Percent,
    #[command(flatten)]
    pub stress: StressArgs,
}

/// The CFS quota per period that gives `share` of `cpus` CPUs.
pub fn quota_us(share: Percent, cpus: usize) -> u64 {
    ((share.value() / 100.0) * cpus as f64 * CPU_PERIOD_US as f64).round() as u64
}

pub fn plan(args: &CpuArgs, cpus: usize) -> StressPlan {
    let full = quota_us(args.percent, cpus);
    StressPlan {
        kind: "cpu",
        summary: format!(
            "cpu stress {} of {cpus} CPU(s) (quota {full}us per {CPU_PERIOD_US}us)",
            args.percent
        ),
        // One burner per CPU, each running the node share of its own CPU: uniform
        // pressure on the node, and together exactly the quota.
        workers: cpus,
        worker_args: vec![
            "cpu".into(),
            format!("--duty={}", args.percent.value() / 100.0),
        ],
        // A zero quota is invalid; 1 ms per period is the smallest the kernel takes.
        apply: Box::new(move |fs, group| fs.set_cpu_quota(group, full.max(1000))),
        oom_first: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_is_the_share_of_all_cpus() {
        assert_eq!(quota_us(Percent::new(15.0).unwrap(), 2), 300_000);
        assert_eq!(quota_us(Percent::new(50.0).unwrap(), 4), 2_000_000);
        assert_eq!(quota_us(Percent::new(100.0).unwrap(), 1), 1_000_000);
    }
}
