//! Added latency: the departure time of a matched packet, and where it goes.
//!
//! Two backends share the timing model. EDT writes the departure time into
//! `skb->tstamp` and leaves holding the packet to the `fq` qdisc (egress directly,
//! ingress after a redirect through the agent's IFB device). Divert hands the packet
//! to the agent's delay line, which applies the same model in userspace.
use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_get_hash_recalc, bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, LruHashMap},
};
use faultline_common::{JITTER_SHIFT, JITTER_TABLE_SIZE, LATENCY_REORDER, LatencyModel};

#[map(name = "FL_JITTER")]
static JITTER: Array<i32> = Array::with_max_entries(JITTER_TABLE_SIZE, 0);

/// Keyed by the kernel's flow hash. LRU, so idle flows age out without the agent.
#[map(name = "FL_FLOW_DEPART")]
static FLOW_DEPART: LruHashMap<u32, u64> = LruHashMap::with_max_entries(65536, 0);

#[map(name = "FL_DIVERT_LEASE")]
static DIVERT_LEASE: Array<u64> = Array::with_max_entries(1, 0);

/// Signed offset drawn from the operator's jitter distribution.
#[inline(always)]
fn jitter_offset(lat: &LatencyModel) -> i64 {
    if lat.jitter_ns == 0 {
        return 0;
    }
    // SAFETY: helper without arguments.
    let index = unsafe { bpf_get_prandom_u32() } & (JITTER_TABLE_SIZE - 1);
    let Some(&z) = JITTER.get(index) else {
        return 0;
    };
    (z as i64 * lat.jitter_ns as i64) >> JITTER_SHIFT
}

/// Stamps the packet's earliest departure time: `max(tstamp, now) + delay + jitter`,
/// and (unless reordering is allowed) no earlier than its flow's previous packet.
/// Keeping an existing later `tstamp` respects the sender's own pacing (TCP EDT).
#[inline(always)]
pub fn stamp_departure(skb: *mut __sk_buff, lat: &LatencyModel) {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `skb` is the program's context; tc programs may read and write tstamp.
    let current = unsafe { (*skb).tstamp };
    let base = if current > now { current } else { now };
    let delay = lat.delay_ns as i64 + jitter_offset(lat);
    let mut depart = base + if delay > 0 { delay as u64 } else { 0 };
    if lat.flags & LATENCY_REORDER == 0 {
        // SAFETY: context pointer, as above.
        let flow = unsafe { bpf_get_hash_recalc(skb) };
        match FLOW_DEPART.get_ptr_mut(flow) {
            Some(last) => {
                // SAFETY: map value pointer. Two CPUs racing on one flow can at worst
                // both read the old value; a flow is normally handled on one CPU.
                let last = unsafe { &mut *last };
                if depart < *last {
                    depart = *last;
                }
                *last = depart;
            }
            None => {
                let _ = FLOW_DEPART.insert(flow, depart, 0);
            }
        }
    }
    // SAFETY: as above.
    unsafe { (*skb).tstamp = depart };
}

/// Whether the delay line is alive (its lease is in date). Without it, diverted
/// packets would go to a TAP that no longer exists and be lost.
#[inline(always)]
pub fn delay_line_alive() -> bool {
    let Some(&until) = DIVERT_LEASE.get(0) else {
        return false;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    now < until
}
