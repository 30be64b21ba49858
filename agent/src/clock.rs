//! The clock the data path uses: `bpf_ktime_get_ns` is CLOCK_MONOTONIC, so deadlines
//! written into maps must be computed on the same clock.
use std::time::Duration;

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The monotonic deadline `d` from now, saturating rather than wrapping.
pub fn deadline_after(d: Duration) -> u64 {
    deadline_from(monotonic_ns(), d)
}

/// The monotonic deadline `d` after `from_ns`, saturating rather than wrapping.
pub fn deadline_from(from_ns: u64, d: Duration) -> u64 {
    from_ns.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Sleeps until the monotonic time `wake_ns` (an absolute deadline, so a late
/// wake-up does not push the next one later). Returns early only if a signal
/// interrupts the sleep; callers that must not wake early loop on the clock.
pub fn sleep_until_ns(wake_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (wake_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (wake_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: valid timespec, no remainder pointer (absolute sleeps need none).
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        )
    };
}
