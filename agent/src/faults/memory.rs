//! Memory stress: a stressor allocates and touches the requested share of MemTotal
//! inside a memory cgroup whose hard limit fences it. Under pressure only the
//! stressor can be OOM-killed (its own fence, and the highest oom_score_adj), never
//! a node process. Refused when the node would be left below a safety floor.
use clap::Args;
use faultline_proto::limits::Percent;

use crate::{
    errors::UsageError,
    faults::loss::parse_percent,
    node::NodeSample,
    stress::{StressArgs, StressPlan},
};

/// Room for the stressor's own pages (binary, stack, allocator) above the block.
const FENCE_HEADROOM: u64 = 16 << 20;

#[derive(Args, Clone, Debug)]
pub struct MemoryArgs {
    /// Share of the node's MemTotal to allocate and touch, in percent.
    #[arg(long, value_parser = parse_percent, allow_negative_numbers = true)]
    pub percent: Percent,
    /// Refuse when available memory would drop below this share of MemTotal.
    #[arg(long, value_parser = parse_percent, default_value = "15")]
    pub floor: Percent,
    /// Test hook: the stressor touches this many percent more than its fence allows,
    /// to prove the fence kills only the stressor.
    #[arg(long, hide = true, value_parser = parse_percent)]
    pub overask: Option<Percent>,
    #[command(flatten)]
    pub stress: StressArgs,
}

impl MemoryArgs {
    /// An order's memory stress, with the default safety floor (15 % of MemTotal).
    pub fn ordered(percent: Percent, stress: StressArgs) -> Self {
        Self {
            percent,
            floor: Percent::new(15.0).expect("a percentage"),
            overask: None,
            stress,
        }
    }
}

/// The memory limit of the target cgroup, when it has a finite one below MemTotal
/// (memory.max on v2, memory.limit_in_bytes on v1).
pub fn target_limit(args: &MemoryArgs, node: &NodeSample) -> Option<u64> {
    let rel = args.stress.target_cgroup.as_ref()?;
    let root = &args.stress.cgroup_root;
    let file = if root.join("cgroup.controllers").exists() {
        root.join(rel).join("memory.max")
    } else {
        root.join("memory").join(rel).join("memory.limit_in_bytes")
    };
    let limit: u64 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
    (limit < node.mem_total).then_some(limit)
}

pub fn plan(args: &MemoryArgs, node: &NodeSample) -> Result<StressPlan, UsageError> {
    // A share of the target's own limit when it has one (what the workload feels),
    // else of the node's MemTotal.
    let (base, of) = match target_limit(args, node) {
        Some(limit) => (limit, "of the target cgroup's limit"),
        None => (node.mem_total, "of MemTotal"),
    };
    let bytes = (base as f64 * args.percent.value() / 100.0) as u64;
    let floor = (node.mem_total as f64 * args.floor.value() / 100.0) as u64;
    let left = node.mem_available.saturating_sub(bytes);
    if left < floor {
        return Err(UsageError(format!(
            "memory stress of {} MiB would leave {} MiB available, below the safety floor of {} MiB ({} of MemTotal)",
            bytes >> 20,
            left >> 20,
            floor >> 20,
            args.floor
        )));
    }
    let fence = bytes + FENCE_HEADROOM;
    let touch = match args.overask {
        Some(extra) => bytes + (node.mem_total as f64 * extra.value() / 100.0) as u64,
        None => bytes,
    };
    Ok(StressPlan {
        kind: "memory",
        readings_as: faultline_proto::v1::fault_readings::Kind::Memory,
        summary: format!(
            "memory stress {} {of} ({} MiB, fence {} MiB)",
            args.percent,
            bytes >> 20,
            fence >> 20
        ),
        workers: 1,
        worker_args: vec!["memory".into(), "--bytes".into(), touch.to_string()],
        apply: Box::new(move |fs, group| fs.set_memory_max(group, fence)),
        oom_first: true,
    })
}
