//! `faultline run`: starts an experiment and, with `--wait`, streams its events (phase
//! changes, the node's samples, the service's readings) until it ends; the exit code
//! comes from its typed outcome.
use std::{collections::HashMap, time::Duration};

use faultline_proto::v1::{ExperimentEvent, Phase};
use serde_json::json;

use crate::{
    args::{Cli, Output, RunArgs},
    connection::{authed, connect},
    exit::{self, Fail, INFRA},
    render::{millis, outcome_json, outcome_text, phase_name, reading_json, sample_json},
};

/// Prints events; live data at most once a second per node in text mode.
struct Progress {
    output: Output,
    last_sample: HashMap<String, std::time::Instant>,
}

/// Integers as integers, fractions to one decimal.
fn round(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

impl Progress {
    fn event(&mut self, ev: &ExperimentEvent) {
        if self.output == Output::Json {
            let mut v = json!({
                "experiment": ev.experiment_id, "at_ms": millis(ev.at.as_ref()),
                "phase": phase_name(ev.phase), "node": ev.node, "message": ev.message,
            });
            if let Some(s) = &ev.sample {
                v["sample"] = sample_json(s);
            }
            if let Some(r) = &ev.reading {
                v["reading"] = reading_json(r);
            }
            if let Some(o) = &ev.outcome {
                v["outcome"] = outcome_json(o);
            }
            println!("{v}");
            return;
        }
        if let Some(r) = &ev.reading {
            let f =
                |v: Option<f64>, unit: &str| v.map_or("-".to_owned(), |v| format!("{v:.2}{unit}"));
            println!(
                "  [{:<8}] service  err {}  p50 {}  p99 {}  rps {}  health {}  incidents {}  ({})",
                phase_name(ev.phase),
                f(r.error_rate_percent, "%"),
                f(r.latency_p50_ms, "ms"),
                f(r.latency_p99_ms, "ms"),
                f(r.throughput_rps, ""),
                f(r.health_score, ""),
                r.active_incidents,
                r.source
            );
            return;
        }
        if let Some(s) = &ev.sample {
            let now = std::time::Instant::now();
            if self
                .last_sample
                .get(&ev.node)
                .is_some_and(|t| now.duration_since(*t) < Duration::from_millis(950))
            {
                return;
            }
            self.last_sample.insert(ev.node.clone(), now);
            let (i, e) = (s.ingress.unwrap_or_default(), s.egress.unwrap_or_default());
            // The node's own monitoring reads /proc/stat: where it tells a different
            // story than the precise counter, say so.
            let ticks =
                if s.cpu_precise && (s.cpu_busy_tick_percent - s.cpu_busy_percent).abs() > 1.0 {
                    format!(" (/proc/stat {:.1}%)", s.cpu_busy_tick_percent)
                } else {
                    String::new()
                };
            println!(
                "  [{:<8}] {:<7} cpu {:5.1}%{ticks}  mem {:5.1}%  psi-cpu {:4.1}  rx {:>8} tx {:>8} pkts  \
                 matched {:>6} dropped {:>6} delayed {:>6}  tcp-retrans {}",
                phase_name(ev.phase),
                ev.node,
                s.cpu_busy_percent,
                s.memory_used_percent,
                s.psi_cpu_some_avg10,
                s.net_rx_packets,
                s.net_tx_packets,
                i.matched + e.matched,
                i.dropped + e.dropped,
                i.delayed + e.delayed,
                s.tcp_retransmits
            );
            // A gc or cache fault's own readings, on a line of their own.
            if let Some(r) = &s.fault_readings {
                let mut readings = r.named();
                readings.sort_by(|a, b| a.0.cmp(&b.0));
                let line: Vec<String> = readings
                    .iter()
                    .map(|(k, v)| format!("{k} {}", round(*v)))
                    .collect();
                println!("  {:<10} {:<7} {}", "", ev.node, line.join("  "));
            }
            return;
        }
        println!(
            "{} [{}] {}",
            ev.experiment_id,
            phase_name(ev.phase),
            ev.message
        );
        if let Some(o) = &ev.outcome {
            println!("{}", outcome_text(o));
        }
    }
}

pub async fn run(cli: &Cli, args: &RunArgs) -> Result<u8, Fail> {
    let request = crate::spec::request(args)?;
    let mut client = connect(cli).await?;
    let mut stream = client.start(authed(cli, request)?).await?.into_inner();
    let mut progress = Progress {
        output: cli.output,
        last_sample: HashMap::new(),
    };
    while let Some(ev) = stream.message().await? {
        progress.event(&ev);
        if let Some(o) = &ev.outcome {
            return Ok(exit::of(o));
        }
        let phase = Phase::try_from(ev.phase).unwrap_or(Phase::Unspecified);
        if !args.wait && phase != Phase::Queued {
            // Without --wait: the experiment is under way; its id was printed.
            return Ok(0);
        }
    }
    Err(Fail(
        INFRA,
        "the coordinator closed the stream before the experiment ended".into(),
    ))
}
