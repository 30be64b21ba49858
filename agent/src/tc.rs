//! Netlink bookkeeping for the clsact path: whether a clsact qdisc exists, whether
//! anyone else's filters hang off it, and removing the one the agent created; and
//! the one classic bpf filter with an action (`mirred` to the IFB).
use anyhow::{Context, Result, anyhow};
use futures_util::{StreamExt, TryStreamExt};
use netlink_packet_core::{
    DefaultNla, Emitable, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{
        TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
        TcActionType, TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcMirror,
        TcMirrorActionType, TcOption,
    },
};

/// A fresh rtnetlink connection in the agent's network namespace.
pub async fn handle() -> Result<rtnetlink::Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(conn);
    Ok(handle)
}

fn is_clsact(q: &netlink_packet_route::tc::TcMessage) -> bool {
    q.attributes
        .iter()
        .any(|a| matches!(a, TcAttribute::Kind(k) if k == "clsact"))
}

pub async fn has_clsact(ifindex: u32) -> Result<bool> {
    let h = handle().await?;
    let mut qdiscs = h.qdisc().get().index(ifindex as i32).execute();
    while let Some(q) = qdiscs.try_next().await? {
        if q.header.index == ifindex as i32 && is_clsact(&q) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Interfaces that have a clsact qdisc, from one dump of the namespace's qdiscs (a
/// node can have hundreds of pod veths; one round trip serves them all).
pub async fn clsact_ifindexes() -> Result<std::collections::HashSet<u32>> {
    let h = handle().await?;
    let mut qdiscs = h.qdisc().get().execute();
    let mut found = std::collections::HashSet::new();
    while let Some(q) = qdiscs.try_next().await? {
        if is_clsact(&q) {
            found.insert(q.header.index as u32);
        }
    }
    Ok(found)
}

/// Number of filters on the clsact qdisc (both hooks).
pub async fn clsact_filter_count(ifindex: u32) -> Result<usize> {
    let h = handle().await?;
    let mut count = 0;
    for ingress in [true, false] {
        let req = h.traffic_filter(ifindex as i32).get();
        let req = if ingress { req.ingress() } else { req.egress() };
        let mut filters = req.execute();
        while let Some(f) = filters.try_next().await? {
            // A dump reports each filter with its kind; chain headers carry none.
            if f.attributes
                .iter()
                .any(|a| matches!(a, TcAttribute::Kind(_)))
            {
                count += 1;
            }
        }
    }
    Ok(count)
}

pub async fn delete_clsact(ifindex: u32) -> Result<()> {
    let h = handle().await?;
    let mut req = h.qdisc().del(ifindex as i32);
    req.message_mut().header.parent = TcHandle::CLSACT;
    req.message_mut().header.handle = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    req.execute().await.context("deleting the clsact qdisc")?;
    Ok(())
}

/// Priority of the IFB selector filter: after faultline's own fault filter (whose
/// automatic priority is lower), so packets the fault drops never reach it.
pub const TO_IFB_PRIORITY: u16 = 0xfa17;
const TCA_BPF_ACT: u16 = 1;
const ETH_P_ALL: u16 = 0x0003;

/// Adds `tc filter add dev <ifindex> ingress prio 0xfa17 bpf (classic) <prog>
/// action mirred egress redirect dev <ifb>`: packets the program selects go to the IFB
/// through `mirred`, which marks them as redirected (the IFB drops anything else).
pub async fn add_ifb_selector(ifindex: u32, prog_fd: i32, name: &str, ifb: u32) -> Result<()> {
    let mut generic = TcActionGeneric::default();
    generic.action = TcActionType::Stolen;
    let mut mirror = TcMirror::default();
    mirror.generic = generic;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = ifb;
    let mut action = TcAction::default();
    action.tab = 1;
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    let actions = [action];
    let mut act_bytes = vec![0u8; actions.as_slice().buffer_len()];
    actions.as_slice().emit(&mut act_bytes);

    let mut m = TcMessage::with_index(ifindex as i32);
    m.header.parent = TcHandle {
        major: 0xffff,
        minor: TcHandle::MIN_INGRESS,
    };
    m.header.info = (u32::from(TO_IFB_PRIORITY) << 16) | u32::from(ETH_P_ALL.to_be());
    m.attributes.push(TcAttribute::Kind("bpf".into()));
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::Bpf(TcFilterBpfOption::ProgFd(prog_fd as u32)),
        TcOption::Bpf(TcFilterBpfOption::ProgName(name.into())),
        TcOption::Bpf(TcFilterBpfOption::Other(DefaultNla::new(
            TCA_BPF_ACT,
            act_bytes,
        ))),
    ]));
    let mut h = handle().await?;
    send(
        &mut h,
        RouteNetlinkMessage::NewTrafficFilter(m),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .await
    .context("adding the mirred filter to the IFB")
}

/// Sends one request built by hand (for what rtnetlink's builders cannot express)
/// and waits for the kernel's acknowledgement.
pub async fn send(h: &mut rtnetlink::Handle, msg: RouteNetlinkMessage, flags: u16) -> Result<()> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut resp = h.request(req)?;
    while let Some(m) = resp.next().await {
        if let NetlinkPayload::Error(e) = m.payload
            && e.code.is_some()
        {
            return Err(anyhow!(e.to_io()));
        }
    }
    Ok(())
}
