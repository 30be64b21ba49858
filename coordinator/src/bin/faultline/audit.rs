//! `faultline audit`: the append-only audit log, oldest first.
use std::time::{Duration, SystemTime};

use faultline_coordinator::report::markdown::utc;
use faultline_proto::v1::ListAuditRequest;
use serde_json::{Value, json};

use crate::table::Table;
use crate::{
    args::{Cli, Output},
    connection::{authed, connect},
    exit::Fail,
    render::millis,
};

pub async fn audit(cli: &Cli, since: Duration, limit: u32) -> Result<u8, Fail> {
    let mut client = connect(cli).await?;
    let since = SystemTime::now()
        .checked_sub(since)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let entries = client
        .list_audit(authed(
            cli,
            ListAuditRequest {
                since: Some(since.into()),
                limit,
            },
        )?)
        .await?
        .into_inner()
        .entries;
    if cli.output == Output::Json {
        let v: Vec<Value> = entries
            .iter()
            .map(|e| {
                json!({"seq": e.seq, "at_ms": millis(e.at.as_ref()), "who": e.who, "peer": e.peer,
                       "action": e.action, "target": e.target, "detail": e.detail})
            })
            .collect();
        println!("{}", Value::from(v));
        return Ok(0);
    }
    let mut t = Table::new(["AT", "WHO", "PEER", "ACTION", "TARGET", "DETAIL"]);
    for e in entries {
        t.row([
            millis(e.at.as_ref()).map_or(String::new(), utc),
            e.who,
            e.peer,
            e.action,
            e.target,
            e.detail,
        ]);
    }
    t.print();
    Ok(0)
}
