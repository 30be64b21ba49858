//! The kernel ABI between faultline's eBPF programs and the agent.
//!
//! Everything here is `#[repr(C)]` with explicit padding, so the byte layout the
//! agent writes into a map is exactly what the program reads. Both sides are built
//! from this one definition; nothing else may describe these layouts.
#![no_std]

/// Map holding the single [`FaultConfig`] (index 0) of one loaded program set.
pub const MAP_CONFIG: &str = "FL_CONFIG";
/// Per-CPU [`Counters`], indexed by [`DIR_INDEX_INGRESS`] / [`DIR_INDEX_EGRESS`].
pub const MAP_COUNTERS: &str = "FL_COUNTERS";
/// Per-CPU Gilbert-Elliott chain state (index 0): [`GE_GOOD`] or [`GE_BAD`].
pub const MAP_GE_STATE: &str = "FL_GE_STATE";

/// Program names. Every faultline program starts with [`PROGRAM_PREFIX`], which is how
/// the agent recognises its own tc filters and how tests find leftovers; the kernel
/// truncates program names to 15 bytes, so the prefix is kept short enough to survive.
pub const PROGRAM_PREFIX: &str = "faultline_";
pub const PROG_TC_INGRESS: &str = "faultline_ingress";
pub const PROG_TC_EGRESS: &str = "faultline_egress";
pub const PROG_XDP: &str = "faultline_xdp";
/// Runs on the egress of the agent's IFB device (EDT latency on ingress traffic).
pub const PROG_IFB: &str = "faultline_ifb";
/// A classic (not direct-action) cls_bpf classifier on the target's clsact ingress:
/// selects the packets a `mirred` action moves to the IFB (the IFB accepts only
/// packets that `mirred` redirected).
pub const PROG_TO_IFB: &str = "faultline_to_ifb";
/// Runs on the ingress of the delay line's TAP devices and sends released packets
/// back to the device and direction they were taken from.
pub const PROG_REINJECT: &str = "faultline_reinj";

/// Jitter offsets (`i32`, [`JITTER_TABLE_SIZE`] entries), see [`LatencyModel`].
pub const MAP_JITTER: &str = "FL_JITTER";
/// Last departure time per flow hash (LRU), so jitter never reorders a flow.
pub const MAP_FLOW_DEPART: &str = "FL_FLOW_DEPART";
/// The delay line's liveness lease (`u64` CLOCK_MONOTONIC ns, index 0): packets are
/// diverted to it only before this time. The agent renews it several times a second;
/// if the agent dies or stalls, traffic flows undelayed again when it runs out.
pub const MAP_DIVERT_LEASE: &str = "FL_DIVERT_LEASE";

pub const DIR_INGRESS: u32 = 1;
pub const DIR_EGRESS: u32 = 2;
pub const DIR_INDEX_INGRESS: u32 = 0;
pub const DIR_INDEX_EGRESS: u32 = 1;
pub const DIR_COUNT: u32 = 2;

/// Probabilities are fixed point: `p * PROB_ONE`, compared against a 32-bit random
/// number widened to u64, so 0 never fires, `PROB_ONE` always fires and the
/// resolution is 2^-32 (~2.3e-10).
pub const PROB_ONE: u64 = 1 << 32;

pub const LOSS_NONE: u32 = 0;
pub const LOSS_BERNOULLI: u32 = 1;
pub const LOSS_GILBERT_ELLIOTT: u32 = 2;

pub const GE_GOOD: u32 = 0;
pub const GE_BAD: u32 = 1;

pub const PORT_MATCH_NONE: u8 = 0;
pub const PORT_MATCH_SRC: u8 = 1;
pub const PORT_MATCH_DST: u8 = 2;
pub const PORT_MATCH_EITHER: u8 = 3;

pub const FAMILY_ANY: u8 = 0;
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const DELAY_NONE: u32 = 0;
/// Earliest departure time: the program stamps `skb->tstamp` and an `fq` qdisc holds
/// the packet until then.
pub const DELAY_EDT: u32 = 1;
/// The program redirects matched packets to the agent's delay line (TAP devices).
pub const DELAY_DIVERT: u32 = 2;

/// [`LatencyModel::flags`]: jitter may reorder packets of one flow (netem's default).
pub const LATENCY_REORDER: u32 = 1;

/// Entries of the jitter table; a power of two so a random index is one mask.
pub const JITTER_TABLE_SIZE: u32 = 4096;
/// Table entries are offsets in units of `jitter_ns / JITTER_SCALE` (1 << 13).
pub const JITTER_SHIFT: u32 = 13;
pub const JITTER_SCALE: i32 = 1 << JITTER_SHIFT;

/// skb mark that tags a packet the delay line has already held. The reinjection
/// program sets it; the fault programs let such a packet through once and clear it,
/// so a released packet is never captured again.
pub const DELAYED_MARK: u32 = 0xfa17_de1a;

