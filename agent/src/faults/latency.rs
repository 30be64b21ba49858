//! Added latency: the operator's delay and jitter turned into the kernel's
//! `LatencyModel` and jitter table, and the choice of backend (EDT with `fq`, or the
//! delay line where `sch_fq` is missing).
use std::{sync::Arc, time::Duration};

use anyhow::Result;
use clap::{Args, ValueEnum};
use faultline_common::{
    DELAY_DIVERT, DELAY_EDT, LATENCY_REORDER, LatencyModel, PROG_IFB, PROG_REINJECT, PROG_TO_IFB,
};
use faultline_proto::{jitter, limits::Percent};

use crate::{
    delay_line::{self, DelayLine, Tap},
    ebpf::{Dir, Programs, TcMode},
    errors::UsageError,
    journal::{Entry, JournalFile, QdiscEntry},
    qdisc, tc,
    timing::Timing,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// EDT where sch_fq exists, the delay line otherwise.
    #[default]
    Auto,
    /// Departure timestamps released by an fq qdisc (needs sch_fq).
    Edt,
    /// Packets held by the agent (any kernel with tc BPF and TAP).
    DelayLine,
}

impl Distribution {
    pub fn shape(self) -> jitter::Shape {
        match self {
            Distribution::Uniform => jitter::Shape::Uniform,
            Distribution::Normal => jitter::Shape::Normal,
        }
    }
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Edt => "edt (fq)",
            Backend::DelayLine => "the delay line",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    /// Offsets spread evenly over [-jitter, +jitter].
    #[default]
    Uniform,
    /// Normal with standard deviation = jitter (tails cut at +-3.7 sigma).
    Normal,
}

#[derive(Args, Clone, Debug)]
pub struct LatencyArgs {
    /// Delay added to each matching packet, e.g. 50ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub delay: Duration,
    /// Jitter around the delay (see --jitter-distribution), e.g. 5ms.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub jitter: Duration,
    /// How the jitter spreads around the delay: uniform over [-jitter, +jitter], or
    /// normal with standard deviation = jitter.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub jitter_distribution: Distribution,
    /// Let jitter reorder packets of one flow (netem's behaviour). By default a
    /// packet never leaves before the previous packet of its flow.
    #[arg(long)]
    pub allow_reorder: bool,
    /// What holds the packets: EDT timestamps released by sch_fq, the agent's
    /// delay line (any kernel), or auto (EDT where sch_fq exists).
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// EDT: replace a custom root qdisc (HTB, CAKE, ...) for the fault's duration.
    /// Its exact kind and options are restored afterwards, but classes and filters
    /// under it are not, so this is refused when it has any.
    #[arg(long)]
    pub force_qdisc: bool,
    /// EDT: the highest packet rate the fq queues are sized for (packets per second
    /// held for delay + jitter must fit, or fq would drop them itself).
    #[arg(long, default_value_t = 100_000)]
    pub max_rate_pps: u64,
    /// Delay line: the most packets held at once (beyond it, packets are dropped and
    /// counted). The default holds 200,000 packets / 256 MiB.
    #[arg(long, default_value_t = 200_000)]
    pub queue_limit: usize,
    /// Also drop this percent of the matching packets (Bernoulli), e.g. 1.
    #[arg(long, value_parser = super::loss::parse_percent)]
    pub loss_percent: Option<Percent>,
}

/// A validated latency request.
#[derive(Clone, Debug)]
pub struct LatencyPlan {
    pub timing: Timing,
    /// The largest delay any packet can get; what the caps bound.
    pub worst: Duration,
    pub description: String,
}

impl LatencyArgs {
    /// An order's latency, with the defaults of the flags an order does not carry.
    pub fn ordered(
        delay: Duration,
        jitter: Duration,
        jitter_distribution: Distribution,
        allow_reorder: bool,
        loss_percent: Option<Percent>,
    ) -> Self {
        Self {
            delay,
            jitter,
            jitter_distribution,
            allow_reorder,
            backend: Backend::Auto,
            force_qdisc: false,
            max_rate_pps: 100_000,
            queue_limit: 200_000,
            loss_percent,
        }
    }

