//! The delay line: latency on kernels without `sch_fq`.
//!
//! The fault program redirects matched packets to one of two agent-owned TAP devices
//! (one per direction). A dedicated thread reads each frame, holds it until its
//! release time and writes it back into the same TAP; the TAP's ingress program
//! (`faultline_reinj`) tags it and redirects it to the original device and direction,
//! where the fault program lets tagged packets through once.
//!
//! Why TAP rather than AF_XDP or NFQUEUE: with `IFF_VNET_HDR` a TAP carries whole GSO
//! super-packets and their checksum-offload state both ways (a virtio-net header in
//! front of each frame), so nothing is segmented or re-checksummed in userspace; it
//! is reachable with `bpf_redirect` from both tc hooks; and it is owned by a file
//! descriptor, so it disappears with the agent. AF_XDP sees neither egress traffic nor
//! GSO packets, and NFQUEUE would add netfilter rules — a second subsystem to set up
//! and clean up, at a different point in the path than the tc filter.
//!
//! Timing uses an absolute CLOCK_MONOTONIC timerfd (hrtimer precision, timer slack
//! 1 ns for this thread). The queue is bounded in packets and bytes; overflow is
//! dropped and counted. While the thread runs it renews a lease in the kernel; if the
//! agent dies or stalls, the lease runs out within [`LEASE`] and the program stops
//! diverting, so traffic flows undelayed instead of into a missing TAP.
use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    ffi::CString,
    fs,
    hash::{DefaultHasher, Hash, Hasher},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use crate::{clock::monotonic_ns, ebpf::LeaseWriter, timing::Timing};

/// How long the kernel keeps diverting without a renewal.
pub const LEASE: Duration = Duration::from_millis(400);
const RENEW_EVERY_NS: u64 = 100_000_000;
/// The virtio-net header a TAP with `IFF_VNET_HDR` puts in front of each frame.
const VNET_HDR_LEN: usize = 10;
/// Largest frame: a 64 KiB GSO packet plus headers.
const MAX_FRAME: usize = VNET_HDR_LEN + 65_536 + 64;

/// Bounds of the hold queue.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub max_packets: usize,
    pub max_bytes: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            max_packets: 200_000,
            max_bytes: 256 << 20,
        }
    }
}

/// One TAP device, owned by its file descriptor.
pub struct Tap {
    fd: OwnedFd,
    pub name: String,
    pub ifindex: u32,
}

impl Tap {
    /// Creates a TAP with virtio-net headers and TSO/checksum offload, IPv6 off (so
    /// the kernel never sends anything of its own through it), and brings it up.
    pub async fn create(name: &str, mtu: u32) -> Result<Self> {
        if name.len() >= libc::IFNAMSIZ {
            bail!("TAP name {name} is too long");
        }
        let path = CString::new("/dev/net/tun").expect("no NUL");
        // SAFETY: valid C string; the returned fd is checked and then owned.
        let raw = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("opening /dev/net/tun");
        }
        // SAFETY: `raw` is a fresh, valid fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ifreq is plain data; zeroed is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes one ifreq.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("creating TAP device {name}"));
        }
        // Offloads, so GSO packets and partial checksums pass through intact. UDP
        // segmentation offload exists from 6.2; older kernels segment UDP GSO first.
        let base = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
        let with_uso = base | libc::TUN_F_USO4 | libc::TUN_F_USO6;
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                with_uso as libc::c_ulong,
            )
        } < 0
            && unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, base as libc::c_ulong) }
                < 0
        {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("setting offloads on {name}"));
        }
        let ipv6 = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
        if fs::metadata(&ipv6).is_ok() {
            fs::write(&ipv6, "1").with_context(|| format!("disabling IPv6 on {name}"))?;
        }
        let ifindex = crate::preflight::interface_index(name)?;
        crate::tc::handle()
            .await?
            .link()
            .change(
                rtnetlink::LinkUnspec::new_with_index(ifindex)
                    .mtu(mtu)
                    .txqueuelen(10_000)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("bringing up {name}"))?;
        Ok(Self {
            fd,
            name: name.to_owned(),
            ifindex,
        })
    }
}

