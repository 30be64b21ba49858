//! Root qdiscs for the EDT backend: snapshot what a device has, install `fq` (or `mq`
//! with one `fq` per transmit queue), and put the original back exactly.
//!
//! A kernel-default root (handle `0:`: `noqueue`, `mq`, `pfifo_fast`, `fq_codel`, ...)
//! comes back by deleting ours, which is also how the kernel created it. Anything an
//! operator installed (another handle) is refused unless forced; forced, its kind
//! and raw options are recreated afterwards, and it must have no classes or child
//! qdiscs, which could not be recreated faithfully.
use anyhow::{Context, Result, anyhow};
use futures_util::TryStreamExt;
use netlink_packet_core::{DefaultNla, Emitable, NLM_F_CREATE, NLM_F_REPLACE, Nla};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::LinkAttribute,
    tc::{TcAttribute, TcHandle, TcMessage, TcOption},
};
use serde::{Deserialize, Serialize};

use crate::{errors::UsageError, tc};

const TCA_OPTIONS: u16 = 2;
const TCA_FQ_PLIMIT: u16 = 1;
const TCA_FQ_FLOW_PLIMIT: u16 = 2;
const TCA_FQ_HORIZON: u16 = 14;
const TCA_FQ_HORIZON_DROP: u16 = 15;
/// Handle of the `mq`/`fq` root faultline installs; recognisable in `tc qdisc show`.
const OUR_MAJOR: u16 = 0xfa17;

/// One qdisc as dumped: enough to recreate it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QdiscSnapshot {
    pub kind: String,
    pub handle: u32,
    pub parent: u32,
    /// The raw TCA_OPTIONS payload.
    pub options: Vec<u8>,
}

/// A device's root qdisc and everything under it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootSnapshot {
    pub root: QdiscSnapshot,
    pub children: Vec<QdiscSnapshot>,
    pub classes: usize,
}

impl RootSnapshot {
    /// Created by the kernel, not by an operator.
    pub fn is_default(&self) -> bool {
        self.root.handle >> 16 == 0
    }

    pub fn describe(&self) -> String {
        format!(
            "{} {:x}: ({} child qdiscs, {} classes)",
            self.root.kind,
            self.root.handle >> 16,
            self.children.len(),
            self.classes
        )
    }
}

fn kind_of(m: &TcMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        TcAttribute::Kind(k) => Some(k.as_str()),
        _ => None,
    })
}

/// The raw TCA_OPTIONS payload of a dumped qdisc (the parser keeps unknown kinds'
/// payload as one opaque attribute and parses known ones; both re-emit exactly).
fn raw_options(m: &TcMessage) -> Vec<u8> {
    for a in &m.attributes {
        if let TcAttribute::Options(opts) = a {
            if let [TcOption::Other(nla)] = opts.as_slice()
                && nla.kind() == TCA_OPTIONS
            {
                let mut v = vec![0u8; nla.value_len()];
                nla.emit_value(&mut v);
                return v;
            }
            let mut v = vec![0u8; opts.as_slice().buffer_len()];
            opts.as_slice().emit(&mut v);
            return v;
        }
    }
    Vec::new()
}

fn snapshot_of(m: &TcMessage) -> QdiscSnapshot {
    QdiscSnapshot {
        kind: kind_of(m).unwrap_or_default().to_owned(),
        handle: m.header.handle.into(),
        parent: m.header.parent.into(),
        options: raw_options(m),
    }
}

/// The root qdisc of `ifindex` and its descendants (clsact/ingress excluded).
pub async fn snapshot(ifindex: u32) -> Result<RootSnapshot> {
    let h = tc::handle().await?;
    let mut all = Vec::new();
    let mut dump = h.qdisc().get().index(ifindex as i32).execute();
    while let Some(q) = dump.try_next().await? {
        if q.header.index == ifindex as i32 {
            all.push(q);
        }
    }
    let root_handle: u32 = TcHandle::ROOT.into();
    let root = all
        .iter()
        .find(|q| u32::from(q.header.parent) == root_handle)
        .ok_or_else(|| anyhow!("interface {ifindex} has no root qdisc"))?;
    let root = snapshot_of(root);
    let children = all
        .iter()
        .filter(|q| {
            let parent = u32::from(q.header.parent);
            parent != root_handle && !matches!(kind_of(q), Some("clsact" | "ingress"))
        })
        .map(snapshot_of)
        .collect();
    let mut classes = 0;
    let mut dump = h.traffic_class(ifindex as i32).get().execute();
    while let Some(c) = dump.try_next().await? {
        // mq's per-queue classes come with the kernel's mq; only count others.
        if root.kind != "mq" {
            classes += usize::from(c.header.index == ifindex as i32);
        }
    }
    Ok(RootSnapshot {
        root,
        children,
        classes,
    })
}

