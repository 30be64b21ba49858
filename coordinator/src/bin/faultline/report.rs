//! `faultline report`: one experiment's report, or (`--since`) the fleet summary,
//! both computed from the coordinator's records by the library's `report` module;
//! `--junit FILE` writes the window's experiments for CI.
use std::time::{Duration, SystemTime};

use faultline_coordinator::report::{self, stats};
use faultline_proto::{
    spec::Scenario,
    v1::{
        Experiment, GetExperimentEventsRequest, GetExperimentRequest, ListExperimentsRequest,
        ListFindingsRequest, ListScheduleRunsRequest, chaos_service_client::ChaosServiceClient,
    },
};
use tonic::transport::Channel;

use crate::{
    args::{Cli, Output, ReportArgs},
    connection::{authed, connect},
    exit::{Fail, usage},
};

fn ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn scenario_arg(s: Option<&str>) -> Result<Option<Scenario>, Fail> {
    s.map(|s| {
        Scenario::from_name(s).ok_or_else(|| {
            usage(format!(
                "--scenario {s:?}: unknown scenario (one of {})",
                Scenario::ALL.map(|s| s.as_str()).join(", ")
            ))
        })
    })
    .transpose()
}

/// The fleet summary over the last `window`, and the experiments it counted.
pub async fn summary(
    cli: &Cli,
    client: &mut ChaosServiceClient<Channel>,
    window: Duration,
    scenario: Option<Scenario>,
) -> Result<(stats::Summary, Vec<Experiment>), Fail> {
    let now = SystemTime::now();
    let since = now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH);
    let name = scenario.map(|s| s.as_str().to_owned()).unwrap_or_default();
    let experiments = client
        .list_experiments(authed(
            cli,
            ListExperimentsRequest {
                since: Some(since.into()),
                scenario: name.clone(),
                ..Default::default()
            },
        )?)
        .await?
        .into_inner()
        .experiments;
    let runs = client
        .list_schedule_runs(authed(
            cli,
            ListScheduleRunsRequest {
                since: Some(since.into()),
                ..Default::default()
            },
        )?)
        .await?
        .into_inner()
        .runs;
    let findings = client
        .list_findings(authed(
            cli,
            ListFindingsRequest {
                since: Some(since.into()),
            },
        )?)
        .await?
        .into_inner()
        .findings;
    let s = stats::summarize(&stats::Records {
        since_ms: ms(since),
        until_ms: ms(now) + 1,
        scenario,
        experiments: &experiments,
        runs: &runs,
        findings: &findings,
    });
    Ok((s, experiments))
}

fn write_junit(path: &std::path::Path, experiments: &[Experiment]) -> Result<(), Fail> {
    let xml = report::junit::report(experiments)
        .map_err(|e| Fail(crate::exit::INFRA, format!("junit: {e}")))?;
    std::fs::write(path, xml)
        .map_err(|e| Fail(crate::exit::INFRA, format!("write {}: {e}", path.display())))
}

pub async fn report(cli: &Cli, args: &ReportArgs) -> Result<u8, Fail> {
    let scenario = scenario_arg(args.scenario.as_deref())?;
    // A usage mistake is said before any connection is tried.
    if args.experiment.is_none() && args.since.is_none() {
        return Err(usage(
            "give an experiment id (faultline report exp-000001) or a window (faultline report --since 30d)",
        ));
    }
    let mut client = connect(cli).await?;
    match (&args.experiment, args.since) {
        (Some(id), _) => {
            let e = client
                .get_experiment(authed(cli, GetExperimentRequest { id: id.clone() })?)
                .await?
                .into_inner();
            let events = client
                .get_experiment_events(authed(cli, GetExperimentEventsRequest { id: id.clone() })?)
                .await?
                .into_inner()
                .events;
            let window = args.since.unwrap_or(Duration::from_secs(30 * 86_400));
            let (s, _) =
                summary(cli, &mut client, window, Scenario::from_name(&e.scenario)).await?;
            let findings = client
                .list_findings(authed(cli, ListFindingsRequest { since: None })?)
                .await?
                .into_inner()
                .findings;
            if let Some(path) = &args.junit {
                write_junit(path, std::slice::from_ref(&e))?;
            }
            let r = report::experiment(&e, &events, &findings, s.scenarios.first().cloned());
            match cli.output {
                Output::Json => {
                    println!("{}", serde_json::to_string_pretty(&r).expect("serializes"))
                }
                Output::Text => print!("{}", report::markdown::experiment(&r)),
            }
        }
        (None, Some(window)) => {
            let (s, experiments) = summary(cli, &mut client, window, scenario).await?;
            if let Some(path) = &args.junit {
                write_junit(path, &experiments)?;
            }
            match cli.output {
                Output::Json => {
                    println!("{}", serde_json::to_string_pretty(&s).expect("serializes"))
                }
                Output::Text => print!("{}", report::markdown::fleet(&s)),
            }
        }
        (None, None) => unreachable!("refused above"),
    }
    Ok(0)
}