/// Counters of the delay line, shared with the thread.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub released: AtomicU64,
    pub dropped_overflow: AtomicU64,
    pub write_errors: AtomicU64,
    pub queued: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct StatsView {
    pub received: u64,
    pub released: u64,
    pub dropped_overflow: u64,
    pub write_errors: u64,
    pub queued: u64,
}

impl Stats {
    pub fn view(&self) -> StatsView {
        StatsView {
            received: self.received.load(Ordering::Relaxed),
            released: self.released.load(Ordering::Relaxed),
            dropped_overflow: self.dropped_overflow.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
        }
    }
}

/// Release lateness (actual write time minus scheduled release), in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Lateness {
    pub samples: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// What the delay line did over a fault's lifetime.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub stats: StatsView,
    pub lateness: Lateness,
}

/// A running delay line. Dropping it without [`DelayLine::finish`] stops the thread
/// and discards what it holds.
pub struct DelayLine {
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    wake: OwnedFd,
    thread: Option<JoinHandle<Result<Lateness>>>,
}

/// Which TAP a frame came from, and so where it goes back.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    Ingress,
    Egress,
}

struct Held {
    release: u64,
    seq: u64,
    side: Side,
    frame: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.release, self.seq) == (o.release, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.release, self.seq).cmp(&(o.release, o.seq))
    }
}

impl DelayLine {
    /// Starts the thread. `ingress`/`egress` are the TAPs for each direction in use.
    pub fn start(
        ingress: Option<Tap>,
        egress: Option<Tap>,
        timing: Timing,
        bounds: Bounds,
        mut lease: LeaseWriter,
    ) -> Result<Self> {
        // The lease must be in date before the first packet is diverted.
        lease(monotonic_ns() + LEASE.as_nanos() as u64)?;
        // SAFETY: eventfd with valid flags; the fd is checked and then owned.
        let wake = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if wake < 0 {
            return Err(std::io::Error::last_os_error()).context("eventfd");
        }
        // SAFETY: fresh fd.
        let wake = unsafe { OwnedFd::from_raw_fd(wake) };
        let wake_raw = wake.as_raw_fd();
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stats = stats.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("delay-line".into())
                .spawn(move || {
                    let mut worker = Worker::new(ingress, egress, timing, bounds, stats)?;
                    worker.run(wake_raw, &stop, &mut lease)
                })
                .context("starting the delay-line thread")?
        };
        Ok(Self {
            stats,
            stop,
            wake,
            thread: Some(thread),
        })
    }

    pub fn stats(&self) -> StatsView {
        self.stats.view()
    }

    /// Stops taking packets and releases what is held on schedule (the program has
    /// been disarmed, so nothing new arrives), then ends the thread.
    pub fn finish(mut self) -> Result<Report> {
        self.signal_stop();
        let lateness = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result?,
            Some(Err(_)) => return Err(anyhow!("the delay-line thread panicked")),
            None => Lateness::default(),
        };
        Ok(Report {
            stats: self.stats.view(),
            lateness,
        })
    }

    fn signal_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.signal_stop();
            let _ = thread.join();
        }
    }
}

struct Worker {
    taps: Vec<(Side, Tap)>,
    timing: Timing,
    bounds: Bounds,
    stats: Arc<Stats>,
    timer: OwnedFd,
    heap: BinaryHeap<Reverse<Held>>,
    held_bytes: usize,
    seq: u64,
    /// Latest release time per flow (when reordering is not allowed).
    flows: HashMap<u64, u64>,
    rng: u64,
    lateness_us: Vec<u32>,
}

impl Worker {
    fn new(
        ingress: Option<Tap>,
        egress: Option<Tap>,
        timing: Timing,
        bounds: Bounds,
        stats: Arc<Stats>,
    ) -> Result<Self> {
        // SAFETY: valid flags; fd checked, then owned.
        let timer = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if timer < 0 {
            return Err(std::io::Error::last_os_error()).context("timerfd_create");
        }
        // Default timer slack (50 us) would be added to every release.
        // SAFETY: prctl with integer arguments, affects this thread only.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        let mut taps = Vec::new();
        if let Some(t) = ingress {
            taps.push((Side::Ingress, t));
        }
        if let Some(t) = egress {
            taps.push((Side::Egress, t));
        }
        Ok(Self {
            taps,
            timing,
            bounds,
            stats,
            // SAFETY: fresh fd.
            timer: unsafe { OwnedFd::from_raw_fd(timer) },
            heap: BinaryHeap::new(),
            held_bytes: 0,
            seq: 0,
            flows: HashMap::new(),
            rng: monotonic_ns() | 1,
            lateness_us: Vec::new(),
        })
    }

