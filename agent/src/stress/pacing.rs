//! How a CPU burner paces itself to its share: runs of whole ticks placed in slots
//! on a fixed grid, so that the node's own counters (/proc/stat, the precise
//! per-task clock) read the share asked for and the CPU wakes no more often than the
//! share needs.
use crate::clock;
/// How long a burner runs at a time: 32 ms of CPU, the length of stress-ng's own
/// busy slices, whatever the share; its cycle (run, then sleep) is the run ÷ the
/// share, so a CPU wakes from idle at the share's rate and no faster.
///
/// Each wake-up from a sleep long enough for the idle CPU to stop its tick costs the
/// kernel a tick restart and its softirq work, run by the idle task before the burner
/// is switched in: /proc/stat charges the ticks that land there as busy (softirq),
/// while the precise counter, which counts tasks, does not. With 100 ms cycles, 4 ms
/// runs at 5 % faultline's processes (the agent's included) woke 29 times a second
/// against stress-ng's 3, and /proc/stat
/// read 0.07 points over the share (stress-ng -0.04) in the bench's 8 rounds; with
/// 20 ms cycles at 15 % (75 wake-ups a second) it was 0.11 points more than
/// stress-ng's, softirq 0.17 % of the node against its 0.04 %. Shorter runs than
/// this buy nothing in the tick count: runs of whole ticks keep it exact however long
/// they are (`Slots`). Longer ones cost the readings over short windows, which cut a
/// run at each end: with 52 ms runs at 50 % the burners' own share over 20 s windows
/// was 0.04 points off on average, against stress-ng's 0.02.
const RUN_NS: f64 = 32e6;

/// The run at `duty`: `RUN_NS`, or half of one burner's quota per CFS period where
/// that is less (below 6.4 %), so that the burst, two runs per burner
/// (`faults::cpu::burst_us`), fits under the kernel's bound on it, the quota.
fn run_target_ns(duty: f64) -> f64 {
    RUN_NS.min(duty * (crate::cgroup::CPU_PERIOD_US * 1000) as f64 / 2.0)
}

/// Mean length of one cycle at `duty` while ramping: the full share's slot.
fn cycle_ns(duty: f64) -> f64 {
    if duty > 0.0 {
        run_target_ns(duty) / duty
    } else {
        RUN_NS
    }
}

/// Wall time of one batch of work between two reads of the monotonic clock: short
/// against a run (32 ms here, less early in a ramp), long against the read
/// itself (about 20 ns through the vDSO).
const BATCH_NS: f64 = 20e3;

/// CPU time this process has been charged, in nanoseconds: every thread, its
/// system calls, its sleeps' entry and wake-up. The same time the fence group's
/// counter and the node's accounting see.
fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_PROCESS_CPUTIME_ID always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// How long one run of a burner at `duty` of its CPU lasts at the full share: whole
/// ticks where the tick is known (`Slots`), else its part of a mean cycle.
pub fn run_ns(duty: f64) -> u64 {
    tick_ns()
        .and_then(|t| Slots::new(duty, t))
        .map_or(run_target_ns(duty.clamp(0.0, 1.0)) as u64, |s| s.run_ns)
}

/// The kernel's tick (1/HZ): the coarse clocks' resolution is one jiffy. None if it
/// reads as no kernel configures it (HZ 100 to 1000 is 1 to 10 ms).
fn tick_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    (rc == 0 && (500_000..=20_000_000).contains(&ns)).then_some(ns)
}

/// How a burner at its full share lays out its runs: each lasts `run_ns`, a whole
/// number of ticks, somewhere inside its own slot of `run_ns / duty`; the slots
/// follow each other on a fixed grid.
///
/// Tick-sampled accounting charges a run of `m + f` ticks (`0 <= f < 1`) either `m`
/// or `m + 1` ticks, depending on where it falls against the tick. With a random
/// place that is right on average, but each run adds `f(1 - f)` tick² of variance:
/// with 20 ms cycles, ±0.2 points of /proc/stat over a 20 s window, four times
/// stress-ng's. A run of a whole number of ticks holds exactly that many ticks
/// wherever it falls, so /proc/stat only sees the runs' µs-sized deviations.
///
/// The place inside the slot is still random, so those deviations cannot lock onto
/// the tick; the grid is fixed rather than a sum of random cycle lengths, so the CPU
/// used over any span is the share of it within one run (a random walk would drift
/// a run's worth per few dozen cycles, and the group's quota would clip the excess).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Slots {
    run_ns: u64,
    slot_ns: f64,
}

impl Slots {
    /// Runs of about `run_target_ns(duty)` rounded to whole ticks, at least one.
    fn new(duty: f64, tick_ns: u64) -> Option<Slots> {
        if !(duty > 0.0 && duty <= 1.0) || tick_ns == 0 {
            return None;
        }
        let ticks = (run_target_ns(duty) / tick_ns as f64).round().max(1.0);
        let run_ns = ticks as u64 * tick_ns;
        Some(Slots {
            run_ns,
            slot_ns: run_ns as f64 / duty,
        })
    }

