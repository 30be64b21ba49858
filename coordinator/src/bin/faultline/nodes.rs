//! `faultline nodes`: registered nodes and their agents.
use faultline_proto::v1::ListNodesRequest;
use serde_json::{Value, json};

use crate::table::Table;
use crate::{
    args::{Cli, Output},
    connection::{authed, connect},
    exit::Fail,
    render::millis,
};

pub async fn nodes(cli: &Cli) -> Result<u8, Fail> {
    let mut client = connect(cli).await?;
    let nodes = client
        .list_nodes(authed(cli, ListNodesRequest {})?)
        .await?
        .into_inner()
        .nodes;
    if cli.output == Output::Json {
        let v: Vec<Value> = nodes
            .iter()
            .map(|n| {
                let c = n.capabilities.clone().unwrap_or_default();
                json!({"name": n.name, "connected": n.connected, "labels": n.labels,
                   "last_heartbeat_ms": millis(n.last_heartbeat.as_ref()),
                   "agent_version": n.agent_version, "lease": n.lease_id,
                   "kernel": c.kernel, "tcx": c.tcx, "sch_fq": c.sch_fq, "cgroup": c.cgroup,
                   "latency_backend": c.latency_backend})
            })
            .collect();
        println!("{}", Value::from(v));
        return Ok(0);
    }
    let mut t = Table::new(["NODE", "STATE", "KERNEL", "CGROUP", "LATENCY", "LEASE"]);
    for n in nodes {
        let c = n.capabilities.unwrap_or_default();
        let state = if n.connected { "connected" } else { "gone" };
        t.row([
            n.name,
            state.to_owned(),
            c.kernel,
            c.cgroup,
            c.latency_backend,
            n.lease_id,
        ]);
    }
    t.print();
    Ok(0)
}
