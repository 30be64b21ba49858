//! Netlink bookkeeping for the clsact path: whether a clsact qdisc exists, whether
//! anyone else's filters hang off it, and removing the one the agent created.
use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use netlink_packet_route::tc::{TcAttribute, TcHandle};

async fn handle() -> Result<rtnetlink::Handle> {
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
