//! The gRPC contract, version 1 (`proto/faultline/v1/faultline.proto`): messages,
//! `AgentService` and `ChaosService` clients and servers, and the descriptor set that
//! gRPC reflection serves.
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("faultline.v1");

/// The encoded `FileDescriptorSet` of the contract (with its imports), for
/// `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/faultline_v1_descriptor.bin"));

impl Hook {
    /// What a hook may be called (its name appears in reports): letters, digits, '-'
    /// or '_'. Checked where an order enters the coordinator and again in the agent.
    pub fn valid_name(name: &str) -> bool {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    }
}

/// A timestamp as milliseconds since the epoch: how the store, the reports and the
/// CLI count time.
pub fn timestamp_ms(t: Option<&prost_types::Timestamp>) -> Option<i64> {
    t.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

/// A duration in seconds; None when unset or negative.
pub fn duration_secs(d: Option<&prost_types::Duration>) -> Option<f64> {
    d.and_then(|d| std::time::Duration::try_from(*d).ok())
        .map(|d| d.as_secs_f64())
}

impl GuardBreach {
    /// The breach in one line, with the abort and the removal as offsets from the
    /// moment the breach was visible: how the coordinator's result and the CLI say it.
    pub fn describe(&self) -> String {
        let ms = timestamp_ms;
        let visible = ms(self.visible_at.as_ref());
        let after = |t: Option<&prost_types::Timestamp>| {
            visible
                .zip(ms(t))
                .map_or("-".to_owned(), |(v, t)| format!("{} ms", t - v))
        };
        format!(
            "{}{} on {}: {:.3}{} vs {}{}{}; abort ordered +{}, removal confirmed +{} after the breach was visible",
            if self.agent_side { "agent-side " } else { "" },
            self.guard,
            self.source,
            self.observed,
            self.unit,
            self.threshold,
            self.unit,
            if self.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.detail)
            },
            after(self.abort_ordered_at.as_ref()),
            after(self.removal_confirmed_at.as_ref()),
        )
    }
}

impl GcFault {
    /// The squeeze a GC fault may ask for, as a share of the cgroup's current usage:
    /// a harder squeeze stalls the workload rather than pressing its collector. The
    /// spec, the coordinator and the agent all check this one range.
    pub const TO_PERCENT: std::ops::RangeInclusive<f64> = 50.0..=99.0;
    /// What 0 (unset) means.
    pub const DEFAULT_TO_PERCENT: f64 = 80.0;
}

impl FaultReadings {
    /// A GC squeeze's readings, if these are.
    pub fn gc(&self) -> Option<&GcReadings> {
        match &self.kind {
            Some(fault_readings::Kind::Gc(g)) => Some(g),
            Some(
                fault_readings::Kind::Cpu(_)
                | fault_readings::Kind::Memory(_)
                | fault_readings::Kind::Cache(_),
            )
            | None => None,
        }
    }

    /// A cache eviction's readings, if these are.
    pub fn cache(&self) -> Option<&CacheReadings> {
        match &self.kind {
            Some(fault_readings::Kind::Cache(c)) => Some(c),
            Some(
                fault_readings::Kind::Cpu(_)
                | fault_readings::Kind::Memory(_)
                | fault_readings::Kind::Gc(_),
            )
            | None => None,
        }
    }

    /// The readings as named numbers, `<fault>.<field>`, for people and JSON (the CLI's
    /// live lines, `-o json` samples). The message itself stays the contract.
    pub fn named(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        let mut put = |kind: &str, field: &str, v: f64| out.push((format!("{kind}.{field}"), v));
        match &self.kind {
            Some(fault_readings::Kind::Cpu(r)) => r.name_into("cpu", &mut put),
            Some(fault_readings::Kind::Memory(r)) => r.name_into("memory", &mut put),
            Some(fault_readings::Kind::Gc(r)) => {
                put("gc", "usage", r.usage_bytes as f64);
                put("gc", "psi_some_avg10", r.psi_some_avg10);
                put("gc", "reclaimed_pages", r.reclaimed_pages as f64);
            }
            Some(fault_readings::Kind::Cache(r)) => {
                for (field, v) in [
                    ("files", Some(r.files as f64)),
                    ("total_bytes", Some(r.total_bytes as f64)),
                    (
                        "resident_before_bytes",
                        Some(r.resident_before_bytes as f64),
                    ),
                    ("resident_after_bytes", Some(r.resident_after_bytes as f64)),
                    ("resident_before_percent", Some(r.resident_before_percent)),
                    ("resident_after_percent", Some(r.resident_after_percent)),
                    ("resident_bytes", Some(r.resident_bytes as f64)),
                    ("resident_percent", Some(r.resident_percent)),
                    (
                        "cgroup_file_before_bytes",
                        r.cgroup_file_before_bytes.map(|b| b as f64),
                    ),
                    (
                        "cgroup_file_after_bytes",
                        r.cgroup_file_after_bytes.map(|b| b as f64),
                    ),
                    ("cgroup_file_bytes", r.cgroup_file_bytes.map(|b| b as f64)),
                ] {
                    if let Some(v) = v {
                        put("cache", field, v);
                    }
                }
            }
            None => {}
        }
        out
    }