/// Decides whether faultline may take over this root qdisc.
pub fn check_replaceable(snap: &RootSnapshot, iface: &str, force: bool) -> Result<(), UsageError> {
    if snap.is_default() {
        return Ok(());
    }
    if !force {
        return Err(UsageError(format!(
            "{iface} has a custom root qdisc ({}); EDT latency would replace it. Use \
             --force-qdisc to replace and restore it, or --backend delay-line to leave it alone",
            snap.describe()
        )));
    }
    if snap.classes > 0 || !snap.children.is_empty() {
        return Err(UsageError(format!(
            "{iface}'s root qdisc {} has classes or child qdiscs that could not be restored \
             faithfully; refusing even with --force-qdisc (use --backend delay-line)",
            snap.describe()
        )));
    }
    Ok(())
}

/// fq sized so that fq itself never drops or clamps a delayed packet: every packet
/// sent at `max_rate_pps` during `worst_ns` fits (twice over), in one flow if need be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FqSizing {
    pub limit: u32,
    pub flow_limit: u32,
    pub horizon_us: u32,
}

impl FqSizing {
    pub fn for_delay(worst_ns: u64, max_rate_pps: u64) -> Self {
        let held = (u128::from(max_rate_pps) * u128::from(worst_ns) / 1_000_000_000) as u64;
        let limit = (held * 2).clamp(10_000, u32::MAX as u64) as u32;
        let horizon_us = (worst_ns / 1000 * 2).clamp(10_000_000, u32::MAX as u64) as u32;
        Self {
            limit,
            flow_limit: limit,
            horizon_us,
        }
    }

    fn options(&self) -> Vec<u8> {
        let nlas = [
            DefaultNla::new(TCA_FQ_PLIMIT, self.limit.to_ne_bytes().to_vec()),
            DefaultNla::new(TCA_FQ_FLOW_PLIMIT, self.flow_limit.to_ne_bytes().to_vec()),
            DefaultNla::new(TCA_FQ_HORIZON, self.horizon_us.to_ne_bytes().to_vec()),
            // Beyond the horizon, cap the departure time rather than drop.
            DefaultNla::new(TCA_FQ_HORIZON_DROP, vec![0]),
        ];
        let mut v = vec![0u8; nlas.as_slice().buffer_len()];
        nlas.as_slice().emit(&mut v);
        v
    }
}

fn qdisc_message(ifindex: u32, parent: u32, handle: u32, kind: &str, options: &[u8]) -> TcMessage {
    let mut m = TcMessage::with_index(ifindex as i32);
    m.header.parent = parent.into();
    m.header.handle = handle.into();
    m.attributes.push(TcAttribute::Kind(kind.to_owned()));
    if !options.is_empty() {
        m.attributes.push(TcAttribute::Other(DefaultNla::new(
            TCA_OPTIONS,
            options.to_vec(),
        )));
    }
    m
}

/// A device's MTU and number of transmit queues.
pub async fn link_shape(ifindex: u32) -> Result<(u32, u32)> {
    let h = tc::handle().await?;
    let (mut mtu, mut queues) = (1500, 1);
    let mut links = h.link().get().match_index(ifindex).execute();
    while let Some(l) = links.try_next().await? {
        for a in l.attributes {
            match a {
                LinkAttribute::Mtu(m) => mtu = m,
                LinkAttribute::NumTxQueues(n) => queues = n,
                _ => {}
            }
        }
    }
    Ok((mtu, queues))
}

