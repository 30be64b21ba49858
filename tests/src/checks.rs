//! Kernel-side checks shared by the tests.
use crate::{
    Netns, Pair,
    netns::{IFACE, run_in},
};

/// What faultline still has on `iface` in `ns`, by any path: TCX (the kernel's own
/// list), clsact filters or the clsact qdisc, or XDP. Empty when nothing is left.
pub fn faultline_leftovers(ns: &Netns, iface: &'static str) -> Vec<String> {
    let mut left = Vec::new();
    for dir in ["ingress", "egress"] {
        let filters = run_in(&ns.name, &["tc", "filter", "show", "dev", iface, dir]);
        if filters.contains("faultline") {
            left.push(format!("filter on {dir}: {filters}"));
        }
    }
    let qdiscs = run_in(&ns.name, &["tc", "qdisc", "show", "dev", iface]);
    if qdiscs.contains("clsact") {
        left.push(format!("clsact: {qdiscs}"));
    }
    let link = run_in(&ns.name, &["ip", "-d", "link", "show", "dev", iface]);
    if link.contains("prog/xdp") {
        left.push(format!("XDP: {link}"));
    }
    let tcx = ns.enter(move || {
        use aya::programs::{SchedClassifier, TcAttachType};
        let mut names = Vec::new();
        for t in [TcAttachType::Ingress, TcAttachType::Egress] {
            if let Ok((_, progs)) = SchedClassifier::query_tcx(iface, t) {
                names.extend(
                    progs
                        .iter()
                        .map(|p| p.name_as_str().unwrap_or("?").to_owned()),
                );
            }
        }
        names
    });
    if !tcx.is_empty() {
        left.push(format!("TCX programs: {tcx:?}"));
    }
    left
}

/// No faultline program is attached to the pair's receiving interface.
pub fn assert_nothing_attached(pair: &Pair) {
    let left = faultline_leftovers(&pair.b, IFACE);
    assert!(left.is_empty(), "faultline left behind: {left:?}");
}
