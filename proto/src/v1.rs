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

impl fault_spec::Fault {
    /// Every fault kind's name, in the order of the oneof.
    pub const KINDS: [&'static str; 6] = ["loss", "latency", "cpu", "memory", "gc", "cache"];

    /// The fault kind's short name, as metrics label it and logs print it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Loss(_) => "loss",
            Self::Latency(_) => "latency",
            Self::Cpu(_) => "cpu",
            Self::Memory(_) => "memory",
            Self::Gc(_) => "gc",
            Self::Cache(_) => "cache",
        }
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
