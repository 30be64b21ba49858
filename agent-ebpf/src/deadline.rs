//! The in-kernel deadline, checked on every armed packet.
//!
//! Reading the monotonic clock costs tens of nanoseconds in a VM (a pvclock read),
//! which dominated the armed-packet cost. The clock is therefore read at most once
//! per jiffy per CPU: `bpf_jiffies64` is a plain memory read, and the verdict for a
//! given deadline cannot change from "expired" back to "in date". The deadline is
//! honoured to within one tick (1-10 ms), far below any lease's granularity.
use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_ns},
    macros::map,
    maps::PerCpuArray,
};

/// Per-CPU memo of the last clock read.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DeadlineMemo {
    jiffies: u64,
    deadline_ns: u64,
    expired: u64,
}

#[map(name = "FL_DEADLINE_MEMO")]
static MEMO: PerCpuArray<DeadlineMemo> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn expired(deadline_ns: u64) -> bool {
    // SAFETY: helpers without arguments.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(memo) = MEMO.get_ptr_mut(0) else {
        return unsafe { bpf_ktime_get_ns() } >= deadline_ns;
    };
    // SAFETY: per-CPU value; no concurrent access on this CPU.
    let memo = unsafe { &mut *memo };
    if memo.jiffies == jiffies && memo.deadline_ns == deadline_ns && memo.jiffies != 0 {
        return memo.expired != 0;
    }
    // SAFETY: helper without arguments.
    let expired = unsafe { bpf_ktime_get_ns() } >= deadline_ns;
    memo.jiffies = jiffies;
    memo.deadline_ns = deadline_ns;
    memo.expired = u64::from(expired);
    expired
}