    pub fn plan(&self) -> Result<LatencyPlan, UsageError> {
        if self.delay.is_zero() {
            return Err(UsageError("--delay must be greater than zero".into()));
        }
        if self.jitter > self.delay && self.jitter_distribution == Distribution::Uniform {
            return Err(UsageError(format!(
                "--jitter {} exceeds --delay {}: uniform jitter would ask for negative delays",
                humantime::format_duration(self.jitter),
                humantime::format_duration(self.delay)
            )));
        }
        if self.queue_limit == 0 {
            return Err(UsageError("--queue-limit must be greater than zero".into()));
        }
        if self.max_rate_pps == 0 {
            return Err(UsageError(
                "--max-rate-pps must be greater than zero".into(),
            ));
        }
        let shape = self.jitter_distribution.shape();
        let table = jitter::table(shape);
        let jitter_ns = self.jitter.as_nanos() as u64;
        let worst = jitter::worst_case(self.delay, self.jitter, shape);
        let description = if self.jitter.is_zero() {
            format!("latency {}", humantime::format_duration(self.delay))
        } else {
            format!(
                "latency {} ± {} {}{}",
                humantime::format_duration(self.delay),
                humantime::format_duration(self.jitter),
                match self.jitter_distribution {
                    Distribution::Uniform => "uniform",
                    Distribution::Normal => "normal (sd)",
                },
                if self.allow_reorder {
                    ", reordering allowed"
                } else {
                    ""
                }
            )
        };
        Ok(LatencyPlan {
            timing: Timing {
                delay_ns: self.delay.as_nanos() as u64,
                jitter_ns,
                table: Arc::new(table),
                reorder: self.allow_reorder,
            },
            worst,
            description,
        })
    }
}

impl LatencyPlan {
    /// The kernel's model, before the backend fills in devices.
    pub fn model(&self, backend: u32) -> LatencyModel {
        LatencyModel {
            backend,
            flags: if self.timing.reorder {
                LATENCY_REORDER
            } else {
                0
            },
            delay_ns: self.timing.delay_ns,
            jitter_ns: self.timing.jitter_ns,
            ..Default::default()
        }
    }
}

/// The backend `auto` resolves to here, and why.
pub async fn resolve_backend(requested: Backend) -> Result<Backend, UsageError> {
    match requested {
        Backend::DelayLine => Ok(Backend::DelayLine),
        Backend::Edt | Backend::Auto => {
            let (fq, ifb) = qdisc::probe_fq().await;
            match (requested, fq && ifb) {
                (_, true) => Ok(Backend::Edt),
                (Backend::Auto, false) => Ok(Backend::DelayLine),
                _ => Err(UsageError(format!(
                    "--backend edt needs sch_fq and ifb, and this kernel has {}; use \
                     --backend delay-line (or auto)",
                    match (fq, ifb) {
                        (false, false) => "neither".to_owned(),
                        (false, true) => "no sch_fq".to_owned(),
                        _ => "no ifb".to_owned(),
                    }
                ))),
            }
        }
    }
}

/// What a running latency fault set up besides the fault programs.
pub struct Active {
    pub model: LatencyModel,
    worst: Duration,
    iface: String,
    ifindex: u32,
    /// EDT: the replaced root qdisc of the device.
    replaced_root: Option<qdisc::RootSnapshot>,
    /// EDT ingress: the IFB.
    ifb: Option<String>,
    /// EDT ingress: the mirred selector filter is (or may be) on the device.
    selector: bool,
    delay_line: Option<DelayLine>,
}

/// Where a latency fault applies.
pub struct Site<'a> {
    pub iface: &'a str,
    pub ifindex: u32,
    pub dirs: &'a [Dir],
    pub mode: TcMode,
}

