//! A paced UDP sender and a receiver that records which sequence numbers arrived.
use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use crate::Netns;

/// A bound receiver inside a namespace. The kernel buffer is forced large so the
/// socket itself never drops: every loss seen is the fault's.
pub fn receiver(ns: &Netns, bind: SocketAddr) -> UdpSocket {
    ns.enter(move || {
        let s = UdpSocket::bind(bind).expect("bind receiver");
        let size: libc::c_int = 32 << 20;
        // SAFETY: valid socket and option value.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        s
    })
}

pub fn sender(ns: &Netns, bind: SocketAddr) -> UdpSocket {
    ns.enter(move || UdpSocket::bind(bind).expect("bind sender"))
}

/// Sends `count` datagrams carrying sequence numbers `0..count` at about `pps`, from
/// a thread pinned to CPU 0 so that the receive path runs on one CPU (one per-CPU
/// loss chain) for the whole run.
pub fn send(sock: &UdpSocket, to: SocketAddr, count: u32, pps: u32) {
    let sock = sock.try_clone().expect("clone");
    std::thread::spawn(move || {
        // SAFETY: a zeroed cpu_set_t with CPU 0 set, for the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        }
        let start = Instant::now();
        let mut buf = [0u8; 64];
        for seq in 0..count {
            buf[..4].copy_from_slice(&seq.to_be_bytes());
            // ENOBUFS on a full device queue: back off and retry the same packet, so
            // that every sequence number is offered to the fault exactly once.
            while sock.send_to(&buf, to).is_err() {
                std::thread::sleep(Duration::from_micros(200));
            }
            let due = start + Duration::from_secs_f64(f64::from(seq + 1) / f64::from(pps));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    })
    .join()
    .expect("sender thread");
}

/// Reads until the socket is quiet; returns which of `0..count` arrived.
pub fn collect(sock: &UdpSocket, count: u32) -> Vec<bool> {
    let mut got = vec![false; count as usize];
    let mut buf = [0u8; 2048];
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        if n >= 4 {
            let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if seq < got.len() {
                got[seq] = true;
            }
        }
    }
    got
}

/// Lengths of the runs of consecutive lost packets.
pub fn loss_bursts(received: &[bool]) -> Vec<usize> {
    let mut bursts = Vec::new();
    let mut run = 0;
    for &r in received {
        if r {
            if run > 0 {
                bursts.push(run);
            }
            run = 0;
        } else {
            run += 1;
        }
    }
    if run > 0 {
        bursts.push(run);
    }
    bursts
}