    /// Keeps, field by field, the larger of `self` and `other` (of the same kind;
    /// another kind replaces it): the peak of a phase.
    pub fn keep_max(&mut self, other: &FaultReadings) {
        use fault_readings::Kind;
        match (&mut self.kind, &other.kind) {
            (Some(Kind::Cpu(a)), Some(Kind::Cpu(b)))
            | (Some(Kind::Memory(a)), Some(Kind::Memory(b))) => a.keep_max(b),
            (Some(Kind::Gc(a)), Some(Kind::Gc(b))) => {
                a.usage_bytes = a.usage_bytes.max(b.usage_bytes);
                a.psi_some_avg10 = a.psi_some_avg10.max(b.psi_some_avg10);
                a.reclaimed_pages = a.reclaimed_pages.max(b.reclaimed_pages);
            }
            // A cache's eviction figures are fixed and its residency only rebuilds: its
            // latest reading is its peak. A reading of another kind (a new fault)
            // starts over.
            (Some(Kind::Cache(_)), _)
            | (Some(Kind::Cpu(_) | Kind::Memory(_) | Kind::Gc(_)), _)
            | (None, _) => self.kind.clone_from(&other.kind),
        }
    }
}

impl StressReadings {
    fn name_into(&self, kind: &str, put: &mut impl FnMut(&str, &str, f64)) {
        put(kind, "node_cpu_percent", self.node_cpu_percent);
        put(kind, "node_cpu_tick_percent", self.node_cpu_tick_percent);
        put(kind, "node_mem_used_percent", self.node_mem_used_percent);
        put(kind, "group_cpu_us", self.group_cpu_us as f64);
        put(kind, "group_mem_bytes", self.group_mem_bytes as f64);
    }

    fn keep_max(&mut self, b: &StressReadings) {
        self.node_cpu_percent = self.node_cpu_percent.max(b.node_cpu_percent);
        self.node_cpu_tick_percent = self.node_cpu_tick_percent.max(b.node_cpu_tick_percent);
        self.node_mem_used_percent = self.node_mem_used_percent.max(b.node_mem_used_percent);
        self.group_cpu_us = self.group_cpu_us.max(b.group_cpu_us);
        self.group_mem_bytes = self.group_mem_bytes.max(b.group_mem_bytes);
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn a_fault_order_round_trips() {
        let order = CoordinatorMessage {
            body: Some(coordinator_message::Body::Apply(ApplyFault {
                lease_id: "lease-1-exp".into(),
                order_id: "o-1".into(),
                spec: Some(FaultSpec {
                    fault: Some(fault_spec::Fault::Latency(LatencyFault {
                        interface: "eth0".into(),
                        direction: Direction::Egress as i32,
                        delay: Some(prost_types::Duration {
                            seconds: 0,
                            nanos: 50_000_000,
                        }),
                        ..Default::default()
                    })),
                    duration: Some(prost_types::Duration {
                        seconds: 60,
                        nanos: 0,
                    }),
                }),
                lease_ttl: Some(prost_types::Duration {
                    seconds: 5,
                    nanos: 0,
                }),
                guard: None,
            })),
        };
        let bytes = order.encode_to_vec();
        assert_eq!(CoordinatorMessage::decode(bytes.as_slice()).unwrap(), order);
    }

    #[test]
    fn the_descriptor_set_describes_both_services() {
        let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let ours = set
            .file
            .iter()
            .find(|f| f.package() == "faultline.v1")
            .expect("faultline.v1 in the descriptor set");
        let services: Vec<&str> = ours.service.iter().map(|s| s.name()).collect();
        assert_eq!(services, ["AgentService", "ChaosService"]);
        // Imports travel with it, so reflection clients can resolve Duration.
        assert!(
            set.file
                .iter()
                .any(|f| f.name() == "google/protobuf/duration.proto")
        );
    }
}