/// Replaces the root with fq (single queue) or mq + fq per queue.
pub async fn install_fq(ifindex: u32, sizing: FqSizing) -> Result<()> {
    let mut h = tc::handle().await?;
    let root: u32 = TcHandle::ROOT.into();
    let ours = u32::from(OUR_MAJOR) << 16;
    let (_, queues) = link_shape(ifindex).await?;
    let fq = sizing.options();
    if queues <= 1 {
        let m = qdisc_message(ifindex, root, ours, "fq", &fq);
        return tc::send(
            &mut h,
            RouteNetlinkMessage::NewQueueDiscipline(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
        .context("installing the fq root qdisc");
    }
    let m = qdisc_message(ifindex, root, ours, "mq", &[]);
    tc::send(
        &mut h,
        RouteNetlinkMessage::NewQueueDiscipline(m),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
    .await
    .context("installing the mq root qdisc")?;
    for q in 1..=queues {
        let m = qdisc_message(ifindex, ours | q, 0, "fq", &fq);
        tc::send(
            &mut h,
            RouteNetlinkMessage::NewQueueDiscipline(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
        .with_context(|| format!("installing fq on transmit queue {q}"))?;
    }
    Ok(())
}

/// Puts the original root back: delete ours (the kernel re-creates its default),
/// then recreate an operator's qdisc from its snapshot. Returns a note if the result
/// differs from the snapshot.
pub async fn restore(ifindex: u32, original: &RootSnapshot) -> Result<Option<String>> {
    let mut h = tc::handle().await?;
    let current = snapshot(ifindex).await?;
    if current == *original {
        return Ok(None);
    }
    if current.root.handle >> 16 == u32::from(OUR_MAJOR) {
        let m = qdisc_message(ifindex, TcHandle::ROOT.into(), current.root.handle, "", &[]);
        let mut m = m;
        m.attributes.clear();
        tc::send(&mut h, RouteNetlinkMessage::DelQueueDiscipline(m), 0)
            .await
            .context("deleting faultline's root qdisc")?;
    }
    if !original.is_default() {
        let o = &original.root;
        let m = qdisc_message(ifindex, o.parent, o.handle, &o.kind, &o.options);
        tc::send(
            &mut h,
            RouteNetlinkMessage::NewQueueDiscipline(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
        .with_context(|| format!("re-creating the original {} root qdisc", o.kind))?;
    }
    let after = snapshot(ifindex).await?;
    if after == *original {
        Ok(None)
    } else {
        Ok(Some(format!(
            "root qdisc after restore is {}, was {} (the kernel's default may have changed)",
            after.describe(),
            original.describe()
        )))
    }
}

/// Names of the IFB devices the agent creates: `fl-ifb<pid>` for EDT ingress and
/// `fl-probe<pid>` for the capability probe.
pub fn agent_ifb_name(purpose: &str) -> String {
    format!("fl-{purpose}{}", std::process::id() % 10_000_000)
}

pub fn is_agent_ifb(name: &str) -> bool {
    ["fl-ifb", "fl-probe"].iter().any(|p| {
        name.strip_prefix(p)
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Creates the agent's IFB device (down on failure is the caller's to clean up).
pub async fn create_ifb(name: &str) -> Result<u32> {
    let h = tc::handle().await?;
    h.link()
        .add(rtnetlink::LinkIfb::new(name).up().build())
        .execute()
        .await
        .with_context(|| format!("creating IFB device {name} (is the ifb driver available?)"))?;
    Ok(crate::preflight::interface_index(name)?)
}

pub async fn delete_link(name: &str) -> Result<bool> {
    let Ok(ifindex) = crate::preflight::interface_index(name) else {
        return Ok(false);
    };
    let h = tc::handle().await?;
    h.link()
        .del(ifindex)
        .execute()
        .await
        .with_context(|| format!("deleting {name}"))?;
    Ok(true)
}

/// Whether `fq` can be created here: tried on a throwaway IFB (the kernel loads the
/// module on demand if it can). Returns (fq, ifb).
pub async fn probe_fq() -> (bool, bool) {
    let name = agent_ifb_name("probe");
    let Ok(ifindex) = create_ifb(&name).await else {
        return (false, false);
    };
    let ok = install_fq(ifindex, FqSizing::for_delay(1_000_000, 1))
        .await
        .is_ok();
    let _ = delete_link(&name).await;
    (ok, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fq_is_sized_for_everything_in_flight() {
        // 100 kpps held for 50 ms = 5,000 packets; sized twice over, floor 10,000.
        let s = FqSizing::for_delay(50_000_000, 100_000);
        assert_eq!(s.limit, 10_000);
        assert_eq!(s.flow_limit, s.limit);
        let s = FqSizing::for_delay(500_000_000, 100_000);
        assert_eq!(s.limit, 100_000);
        // The horizon never drops a delayed packet: at least 10 s, at least 2x delay.
        assert_eq!(s.horizon_us, 10_000_000);
        assert!(FqSizing::for_delay(20_000_000_000, 1).horizon_us >= 40_000_000);
    }

    #[test]
    fn custom_roots_are_refused_unless_forced_and_flat() {
        let q = |handle: u32| QdiscSnapshot {
            kind: "cake".into(),
            handle,
            parent: u32::MAX,
            options: vec![],
        };
        let default = RootSnapshot {
            root: q(0),
            children: vec![],
            classes: 0,
        };
        assert!(check_replaceable(&default, "eth0", false).is_ok());
        let custom = RootSnapshot {
            root: q(0x8001_0000),
            ..default.clone()
        };
        let e = check_replaceable(&custom, "eth0", false).unwrap_err();
        assert!(e.0.contains("custom root qdisc (cake 8001:"), "{}", e.0);
        assert!(check_replaceable(&custom, "eth0", true).is_ok());
        let htb = RootSnapshot {
            classes: 3,
            ..custom
        };
        assert!(check_replaceable(&htb, "eth0", true).is_err());
    }
}