    /// Where slot `n` after `anchor` begins.
    fn slot_start(&self, anchor: u64, n: u64) -> u64 {
        anchor + (n as f64 * self.slot_ns) as u64
    }

    /// Where the run of slot `n` starts: `place` (0-1) of the way through the
    /// slot's spare time, so it ends inside its slot.
    fn run_start(&self, anchor: u64, n: u64, place: f64) -> u64 {
        let spare = (self.slot_ns - self.run_ns as f64).max(0.0);
        self.slot_start(anchor, n) + (place.clamp(0.0, 1.0) * spare) as u64
    }
}

/// xorshift64: cheap, and only the place against the tick needs randomness.
fn uniform(rng: &mut u64) -> f64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    (*rng >> 11) as f64 / (1u64 << 53) as f64
}

/// The burner's work: multiplications in batches of about `BATCH_NS`.
struct Work {
    x: u64,
    /// Multiplications per batch.
    batch: u64,
}

impl Default for Work {
    fn default() -> Self {
        Self { x: 0, batch: 64 }
    }
}

impl Work {
    /// One batch; returns the monotonic time at its end.
    fn batch(&mut self, began: u64) -> u64 {
        for _ in 0..self.batch {
            self.x = std::hint::black_box(self.x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let now = clock::monotonic_ns();
        let took = now.saturating_sub(began);
        if took > 0 {
            // At most doubling or halving per batch: one batch stretched by an
            // interrupt or a preemption must not size the next one far off.
            let scaled = (self.batch as f64 * BATCH_NS / took as f64) as u64;
            self.batch = scaled
                .clamp(self.batch / 2, self.batch * 2)
                .clamp(64, 1 << 20);
        }
        now
    }
}

/// Works until `cpu_clock` (the process's CPU clock, in ns) has advanced `target`
/// beyond `from`, its reading when the run began; returns how many times it read it.
///
/// The process's CPU clock is a system call (190 ns here); read after every 20 µs
/// batch it put 1 % of the burners' time in the kernel, 0.56 points of the node in
/// `top`'s `sy` at 50 % against stress-ng's 0.10. Wall time is read through the
/// vDSO (18 ns) and bounds the CPU time from above: the stressor's other thread only
/// sleeps, so the process cannot have used more CPU than the wall time since the run
/// began. So the CPU clock is read only once the wall time says the run could be
/// over: once per run, plus once per preemption that made it fall short.
fn burn(cpu_clock: impl Fn() -> u64, from: u64, target: u64, work: &mut Work) -> u32 {
    let mut reads = 0;
    let mut used = 0;
    while used < target {
        let began = clock::monotonic_ns();
        let mut now = began;
        while now - began < target - used {
            now = work.batch(now);
        }
        used = cpu_clock().saturating_sub(from);
        reads += 1;
    }
    reads
}

/// Runs `duty` of one CPU until `until_ns`, rising linearly over the `ramp_ns`
/// from `ramp_start` first.
///
/// The burner paces itself underneath the group's CFS quota rather than spinning
/// until the quota throttles it. Throttling takes effect at the next timer tick, so a
/// throttled burst always ends on a tick that finds the burner running, and
/// tick-sampled accounting (`/proc/stat`, what node_exporter and `top` show) charges
/// it an extra half tick per burst: a 15 % share read as 17-20 % there while the
/// precise counters said 15.0. Here runs start at times unrelated to the tick, so
/// the chance that a tick finds the burner running equals its duty cycle; at the
/// full share they also last whole ticks (`Slots`), so the count is exact too.
/// While ramping, each cycle has a random length (0.5-1.5 × the mean) and runs its
/// part of it.
///
/// What a cycle costs is measured on the process's own CPU clock over the whole
/// cycle, so the sleep's entry and wake-up, the clock reads and the last batch's
/// overshoot count against the share: the next run is shorter by what the last
/// cycle used beyond its plan. Under emulation that cost is a large part of a small
/// run (it read as +2 points in the middle of a 15 % ramp when only the run itself
/// was counted). Only surplus is carried: time lost to preemption is not made up,
/// so the stress never exceeds its share to catch up, and a run that overran its
/// slot starts a new grid at once.
pub(super) fn pace(duty: f64, ramp_start: u64, ramp_ns: u64, until_ns: u64) {
    let duty = duty.clamp(0.0, 1.0);
    let slots = tick_ns().and_then(|t| Slots::new(duty, t));
    let start = clock::monotonic_ns();
    let mut rng = (u64::from(std::process::id()) << 32) ^ start | 1;
    let mut cycle_end = start;
    // The full share's grid, once the ramp is over: its anchor and the slot now run.
    let mut grid: Option<(u64, u64)> = None;
    let mut work = Work::default();
    // CPU used beyond the plan so far, capped at one full run: when the fixed cost
    // of a cycle exceeds a tiny early-ramp plan, there is nothing to give back and
    // the debt must not silence the ramp later.
    let debt_cap = run_ns(duty);
    let mut debt: u64 = 0;
    let mut planned: u64 = 0;
    let mut cycle_from = process_cpu_ns();
    loop {
        let woke = clock::monotonic_ns();
        if woke >= until_ns {
            return;
        }
        let cpu = process_cpu_ns();
        debt = (debt + (cpu - cycle_from))
            .saturating_sub(planned)
            .min(debt_cap);
        cycle_from = cpu;
        let ramp = if ramp_ns == 0 {
            1.0
        } else {
            (woke.saturating_sub(ramp_start) as f64 / ramp_ns as f64).min(1.0)
        };
        let full = slots.filter(|_| ramp >= 1.0);
        planned = match full {
            Some(s) => s.run_ns,
            None => {
                let cycle = cycle_ns(duty) * (0.5 + uniform(&mut rng));
                cycle_end += cycle as u64;
                (cycle * duty * ramp) as u64
            }
        };
        burn(process_cpu_ns, cpu, planned.saturating_sub(debt), &mut work);
        let now = clock::monotonic_ns();
        let wake = match full {
            Some(s) => {
                // The first run at the full share began this grid's slot 0.
                let (anchor, n) = grid.get_or_insert((woke, 0));
                *n += 1;
                let wake = s.run_start(*anchor, *n, uniform(&mut rng));
                if wake <= now {
                    // Late: run at once if the run still fits in its slot, else
                    // start a new grid here rather than catch up.
                    if now + s.run_ns > s.slot_start(*anchor, *n + 1) {
                        (*anchor, *n) = (now, 0);
                    }
                    continue;
                }
                wake
            }
            None => {
                if cycle_end <= now {
                    cycle_end = now;
                    continue;
                }
                cycle_end
            }
        };
        // An interrupted sleep just starts the next cycle.
        clock::sleep_until_ns(wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_share_runs_are_whole_ticks_in_slots_that_give_the_share() {
        const TICK: u64 = 4_000_000;
        // 32 ms runs (8 ticks), or half a burner's quota per 1 s period below 6.4 %.
        for (duty, ticks) in [
            (0.01, 1),
            (0.05, 6),
            (0.15, 8),
            (0.5, 8),
            (0.95, 8),
            (1.0, 8),
        ] {
            let s = Slots::new(duty, TICK).unwrap();
            assert_eq!(s.run_ns, ticks * TICK, "{duty}");
            assert!((s.run_ns as f64 / s.slot_ns - duty).abs() < 1e-12, "{duty}");
            // Each run ends inside its own slot wherever it is placed.
            for place in [0.0, 0.3, 1.0] {
                let run = s.run_start(1_000, 7, place);
                assert!(run >= s.slot_start(1_000, 7));
                assert!(
                    run + s.run_ns <= s.slot_start(1_000, 8) + 1,
                    "{duty} {place}"
                );
            }
        }
        // HZ=1000: 1 ms ticks, so a 5 % run is 25 ticks of a 500 ms slot.
        assert_eq!(Slots::new(0.05, 1_000_000).unwrap().run_ns, 25_000_000);
        assert_eq!(Slots::new(0.0, TICK), None);
        assert_eq!(Slots::new(1.5, TICK), None);
    }

    #[test]
    fn the_grid_does_not_drift() {
        // Slot n begins at n × slot whatever n is: no rounding accumulates.
        let s = Slots::new(0.15, 4_000_000).unwrap();
        let n = 1_000_000;
        let expect = (n as f64 * 32e6 / 0.15) as u64;
        assert!(s.slot_start(0, n).abs_diff(expect) <= 1);
    }

    /// CPU time of the calling thread: the test harness runs other tests in this
    /// process at the same time, so its process clock would run ahead of the burner.
    fn thread_cpu_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out-pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    #[test]
    fn a_run_uses_its_cpu_time_and_reads_the_cpu_clock_once_per_stretch() {
        let mut work = Work::default();
        for target in [0, 300_000, 5_000_000, 20_000_000] {
            let from = thread_cpu_ns();
            let reads = burn(thread_cpu_ns, from, target, &mut work);
            let used = thread_cpu_ns() - from;
            // Never short; over by at most the last batch (about 20 µs of work) and
            // the clock reads, bounded here by a generous 1 ms.
            assert!(used >= target, "{target}: used {used}");
            assert!(used < target + 1_000_000, "{target}: used {used}");
            // Once per stretch of wall time, and a stretch ends early only when the
            // thread was preempted: a read per 20 µs batch would be 1000 for 20 ms.
            let most = if target == 0 { 0 } else { 25 };
            assert!(reads <= most, "{target}: {reads} reads of the CPU clock");
        }
    }

    #[test]
    fn the_tick_reads_as_a_configured_hz() {
        let t = tick_ns().expect("coarse clock resolution");
        assert!(
            [1_000_000, 3_333_333, 4_000_000, 10_000_000].contains(&t),
            "{t}"
        );
    }
}
