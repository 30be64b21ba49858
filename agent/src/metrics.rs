//! Kernel-level metric samples for the coordinator: node CPU (the precise run-time
//! counter, with the tick-sampled /proc/stat figure alongside) and memory (read as the
//! stress faults read them), PSI, packet counters of this
//! network namespace, TCP retransmits, the root cgroup's usage, and the eBPF fault
//! counters of the active effect.
use std::{collections::HashMap, path::Path, time::SystemTime};

use faultline_proto::v1::{FaultCounters, MetricSample};
use procfs::Current;

use crate::node::{NodeCounters, NodeSample};

pub struct Sampler {
    /// The previous sample, for the precise share (meaningful at any rate).
    last: Option<NodeSample>,
    /// Where the current tick window started, and the last tick share computed: at
    /// 10 Hz a sample can fall within one tick.
    tick_from: Option<NodeSample>,
    cpu_ticks: f64,
    cgroup_root: std::path::PathBuf,
    /// The node's counter files, kept open between samples; reopened on the next
    /// sample after one could not be read.
    counters: Option<NodeCounters>,
}

impl Sampler {
    pub fn new(cgroup_root: &Path) -> Self {
        let mut sampler = Self {
            last: None,
            tick_from: None,
            cpu_ticks: 0.0,
            cgroup_root: cgroup_root.to_owned(),
            counters: None,
        };
        let now = sampler.node();
        (sampler.last, sampler.tick_from) = (now, now);
        sampler
    }

    fn node(&mut self) -> Option<NodeSample> {
        let counters = match &mut self.counters {
            Some(c) => c,
            None => self
                .counters
                .insert(NodeCounters::open(&self.cgroup_root).ok()?),
        };
        let now = counters.sample().ok();
        if now.is_none() {
            self.counters = None;
        }
        now
    }

    /// One sample; fields the kernel does not offer (PSI disabled, ...) stay zero.
    /// `ingress`/`egress` and `fault` are the active fault's counters and readings.
    pub fn sample(
        &mut self,
        ingress: FaultCounters,
        egress: FaultCounters,
        fault: Option<faultline_proto::v1::FaultReadings>,
    ) -> MetricSample {
        let now = self.node();
        // Tick deltas need a few ticks to mean anything; until then keep the last.
        match (self.tick_from, now) {
            (Some(a), Some(b)) if b.ticks_since(&a) >= 10 => {
                self.cpu_ticks = b.cpu_busy_ticks_since(&a);
                self.tick_from = Some(b);
            }
            (None, _) => self.tick_from = now,
            _ => {}
        }
        let (cpu_busy, cpu_precise) = match (self.last, now) {
            (Some(a), Some(b)) if b.precise() => (b.cpu_busy_since(&a), true),
            _ => (self.cpu_ticks, false),
        };
        if now.is_some() {
            self.last = now;
        }
        let memory_used_percent = now.map_or(0.0, |n| n.mem_used_percent());
        let (mut rx, mut tx) = (0, 0);
        if let Ok(devs) = procfs::net::dev_status() {
            for (name, d) in devs {
                if name != "lo" {
                    rx += d.recv_packets;
                    tx += d.sent_packets;
                }
            }
        }
        MetricSample {
            at: Some(SystemTime::now().into()),
            cpu_busy_percent: cpu_busy,
            cpu_busy_tick_percent: self.cpu_ticks,
            cpu_precise,
            memory_used_percent,
            psi_cpu_some_avg10: procfs::CpuPressure::current()
                .map(|p| f64::from(p.some.avg10))
                .unwrap_or(0.0),
            psi_memory_some_avg10: procfs::MemoryPressure::current()
                .map(|p| f64::from(p.some.avg10))
                .unwrap_or(0.0),
            psi_io_some_avg10: procfs::IoPressure::current()
                .map(|p| f64::from(p.some.avg10))
                .unwrap_or(0.0),
            net_rx_packets: rx,
            net_tx_packets: tx,
            tcp_retransmits: procfs::net::snmp().map(|s| s.tcp_retrans_segs).unwrap_or(0),
            ingress: Some(ingress),
            egress: Some(egress),
            cgroup: self.cgroup_stats(),
            fault_readings: fault,
        }
    }

    /// The root cgroup's CPU time and memory, on either hierarchy.
    fn cgroup_stats(&self) -> HashMap<String, f64> {
        let read = |rel: &str| {
            std::fs::read_to_string(self.cgroup_root.join(rel))
                .ok()
                .map(|s| s.trim().to_owned())
        };
        let mut out = HashMap::new();
        if let Some(stat) = read("cpu.stat") {
            // v2 root: usage_usec
            if let Some(v) = stat
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.parse::<f64>().ok())
            {
                out.insert("root.cpu.usage_seconds".into(), v / 1e6);
            }
        } else if let Some(v) = read("cpuacct/cpuacct.usage").and_then(|v| v.parse::<f64>().ok()) {
            out.insert("root.cpu.usage_seconds".into(), v / 1e9);
        }
        if let Some(v) = read("memory/memory.usage_in_bytes").and_then(|v| v.parse::<f64>().ok()) {
            out.insert("root.memory.usage_bytes".into(), v);
        }
        out
    }
}
