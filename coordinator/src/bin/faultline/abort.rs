//! `faultline abort` and `faultline clear-kill-switch`.
use faultline_proto::v1::{AbortRequest, ClearKillSwitchRequest};
use serde_json::json;

use crate::{
    args::{Cli, Output, secs},
    connection::{authed, connect},
    exit::Fail,
};

pub async fn abort(cli: &Cli, experiment: &Option<String>, reason: &str) -> Result<u8, Fail> {
    let mut client = connect(cli).await?;
    let started = std::time::Instant::now();
    let r = client
        .abort(authed(
            cli,
            AbortRequest {
                experiment_id: experiment.clone().unwrap_or_default(),
                reason: reason.to_owned(),
            },
        )?)
        .await?
        .into_inner();
    let took = secs(r.took.as_ref()).unwrap_or(0.0);
    if cli.output == Output::Json {
        println!(
            "{}",
            json!({"aborted": r.experiment_ids, "took_ms": took * 1e3,
                   "round_trip_ms": started.elapsed().as_secs_f64() * 1e3,
                   "kill_switch_engaged": r.kill_switch_engaged})
        );
    } else {
        println!(
            "aborted {} — every agent confirmed removal in {:.1} ms; kill switch engaged \
             (clear it with `faultline clear-kill-switch`)",
            if r.experiment_ids.is_empty() {
                "(nothing running)".to_owned()
            } else {
                r.experiment_ids.join(", ")
            },
            took * 1e3
        );
    }
    Ok(0)
}

pub async fn clear_kill_switch(cli: &Cli) -> Result<u8, Fail> {
    let mut client = connect(cli).await?;
    client
        .clear_kill_switch(authed(cli, ClearKillSwitchRequest {})?)
        .await?;
    println!("kill switch cleared");
    Ok(0)
}
