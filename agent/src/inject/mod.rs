//! Local mode: `faultline-agent inject loss|latency ...` applies one fault directly, shows
//! live counters, and removes everything on exit, SIGINT, SIGTERM, SIGHUP and at the
//! deadline. The same validation and caps apply as under a coordinator lease.
use std::path::PathBuf;

use anyhow::Result;
use faultline_common::LossModel;

use crate::{
    errors::UsageError,
    faults::{
        latency::{self, LatencyArgs},
        loss::LossArgs,
    },
    preflight,
};

mod args;
mod network;

pub use args::{Attach, Direction, LimitArgs, TargetArgs};
use network::{plan, run};

pub async fn loss(
    state_dir: PathBuf,
    limits: LimitArgs,
    target: TargetArgs,
    loss: LossArgs,
) -> Result<()> {
    // 1. Input alone: nothing below touches the system if any of this fails.
    target.validate()?;
    let filter = target.filter.to_kernel()?;
    let loss_plan = loss.plan()?;
    let (caps, caps_source) = limits.load()?;
    caps.check_loss(loss_plan.expected, target.duration, &caps_source)
        .map_err(|e| UsageError(e.to_string()))?;
    let plan = plan(
        &target,
        filter,
        loss_plan.model,
        format!("loss {}", loss_plan.description),
    );

    // 2. The environment.
    preflight::check_privileges()?;
    preflight::check_bpf_support()?;
    preflight::interface_index(&target.iface)?;
    let mode = target.tc_mode.resolve()?;

    run(state_dir, target, mode, plan).await
}

pub async fn latency(
    state_dir: PathBuf,
    limits: LimitArgs,
    target: TargetArgs,
    args: LatencyArgs,
) -> Result<()> {
    // 1. Input alone.
    target.validate()?;
    if target.attach == Attach::Xdp {
        return Err(UsageError(
            "latency needs --attach tc: XDP can drop a packet but cannot hold or re-time it".into(),
        )
        .into());
    }
    let filter = target.filter.to_kernel()?;
    let lat = args.plan()?;
    let (caps, caps_source) = limits.load()?;
    caps.check_latency(lat.worst, target.duration, &caps_source)
        .map_err(|e| UsageError(e.to_string()))?;
    let mut loss_model = LossModel::default();
    let mut what = lat.description.clone();
    if let Some(percent) = args.loss_percent {
        let loss = LossArgs {
            percent: Some(percent),
            ..LossArgs::default()
        }
        .plan()?;
        caps.check_loss(loss.expected, target.duration, &caps_source)
            .map_err(|e| UsageError(e.to_string()))?;
        loss_model = loss.model;
        what = format!("{what} + loss {}", loss.description);
    }

    // 2. The environment.
    preflight::check_privileges()?;
    preflight::check_bpf_support()?;
    preflight::interface_index(&target.iface)?;
    let mode = target.tc_mode.resolve()?;
    let backend = latency::resolve_backend(args.backend).await?;
    let mut plan = plan(&target, filter, loss_model, what);
    plan.summary = format!("{} via {}", plan.summary, backend.name());
    plan.latency = Some((args, lat, backend));
    run(state_dir, target, mode, plan).await
}

pub async fn cpu(limits: LimitArgs, args: crate::faults::cpu::CpuArgs) -> Result<()> {
    args.stress.validate()?;
    let (caps, source) = limits.load()?;
    caps.check_cpu(args.percent, args.stress.duration, &source)
        .map_err(|e| UsageError(e.to_string()))?;
    // The node's CPUs, not the agent's own allowance: under a Kubernetes limit of
    // 500m (deploy/kubernetes/base/agent.yaml) or a systemd CPUQuota the standard
    // library reports one CPU, and a share of the node would be sized on it.
    let cpus = crate::node::NodeSample::now(&args.stress.cgroup_root)?.cpus;
    let plan = crate::faults::cpu::plan(&args, cpus);
    crate::stress::run(args.stress, plan).await
}

pub async fn memory(limits: LimitArgs, args: crate::faults::memory::MemoryArgs) -> Result<()> {
    args.stress.validate()?;
    let (caps, source) = limits.load()?;
    caps.check_memory(args.percent, args.stress.duration, &source)
        .map_err(|e| UsageError(e.to_string()))?;
    let node = crate::node::NodeSample::now(&args.stress.cgroup_root)?;
    let plan = crate::faults::memory::plan(&args, &node)?;
    crate::stress::run(args.stress, plan).await
}
