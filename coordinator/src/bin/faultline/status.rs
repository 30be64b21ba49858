//! `faultline status`: the kill switch, running experiments, connected agents.
use faultline_proto::v1::StatusRequest;
use serde_json::{Value, json};

use crate::{
    args::{Cli, Output},
    connection::{authed, connect},
    exit::Fail,
    render::{experiment_json, fault_summary, phase_name},
};

pub async fn status(cli: &Cli) -> Result<u8, Fail> {
    let mut client = connect(cli).await?;
    let s = client
        .status(authed(cli, StatusRequest {})?)
        .await?
        .into_inner();
    if cli.output == Output::Json {
        let running: Vec<Value> = s.running.iter().map(experiment_json).collect();
        println!(
            "{}",
            json!({"kill_switch_engaged": s.kill_switch_engaged, "connected_agents": s.connected_agents, "running": running})
        );
        return Ok(0);
    }
    println!(
        "kill switch: {}\nconnected agents: {}\nrunning: {}",
        if s.kill_switch_engaged {
            "ENGAGED"
        } else {
            "off"
        },
        s.connected_agents,
        if s.running.is_empty() {
            "none".to_owned()
        } else {
            s.running
                .iter()
                .map(|e| format!("{} ({}, {})", e.id, fault_summary(e), phase_name(e.phase)))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    Ok(0)
}
