//! `faultline experiments` (the list) and `faultline experiment ID` (one, with its
//! outcome).
use faultline_proto::v1::{GetExperimentRequest, ListExperimentsRequest};
use serde_json::Value;

use crate::table::Table;
use crate::{
    args::{Cli, Output, secs},
    connection::{authed, connect},
    exit::Fail,
    render::{classification, experiment_json, fault_summary, outcome_text, phase_name, verdict},
};

pub async fn list(cli: &Cli, limit: u32) -> Result<u8, Fail> {
    let mut client = connect(cli).await?;
    let list = client
        .list_experiments(authed(
            cli,
            ListExperimentsRequest {
                limit,
                ..Default::default()
            },
        )?)
        .await?
        .into_inner()
        .experiments;
    if cli.output == Output::Json {
        println!(
            "{}",
            Value::from(list.iter().map(experiment_json).collect::<Vec<_>>())
        );
        return Ok(0);
    }
    let mut t = Table::new([
        "ID", "PHASE", "VERDICT", "CLASS", "NODES", "FAULT", "RECOVERY", "RESULT",
    ])
    .right(&[6]);
    for e in list {
        let o = e.outcome.clone().unwrap_or_default();
        t.row([
            e.id.clone(),
            phase_name(e.phase).to_owned(),
            verdict(&o).to_owned(),
            classification(&o).to_owned(),
            e.nodes.join(","),
            fault_summary(&e),
            secs(e.recovery_time.as_ref()).map_or(String::new(), |s| format!("{s:.2}s")),
            e.result.chars().take(90).collect(),
        ]);
    }
    t.print();
    Ok(0)
}

pub async fn one(cli: &Cli, id: &str) -> Result<u8, Fail> {
    let mut client = connect(cli).await?;
    let e = client
        .get_experiment(authed(cli, GetExperimentRequest { id: id.to_owned() })?)
        .await?
        .into_inner();
    if cli.output == Output::Json {
        println!("{}", experiment_json(&e));
        return Ok(0);
    }
    println!(
        "{} {} on {}: {} — {}\n{}",
        e.id,
        e.name,
        e.nodes.join(","),
        fault_summary(&e),
        phase_name(e.phase),
        e.result
    );
    if let Some(o) = &e.outcome {
        println!("{}", outcome_text(o));
    }
    Ok(0)
}