impl Active {
    /// Sets up the backend (before the fault programs are armed). On error, whatever
    /// was already set up is taken down again.
    pub async fn setup(
        journal: &JournalFile,
        programs: &mut Programs,
        site: &Site<'_>,
        args: &LatencyArgs,
        plan: &LatencyPlan,
        backend: Backend,
    ) -> Result<Self> {
        programs.set_jitter_table(&plan.timing.table)?;
        let code = if backend == Backend::Edt {
            DELAY_EDT
        } else {
            DELAY_DIVERT
        };
        let mut active = Self {
            model: LatencyModel {
                target_ifindex: site.ifindex,
                ..plan.model(code)
            },
            worst: plan.worst,
            iface: site.iface.to_owned(),
            ifindex: site.ifindex,
            replaced_root: None,
            ifb: None,
            selector: false,
            delay_line: None,
        };
        let result = match backend {
            Backend::Edt => active.setup_edt(journal, programs, site, args, plan).await,
            _ => active.setup_delay_line(programs, site, args, plan).await,
        };
        if let Err(e) = result {
            if let Err(cleanup) = active.teardown(journal, false).await {
                tracing::error!("cleaning up a failed latency setup: {cleanup:#}");
            }
            return Err(e);
        }
        Ok(active)
    }

    async fn setup_edt(
        &mut self,
        journal: &JournalFile,
        programs: &mut Programs,
        site: &Site<'_>,
        args: &LatencyArgs,
        plan: &LatencyPlan,
    ) -> Result<()> {
        let sizing = qdisc::FqSizing::for_delay(plan.worst.as_nanos() as u64, args.max_rate_pps);
        if site.dirs.contains(&Dir::Egress) {
            let original = qdisc::snapshot(site.ifindex).await?;
            qdisc::check_replaceable(&original, site.iface, args.force_qdisc)?;
            // Write-ahead: the journal knows what to restore before anything changes.
            let mut j = journal.load()?;
            j.qdiscs.push(QdiscEntry {
                iface: site.iface.to_owned(),
                original: original.clone(),
            });
            journal.store(&j)?;
            self.replaced_root = Some(original);
            qdisc::install_fq(site.ifindex, sizing).await?;
        }
        if site.dirs.contains(&Dir::Ingress) {
            let name = qdisc::agent_ifb_name("ifb");
            let mut j = journal.load()?;
            j.ifbs.push(name.clone());
            journal.store(&j)?;
            self.ifb = Some(name.clone());
            let ifindex = qdisc::create_ifb(&name).await?;
            qdisc::install_fq(ifindex, sizing).await?;
            if site.mode == TcMode::Netlink {
                aya::programs::tc::qdisc_add_clsact(&name)?;
            }
            programs.attach_tc_program(&name, PROG_IFB, Dir::Egress, site.mode)?;
            self.model.ingress_redirect = ifindex;
            // The selector lives on the device's clsact (also under TCX, which has
            // no actions); journal it, and the clsact if we add one, first.
            let created_clsact = !tc::has_clsact(site.ifindex).await?;
            let mut j = journal.load()?;
            j.entries.push(Entry {
                iface: site.iface.to_owned(),
                direction: Dir::Ingress,
                program: PROG_TO_IFB.to_owned(),
                created_clsact,
            });
            journal.store(&j)?;
            if created_clsact {
                aya::programs::tc::qdisc_add_clsact(site.iface)?;
            }
            self.selector = true;
            let fd = programs.tc_program_fd(PROG_TO_IFB)?;
            tc::add_ifb_selector(site.ifindex, fd, PROG_TO_IFB, ifindex).await?;
        }
        Ok(())
    }

    async fn setup_delay_line(
        &mut self,
        programs: &mut Programs,
        site: &Site<'_>,
        args: &LatencyArgs,
        plan: &LatencyPlan,
    ) -> Result<()> {
        let (mtu, _) = qdisc::link_shape(site.ifindex).await?;
        let pid = std::process::id() % 10_000_000;
        let mut taps = [None, None];
        for (slot, dir, tag) in [(0, Dir::Ingress, "i"), (1, Dir::Egress, "e")] {
            if !site.dirs.contains(&dir) {
                continue;
            }
            let tap = Tap::create(&format!("fl-dl{tag}{pid}"), mtu).await?;
            if site.mode == TcMode::Netlink {
                aya::programs::tc::qdisc_add_clsact(&tap.name)?;
            }
            programs.attach_tc_program(&tap.name, PROG_REINJECT, Dir::Ingress, site.mode)?;
            match dir {
                Dir::Ingress => self.model.ingress_redirect = tap.ifindex,
                Dir::Egress => self.model.egress_redirect = tap.ifindex,
            }
            taps[slot] = Some(tap);
        }
        let [ingress, egress] = taps;
        let lease = programs.take_divert_lease()?;
        self.delay_line = Some(DelayLine::start(
            ingress,
            egress,
            plan.timing.clone(),
            delay_line::Bounds {
                max_packets: args.queue_limit,
                ..delay_line::Bounds::default()
            },
            lease,
        )?);
        Ok(())
    }

