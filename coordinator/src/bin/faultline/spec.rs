//! `faultline run`'s request: the spec file as written and the flags as a second
//! spec document over it. Both are parsed and shape-checked here first, so a mistake
//! is reported with the file's line (exit 2) before anything is sent; the
//! coordinator parses them again and checks the rest (limits, nodes, its config).
use std::collections::BTreeMap;

use faultline_proto::{
    limits::Percent,
    spec::{Direction, Dur, Filter, Recovery, Scenario, Spec},
    v1::StartRequest,
};

use crate::{
    args::RunArgs,
    exit::{Fail, usage},
};

fn value<T: std::str::FromStr<Err = String>>(
    flag: &str,
    v: &Option<String>,
) -> Result<Option<T>, Fail> {
    v.as_deref()
        .map(|s| s.parse::<T>().map_err(|e| usage(format!("--{flag}: {e}"))))
        .transpose()
}

/// The flags as a spec document (only the fields they set).
fn overrides(args: &RunArgs, file: &Spec) -> Result<Spec, Fail> {
    let mut o = Spec {
        name: args.name.clone(),
        ..Default::default()
    };
    if let Some(f) = &args.fault {
        o.scenario = Some(serde_yaml_ng::from_str::<Scenario>(f).map_err(|_| {
            usage(format!(
                "--fault {f}: expected one of {} (or loss, latency, cpu, memory, cache, gc)",
                Scenario::ALL.map(Scenario::as_str).join(", ")
            ))
        })?);
    }
    match args.nodes.as_slice() {
        [] => {}
        [one] => o.target_node = Some(one.clone()),
        many => o.nodes = many.to_vec(),
    }
    o.interface = args.iface.clone();
    o.direction = match args.direction.as_deref() {
        None => None,
        Some("ingress") => Some(Direction::Ingress),
        Some("egress") => Some(Direction::Egress),
        Some("both") => Some(Direction::Both),
        Some(d) => {
            return Err(usage(format!(
                "--direction {d}: expected ingress, egress or both"
            )));
        }
    };
    o.latency = value::<Dur>("delay", &args.delay)?;
    o.jitter = value::<Dur>("jitter", &args.jitter)?;
    o.duration = value::<Dur>("duration", &args.duration)?;
    o.baseline = value::<Dur>("baseline", &args.baseline)?;
    o.recovery = value::<Dur>("recovery", &args.recovery)?.map(Recovery::Timeout);
    if let Some(p) = value::<Percent>("percent", &args.percent)? {
        // The flag is the magnitude of whichever scenario runs.
        let scenario = o.scenario.or(file.scenario).ok_or_else(|| {
            usage("--percent needs a scenario: --fault or `scenario:` in the spec")
        })?;
        let field = scenario.info().percent_field.ok_or_else(|| {
            usage(format!(
                "--percent is not a setting of {scenario} (see --to-percent)"
            ))
        })?;
        *field(&mut o) = Some(p);
    }
    let flags = [
        ("protocol", &args.proto),
        ("port", &args.port),
        ("dport", &args.dport),
        ("sport", &args.sport),
        ("src", &args.src),
        ("dst", &args.dst),
    ];
    if flags.iter().any(|(_, v)| v.is_some()) {
        let mut f = file.filter.clone().unwrap_or_default();
        let set = |slot: &mut Option<String>, v: &Option<String>| {
            if v.is_some() {
                *slot = v.clone();
            }
        };
        let Filter {
            protocol,
            port,
            sport,
            dport,
            src,
            dst,
        } = &mut f;
        set(protocol, &args.proto);
        set(port, &args.port);
        set(dport, &args.dport);
        set(sport, &args.sport);
        set(src, &args.src);
        set(dst, &args.dst);
        o.filter = Some(f);
    }
    o.target_cgroup = args.target_cgroup.clone();
    o.to_percent = args.to_percent;
    o.paths = args.paths.clone();
    o.components = args.components.clone();
    if !args.hooks.is_empty() {
        let mut hooks: BTreeMap<String, String> = file.hooks.clone();
        for h in &args.hooks {
            let (name, url) = h
                .split_once('=')
                .ok_or_else(|| usage(format!("--hook {h}: expected NAME=URL")))?;
            hooks.insert(name.to_owned(), url.to_owned());
        }
        o.hooks = hooks;
    }
    Ok(o)
}

/// The request for `args`, or the first mistake (exit 2).
pub fn request(args: &RunArgs) -> Result<StartRequest, Fail> {
    let (text, origin) = match &args.spec {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|e| usage(format!("{}: {e}", p.display())))?,
            p.display().to_string(),
        ),
        None => (String::new(), "the command line".to_owned()),
    };
    let file = Spec::parse(&text).map_err(|e| usage(format!("{origin}: {e}")))?;
    let over = overrides(args, &file)?;
    let merged = file.merged(over.clone());
    if merged == Spec::default() {
        return Err(usage(
            "nothing to run: give a spec file or flags (--node, --fault, --duration, ...)",
        ));
    }
    merged
        .check_shape(&text)
        .map_err(|e| usage(format!("{origin}: {e}")))?;
    Ok(StartRequest {
        spec_yaml: text,
        overrides_yaml: if over == Spec::default() {
            String::new()
        } else {
            over.to_yaml()
        },
        wait_for_lease: args.queue,
        ..Default::default()
    })
}
