//! Abort latency with one real agent: a 1 % loss fault is in the kernel of a
//! network-namespace node (eBPF attached, counting packets), then `POST /abort`; the
//! coordinator reports the time until the agent confirmed removal (the fault's child
//! disarmed, detached and exited). 100 rounds; p50/p99/max, plus the HTTP round trip
//! as curl sees it.
use std::time::{Duration, Instant};

use faultline_tests::fleet::{Fleet, NODE_IFACE, Role};

fn quantiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.99), *v.last().unwrap())
}

fn main() {
    let fleet = Fleet::new(1, &[], &[]);
    let (mut took, mut round_trip) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        let mut run = fleet.watch_run(
            Role::Operator,
            &format!(
                "run --node node-1 --fault loss --iface {NODE_IFACE} --percent 1 \
                 --duration 60s --baseline 1s"
            ),
        );
        run.until(|ev| {
            ev["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("applied on"))
        });
        // Let the fault run (and count) a little before it is aborted.
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        let (status, body) = fleet.http(Some(Role::Operator), "POST", "/abort");
        round_trip.push(t0.elapsed().as_secs_f64() * 1e3);
        assert_eq!(status, 200, "{body}");
        took.push(body["took_ms"].as_f64().expect("took_ms"));
        assert_eq!(run.finish().0, Some(4), "the run ends aborted");
        assert!(
            fleet
                .cli(Role::Admin, &["clear-kill-switch"])
                .status
                .success()
        );
    }
    let (p50, p99, max) = quantiles(took);
    println!(
        "abort, 1 real agent with a loss fault active, 100 aborts: p50 {p50:.2} ms, \
         p99 {p99:.2} ms, max {max:.2} ms (until the agent confirmed removal)"
    );
    let (p50, p99, max) = quantiles(round_trip);
    println!(
        "  POST /abort round trip incl. curl: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"
    );
}
