//! Kernel-side checks shared by the tests.
use crate::{
    Pair,
    netns::{IFACE, run_in},
};

/// No faultline program is attached to the pair's receiving interface, by any path:
/// TCX (the kernel's own list), clsact filters, or XDP.
pub fn assert_nothing_attached(pair: &Pair) {
    let ns = &pair.b;
    for dir in ["ingress", "egress"] {
        let filters = run_in(&ns.name, &["tc", "filter", "show", "dev", IFACE, dir]);
        assert!(
            !filters.contains("faultline"),
            "faultline filter left on {dir}: {filters}"
        );
    }
    let qdiscs = run_in(&ns.name, &["tc", "qdisc", "show", "dev", IFACE]);
    assert!(!qdiscs.contains("clsact"), "clsact left behind: {qdiscs}");
    let link = run_in(&ns.name, &["ip", "-d", "link", "show", "dev", IFACE]);
    assert!(!link.contains("prog/xdp"), "XDP program left: {link}");
    let tcx = ns.enter(|| {
        use aya::programs::{SchedClassifier, TcAttachType};
        let mut names = Vec::new();
        for t in [TcAttachType::Ingress, TcAttachType::Egress] {
            if let Ok((_, progs)) = SchedClassifier::query_tcx(IFACE, t) {
                names.extend(
                    progs
                        .iter()
                        .map(|p| p.name_as_str().unwrap_or("?").to_owned()),
                );
            }
        }
        names
    });
    assert!(tcx.is_empty(), "TCX programs still attached: {tcx:?}");
}