/// [`FaultConfig::flags`]: emit aya-log records from the data path (costly; debug only).
pub const FLAG_LOG: u32 = 1;

/// Which packets a fault applies to. Addresses and masks are stored as the raw
/// network-order words of the packet, so the program compares without byte swaps;
/// IPv4 uses word 0 only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// [`FAMILY_ANY`], [`FAMILY_V4`] or [`FAMILY_V6`]; non-IP packets never match a
    /// filter with a family set.
    pub family: u8,
    /// IP protocol number (6 tcp, 17 udp, 1 icmp, 58 icmpv6); 0 = any.
    pub proto: u8,
    /// One of the `PORT_MATCH_*` constants.
    pub port_match: u8,
    pub has_src: u8,
    pub has_dst: u8,
    pub _pad0: [u8; 1],
    /// Inclusive port range in host byte order.
    pub port_lo: u16,
    pub port_hi: u16,
    pub _pad1: [u8; 2],
    pub src_addr: [u32; 4],
    pub src_mask: [u32; 4],
    pub dst_addr: [u32; 4],
    pub dst_mask: [u32; 4],
    /// Keeps the size a multiple of 8 so [`FaultConfig::loss`] starts aligned.
    pub _pad2: u32,
}

/// Loss model. Bernoulli uses `loss_good` alone. Gilbert-Elliott follows netem's
/// `gemodel p r 1-h 1-k`: in the good state a packet is lost with `loss_good` (1-k)
/// and in the bad state with `loss_bad` (1-h); after each packet the chain moves
/// good->bad with `p` and bad->good with `r`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossModel {
    /// One of the `LOSS_*` constants.
    pub kind: u32,
    pub _pad: u32,
    pub p: u64,
    pub r: u64,
    pub loss_good: u64,
    pub loss_bad: u64,
}

/// Added latency. Each matched packet departs `delay_ns + offset` after it was seen,
/// where `offset = table[random] * jitter_ns >> JITTER_SHIFT` draws from the
/// distribution the agent wrote into [`MAP_JITTER`] (uniform or normal); unless
/// [`LATENCY_REORDER`] is set, a packet never departs before the previous packet of
/// its flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyModel {
    /// One of the `DELAY_*` constants.
    pub backend: u32,
    /// `LATENCY_*` bits.
    pub flags: u32,
    pub delay_ns: u64,
    pub jitter_ns: u64,
    /// Where matched ingress packets go: the IFB (EDT) or the ingress TAP (divert).
    pub ingress_redirect: u32,
    /// Where matched egress packets go: the egress TAP (divert); unused for EDT.
    pub egress_redirect: u32,
    /// The device the fault is on; released packets return to it.
    pub target_ifindex: u32,
    pub _pad: u32,
}

/// One fault as the data path sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultConfig {
    /// Non-zero while the fault is in force; the agent clears it before detaching so
    /// that removal takes effect with one map write.
    pub armed: u32,
    /// `DIR_INGRESS | DIR_EGRESS` bits the fault applies to.
    pub directions: u32,
    /// CLOCK_MONOTONIC nanoseconds (what `bpf_ktime_get_ns` returns). At or after it
    /// the programs pass everything, whatever userspace does: the fault cannot
    /// outlive its lease even if the agent is frozen or killed. 0 means expired.
    pub deadline_ns: u64,
    /// `FLAG_*` bits.
    pub flags: u32,
    pub _pad: u32,
    pub filter: Filter,
    pub loss: LossModel,
    pub latency: LatencyModel,
}

/// Per-CPU, per-direction packet counters. Summed over CPUs by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Every packet the program ran on.
    pub seen: u64,
    /// Packets that matched the filter while the fault was armed and in date.
    pub matched: u64,
    /// Matched packets the fault dropped.
    pub dropped: u64,
    /// Matched packets the fault delayed (latency faults).
    pub delayed: u64,
}

impl Counters {
    pub fn add(&mut self, other: &Counters) {
        self.seen += other.seen;
        self.matched += other.matched;
        self.dropped += other.dropped;
        self.delayed += other.delayed;
    }
}

// SAFETY: plain-old-data, `repr(C)`, every padding byte is an explicit field.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FaultConfig {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Counters {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    /// The layouts are an ABI: a size change must be deliberate.
    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Filter>(), 12 + 4 * 16 + 4);
        assert_eq!(size_of::<LossModel>(), 8 + 4 * 8);
        assert_eq!(size_of::<LatencyModel>(), 40);
        assert_eq!(
            size_of::<FaultConfig>(),
            24 + size_of::<Filter>() + size_of::<LossModel>() + size_of::<LatencyModel>()
        );
        assert_eq!(size_of::<Counters>(), 32);
    }
}