    fn run(&mut self, wake: RawFd, stop: &AtomicBool, lease: &mut LeaseWriter) -> Result<Lateness> {
        let mut buf = vec![0u8; MAX_FRAME];
        let mut next_renew = monotonic_ns() + RENEW_EVERY_NS;
        loop {
            let stopping = stop.load(Ordering::SeqCst);
            let now = monotonic_ns();
            self.release_due(now);
            if stopping && self.heap.is_empty() {
                lease(0)?;
                return Ok(self.lateness());
            }
            if !stopping && now >= next_renew {
                lease(now + LEASE.as_nanos() as u64)?;
                next_renew = now + RENEW_EVERY_NS;
            }
            let mut wake_at = next_renew;
            if let Some(Reverse(top)) = self.heap.peek() {
                wake_at = wake_at.min(top.release);
            }
            self.arm_timer(wake_at)?;

            let mut fds: Vec<libc::pollfd> = self
                .taps
                .iter()
                .map(|(_, t)| libc::pollfd {
                    fd: t.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            fds.push(libc::pollfd {
                fd: self.timer.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            fds.push(libc::pollfd {
                fd: wake,
                events: libc::POLLIN,
                revents: 0,
            });
            // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).context("poll in the delay line");
            }
            let ready: Vec<usize> = fds[..self.taps.len()]
                .iter()
                .enumerate()
                .filter(|(_, p)| p.revents & libc::POLLIN != 0)
                .map(|(i, _)| i)
                .collect();
            for i in ready {
                self.take_frames(i, &mut buf);
            }
            let timer_idx = self.taps.len();
            if fds[timer_idx].revents & libc::POLLIN != 0 {
                drain_fd(self.timer.as_raw_fd());
            }
            if fds[timer_idx + 1].revents & libc::POLLIN != 0 {
                drain_fd(wake);
            }
        }
    }

    /// Reads every frame waiting on TAP `i` and queues it with its release time.
    fn take_frames(&mut self, i: usize, buf: &mut [u8]) {
        let (side, fd) = (self.taps[i].0, self.taps[i].1.fd.as_raw_fd());
        loop {
            // SAFETY: reads into a buffer we own, bounded by its length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return; // EAGAIN: drained (errors end the batch the same way)
            }
            let arrival = monotonic_ns();
            let n = n as usize;
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            if self.heap.len() >= self.bounds.max_packets
                || self.held_bytes + n > self.bounds.max_bytes
            {
                self.stats.dropped_overflow.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let frame = buf[..n].to_vec();
            let release = self.release_time(side, &frame, arrival);
            self.seq += 1;
            self.held_bytes += n;
            self.heap.push(Reverse(Held {
                release,
                seq: self.seq,
                side,
                frame,
            }));
            self.stats
                .queued
                .store(self.heap.len() as u64, Ordering::Relaxed);
        }
    }

    fn release_time(&mut self, side: Side, frame: &[u8], arrival: u64) -> u64 {
        let offset = self.timing.offset_ns(next_random(&mut self.rng));
        let release = arrival.saturating_add_signed(self.timing.delay_ns as i64 + offset);
        let release = release.max(arrival);
        if self.timing.reorder {
            return release;
        }
        let key = flow_key(side, &frame[VNET_HDR_LEN.min(frame.len())..]);
        if self.flows.len() > 65_536 {
            self.flows.retain(|_, last| *last > arrival);
        }
        let last = self.flows.entry(key).or_insert(0);
        let release = release.max(*last);
        *last = release;
        release
    }

    fn release_due(&mut self, now: u64) {
        while let Some(Reverse(top)) = self.heap.peek() {
            if top.release > now {
                break;
            }
            let Some(Reverse(held)) = self.heap.pop() else {
                break;
            };
            self.held_bytes -= held.frame.len();
            let fd = self
                .taps
                .iter()
                .find(|(s, _)| *s == held.side)
                .map(|(_, t)| t.fd.as_raw_fd())
                .expect("a frame only comes from a TAP we hold");
            // SAFETY: writes a buffer we own to our TAP fd.
            let n = unsafe { libc::write(fd, held.frame.as_ptr().cast(), held.frame.len()) };
            if n == held.frame.len() as isize {
                self.stats.released.fetch_add(1, Ordering::Relaxed);
                let late = monotonic_ns().saturating_sub(held.release) / 1000;
                self.lateness_us.push(late.min(u32::MAX as u64) as u32);
            } else {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.stats
            .queued
            .store(self.heap.len() as u64, Ordering::Relaxed);
    }

    fn arm_timer(&self, at_ns: u64) -> Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (at_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: valid timerfd and itimerspec; old value not requested.
        let rc = unsafe {
            libc::timerfd_settime(
                self.timer.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error()).context("timerfd_settime");
        }
        Ok(())
    }

    fn lateness(&mut self) -> Lateness {
        let v = &mut self.lateness_us;
        if v.is_empty() {
            return Lateness::default();
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as u64;
        Lateness {
            samples: v.len() as u64,
            p50_us: at(0.5),
            p99_us: at(0.99),
            max_us: *v.last().expect("non-empty") as u64,
        }
    }
}

fn drain_fd(fd: RawFd) {
    let mut b = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a local buffer.
    unsafe { libc::read(fd, b.as_mut_ptr().cast(), 8) };
}

/// xorshift64*: the jitter draw needs speed and uniformity, not secrecy.
fn next_random(state: &mut u64) -> u32 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
}

/// A flow is direction + addresses + protocol + ports. Frames that are not IP (or
/// are truncated) share one key per direction, which keeps them in order too.
fn flow_key(side: Side, eth: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    side.hash(&mut h);
    let mut off = 12;
    let mut ethertype = eth.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]]));
    if ethertype == Some(0x8100) {
        off = 16;
        ethertype = eth.get(16..18).map(|b| u16::from_be_bytes([b[0], b[1]]));
    }
    let l3 = off + 2;
    let (addrs, proto, l4) = match ethertype {
        Some(0x0800) if eth.len() >= l3 + 20 => {
            let ihl = usize::from(eth[l3] & 0x0f) * 4;
            (&eth[l3 + 12..l3 + 20], eth[l3 + 9], l3 + ihl)
        }
        Some(0x86dd) if eth.len() >= l3 + 40 => (&eth[l3 + 8..l3 + 40], eth[l3 + 6], l3 + 40),
        _ => return h.finish(),
    };
    addrs.hash(&mut h);
    proto.hash(&mut h);
    if matches!(proto, 6 | 17 | 132) {
        eth.get(l4..l4 + 4).hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp4(sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[14 + 9] = 17;
        f[14 + 12..14 + 16].copy_from_slice(&[10, 0, 0, 1]);
        f[14 + 16..14 + 20].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    #[test]
    fn flows_are_told_apart_by_ports_and_direction() {
        let a = flow_key(Side::Egress, &udp4(1000, 53));
        assert_eq!(a, flow_key(Side::Egress, &udp4(1000, 53)));
        assert_ne!(a, flow_key(Side::Egress, &udp4(1001, 53)));
        assert_ne!(a, flow_key(Side::Ingress, &udp4(1000, 53)));
        // Truncated or non-IP frames still get a (shared) key rather than a panic.
        assert_eq!(
            flow_key(Side::Egress, &[0u8; 5]),
            flow_key(Side::Egress, &[])
        );
    }

    #[test]
    fn random_draws_cover_the_range() {
        let mut s = 42;
        let draws: Vec<u32> = (0..10_000).map(|_| next_random(&mut s)).collect();
        let mean = draws.iter().map(|&d| d as f64).sum::<f64>() / draws.len() as f64;
        let mid = u32::MAX as f64 / 2.0;
        // Uniform on [0, 2^32): sd of the mean is 2^32/sqrt(12 * 10_000) ~ 1.24e7.
        assert!((mean - mid).abs() < 4.0 * 1.24e7, "mean {mean}");
    }
}
