//! Request/response round trips (UDP and TCP) and a timestamped one-way stream, for
//! latency tests. All namespaces share CLOCK_MONOTONIC, so one-way delays are exact.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::Netns;

/// A UDP and a TCP echo server on `port` inside a namespace, stopped on drop.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(ns: &Netns, port: u16) -> Self {
        let bind: SocketAddr = format!("[::]:{port}").parse().expect("addr");
        let (udp, tcp) = ns.enter(move || {
            let udp = UdpSocket::bind(bind).expect("bind udp echo");
            let tcp = TcpListener::bind(bind).expect("bind tcp echo");
            (udp, tcp)
        });
        let stop = Arc::new(AtomicBool::new(false));
        udp.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        tcp.set_nonblocking(true).expect("nonblocking");
        let mut threads = Vec::new();
        let s = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], from);
                }
            }
        }));
        let s = stop.clone();
        threads.push(std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut conn, _)) => {
                        let s = s.clone();
                        std::thread::spawn(move || {
                            conn.set_nonblocking(false).expect("blocking");
                            conn.set_nodelay(true).expect("nodelay");
                            conn.set_read_timeout(Some(Duration::from_millis(200)))
                                .expect("timeout");
                            let mut buf = [0u8; 64];
                            while !s.load(Ordering::Relaxed) {
                                match conn.read(&mut buf) {
                                    Ok(0) => return,
                                    Ok(n) => {
                                        if conn.write_all(&buf[..n]).is_err() {
                                            return;
                                        }
                                    }
                                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                                    Err(_) => return,
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }));
        Self { stop, threads }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Round-trip times in milliseconds of `count` UDP requests, one every `gap`; lost
/// requests (1 s timeout) are left out.
pub fn udp_rtts(ns: &Netns, to: SocketAddr, count: usize, gap: Duration) -> Vec<f64> {
    let sock = ns.enter(|| UdpSocket::bind("[::]:0").expect("bind udp client"));
    sock.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut rtts = Vec::new();
    let mut buf = [0u8; 64];
    for seq in 0..count as u32 {
        let t = Instant::now();
        sock.send_to(&seq.to_be_bytes(), to).expect("send");
        // Discard late replies to earlier requests.
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            if n == 4 && buf[..4] == seq.to_be_bytes() {
                rtts.push(t.elapsed().as_secs_f64() * 1000.0);
                break;
            }
        }
        std::thread::sleep(gap);
    }
    rtts
}

/// Round-trip times in milliseconds of `count` 64-byte requests on one TCP
/// connection (Nagle off on both ends).
pub fn tcp_rtts(ns: &Netns, to: SocketAddr, count: usize, gap: Duration) -> Vec<f64> {
    let mut conn = ns
        .enter(move || TcpStream::connect_timeout(&to, Duration::from_secs(5)))
        .expect("connect");
    conn.set_nodelay(true).expect("nodelay");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut rtts = Vec::new();
    let mut buf = [0u8; 64];
    for _ in 0..count {
        let t = Instant::now();
        conn.write_all(&buf).expect("tcp write");
        conn.read_exact(&mut buf).expect("tcp read");
        rtts.push(t.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(gap);
    }
    rtts
}

pub fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

pub fn quantile(v: &[f64], q: f64) -> f64 {
    assert!(!v.is_empty(), "no samples");
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * q).round() as usize]
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sends `count` datagrams carrying (sequence, send time) at `pps`.
pub fn send_stamped(sock: &UdpSocket, to: SocketAddr, count: u32, pps: u32) {
    let start = Instant::now();
    let mut buf = [0u8; 64];
    for seq in 0..count {
        buf[..4].copy_from_slice(&seq.to_be_bytes());
        buf[4..12].copy_from_slice(&monotonic_ns().to_be_bytes());
        while sock.send_to(&buf, to).is_err() {
            std::thread::sleep(Duration::from_micros(100));
        }
        let due = start + Duration::from_secs_f64(f64::from(seq + 1) / f64::from(pps));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

/// Receives stamped datagrams until the socket is quiet: (sequence, one-way delay in
/// ms) in arrival order.
pub fn receive_stamped(sock: &UdpSocket) -> Vec<(u32, f64)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        let now = monotonic_ns();
        if n >= 12 {
            let seq = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes"));
            let sent = u64::from_be_bytes(buf[4..12].try_into().expect("8 bytes"));
            got.push((seq, now.saturating_sub(sent) as f64 / 1e6));
        }
    }
    got
}

/// Streams `count` stamped datagrams at `pps` from namespace `from` to `to` (an
/// address in namespace `into`), receiving concurrently (the arrival time is the read
/// time) while `during` runs on a third thread. Returns (sequence, one-way ms) in
/// arrival order, and what `during` returned.
pub fn stamped_stream<T: Send>(
    from: &Netns,
    into: &Netns,
    to: SocketAddr,
    count: u32,
    pps: u32,
    during: impl FnOnce() -> T + Send,
) -> (Vec<(u32, f64)>, T) {
    let port = to.port();
    let rx = into.enter(move || UdpSocket::bind(("0.0.0.0", port)).expect("bind receiver"));
    rx.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let tx = from.enter(|| UdpSocket::bind("0.0.0.0:0").expect("bind sender"));
    std::thread::scope(|s| {
        let got = s.spawn(|| receive_stamped(&rx));
        let other = s.spawn(during);
        send_stamped(&tx, to, count, pps);
        (
            got.join().expect("receiver"),
            other.join().expect("concurrent work"),
        )
    })
}
