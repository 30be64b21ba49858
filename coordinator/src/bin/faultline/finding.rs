//! `faultline finding add|update|list`: what experiments uncovered.
use faultline_proto::v1::{
    AddFindingRequest, Finding, FindingStatus, ListFindingsRequest, UpdateFindingRequest,
};
use serde_json::json;

use crate::table::Table;
use crate::{
    args::{Cli, FindingAction, FindingStatusArg, Output},
    connection::{authed, connect},
    exit::Fail,
};

fn status(s: FindingStatusArg) -> FindingStatus {
    match s {
        FindingStatusArg::Open => FindingStatus::Open,
        FindingStatusArg::Mitigated => FindingStatus::Mitigated,
        FindingStatusArg::Resolved => FindingStatus::Resolved,
    }
}

pub fn status_name(s: i32) -> &'static str {
    match FindingStatus::try_from(s).unwrap_or(FindingStatus::Open) {
        FindingStatus::Resolved => "resolved",
        FindingStatus::Mitigated => "mitigated",
        FindingStatus::Open | FindingStatus::Unspecified => "open",
    }
}

fn show(cli: &Cli, fs: &[Finding]) {
    if cli.output == Output::Json {
        let v: Vec<_> = fs
            .iter()
            .map(|f| {
                json!({"id": f.id, "experiment": f.experiment_id, "scenario": f.scenario,
                "title": f.title, "status": status_name(f.status), "detail": f.detail, "by": f.by})
            })
            .collect();
        println!("{}", serde_json::Value::from(v));
        return;
    }
    let mut t = Table::new(["ID", "EXPERIMENT", "SCENARIO", "STATUS", "TITLE"]);
    for f in fs {
        t.row([
            f.id.clone(),
            f.experiment_id.clone(),
            f.scenario.clone(),
            status_name(f.status).to_owned(),
            f.title.clone(),
        ]);
    }
    t.print();
}

pub async fn finding(cli: &Cli, action: &FindingAction) -> Result<u8, Fail> {
    let mut client = connect(cli).await?;
    let out = match action {
        FindingAction::Add {
            experiment,
            title,
            status: s,
            detail,
        } => vec![
            client
                .add_finding(authed(
                    cli,
                    AddFindingRequest {
                        experiment_id: experiment.clone(),
                        title: title.clone(),
                        status: status(*s) as i32,
                        detail: detail.clone(),
                    },
                )?)
                .await?
                .into_inner(),
        ],
        FindingAction::Update { id, status: s } => vec![
            client
                .update_finding(authed(
                    cli,
                    UpdateFindingRequest {
                        id: id.clone(),
                        status: status(*s) as i32,
                    },
                )?)
                .await?
                .into_inner(),
        ],
        FindingAction::List => {
            client
                .list_findings(authed(cli, ListFindingsRequest { since: None })?)
                .await?
                .into_inner()
                .findings
        }
    };
    show(cli, &out);
    Ok(0)
}