    pub fn delay_line_stats(&self) -> Option<delay_line::StatsView> {
        self.delay_line.as_ref().map(DelayLine::stats)
    }

    /// Takes the backend down after the programs were disarmed: packets already held
    /// are released on schedule first (nothing in flight is lost), then the qdisc is
    /// restored and the devices removed. Returns the delay line's lateness.
    pub async fn teardown(
        &mut self,
        journal: &JournalFile,
        drain: bool,
    ) -> Result<Option<delay_line::Report>> {
        let mut report = None;
        if let Some(line) = self.delay_line.take() {
            report = Some(tokio::task::spawn_blocking(move || line.finish()).await??);
        }
        if drain && (self.replaced_root.is_some() || self.ifb.is_some()) {
            // fq holds packets until their departure time; let them leave first.
            tokio::time::sleep(self.worst + Duration::from_millis(20)).await;
        }
        if let Some(original) = self.replaced_root.take()
            && let Some(note) = qdisc::restore(self.ifindex, &original).await?
        {
            tracing::warn!("{}: {note}", self.iface);
        }
        if std::mem::take(&mut self.selector) {
            match aya::programs::tc::qdisc_detach_program(
                &self.iface,
                aya::programs::TcAttachType::Ingress,
                PROG_TO_IFB,
            ) {
                Ok(()) => {}
                Err(aya::programs::tc::TcError::IoError(e))
                    if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(anyhow::anyhow!("removing the IFB selector filter: {e}")),
            }
        }
        if let Some(ifb) = self.ifb.take() {
            qdisc::delete_link(&ifb).await?;
        }
        let mut j = journal.load()?;
        j.qdiscs.retain(|q| q.iface != self.iface);
        j.ifbs.clear();
        journal.store(&j)?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use faultline_common::JITTER_TABLE_SIZE;

    use super::*;

    fn args(delay_ms: u64, jitter_ms: u64, dist: Distribution) -> LatencyArgs {
        LatencyArgs {
            delay: Duration::from_millis(delay_ms),
            jitter: Duration::from_millis(jitter_ms),
            jitter_distribution: dist,
            allow_reorder: false,
            backend: Backend::Auto,
            force_qdisc: false,
            max_rate_pps: 100_000,
            queue_limit: 1000,
            loss_percent: None,
        }
    }

    #[test]
    fn the_worst_case_delay_is_what_the_caps_see() {
        let plan = args(40, 10, Distribution::Uniform).plan().unwrap();
        // The largest uniform entry is just under +1 jitter.
        assert!(plan.worst <= Duration::from_millis(50));
        assert!(plan.worst > Duration::from_micros(49_990));
        let normal = args(40, 10, Distribution::Normal).plan().unwrap();
        assert!(
            normal.worst > Duration::from_millis(75),
            "{:?}",
            normal.worst
        );
    }

    #[test]
    fn offsets_match_the_kernels_arithmetic() {
        let plan = args(50, 5, Distribution::Uniform).plan().unwrap();
        let t = &plan.timing;
        assert!(t.offset_ns(0) < -4_990_000 && t.offset_ns(0) >= -5_000_000);
        assert!(t.offset_ns(JITTER_TABLE_SIZE - 1) > 4_990_000);
        // Only the low bits index the table, as in the program.
        assert_eq!(t.offset_ns(7), t.offset_ns(7 + JITTER_TABLE_SIZE));
    }

    #[test]
    fn bad_requests_are_refused() {
        assert!(args(0, 0, Distribution::Uniform).plan().is_err());
        let e = args(5, 6, Distribution::Uniform).plan().unwrap_err();
        assert!(e.0.contains("negative"), "{}", e.0);
        let mut a = args(5, 0, Distribution::Uniform);
        a.max_rate_pps = 0;
        assert!(a.plan().is_err());
    }
}
