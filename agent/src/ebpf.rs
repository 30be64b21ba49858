//! Loading faultline's eBPF object, attaching it (TCX, clsact via netlink, or XDP),
//! writing the fault configuration and reading the per-CPU counters.
use std::fmt;

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, PerCpuArray},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
    util::KernelVersion,
};
use clap::ValueEnum;
use faultline_common::{
    Counters, DIR_EGRESS, DIR_INDEX_EGRESS, DIR_INDEX_INGRESS, DIR_INGRESS, FaultConfig,
    MAP_CONFIG, MAP_COUNTERS, MAP_DIVERT_LEASE, MAP_JITTER, PROG_TC_EGRESS, PROG_TC_INGRESS,
    PROG_XDP,
};
use serde::{Deserialize, Serialize};

/// The object agent/build.rs compiled from `agent-ebpf/`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/faultline-ebpf"));

/// Writes the kernel-side lease of the delay line (`FL_DIVERT_LEASE[0]`).
pub type LeaseWriter = Box<dyn FnMut(u64) -> anyhow::Result<()> + Send>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    Ingress,
    Egress,
}

impl Dir {
    pub fn program(self) -> &'static str {
        match self {
            Dir::Ingress => PROG_TC_INGRESS,
            Dir::Egress => PROG_TC_EGRESS,
        }
    }
    pub fn bit(self) -> u32 {
        match self {
            Dir::Ingress => DIR_INGRESS,
            Dir::Egress => DIR_EGRESS,
        }
    }
    pub fn tc_attach_type(self) -> TcAttachType {
        match self {
            Dir::Ingress => TcAttachType::Ingress,
            Dir::Egress => TcAttachType::Egress,
        }
    }
}

impl fmt::Display for Dir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dir::Ingress => "ingress",
            Dir::Egress => "egress",
        })
    }
}

/// How tc programs are attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum TcMode {
    /// TCX on kernels >= 6.6 (links die with the agent), clsact via netlink before.
    #[default]
    Auto,
    /// TCX links (kernel >= 6.6).
    Tcx,
    /// A clsact qdisc with direct-action bpf filters (any kernel; filters outlive a
    /// killed agent until the next start removes them, the in-kernel deadline disarms
    /// them before that).
    Netlink,
}

impl TcMode {
    pub fn resolve(self) -> Result<TcMode> {
        let tcx_ok = KernelVersion::current()
            .map(|v| v >= KernelVersion::new(6, 6, 0))
            .unwrap_or(false);
        Ok(match self {
            TcMode::Auto if tcx_ok => TcMode::Tcx,
            TcMode::Auto => TcMode::Netlink,
            TcMode::Tcx if !tcx_ok => {
                return Err(anyhow!(crate::errors::UsageError(
                    "--tc-mode tcx needs kernel >= 6.6; use --tc-mode netlink".into()
                )));
            }
            other => other,
        })
    }
}

/// What one attachment is, as reported to the operator and the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum AttachKind {
    Tcx {
        direction: Dir,
    },
    Netlink {
        direction: Dir,
        priority: u16,
        handle: u32,
    },
    XdpNative,
    XdpGeneric,
}

impl fmt::Display for AttachKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachKind::Tcx { direction } => write!(f, "{direction} via tcx"),
            AttachKind::Netlink {
                direction,
                priority,
                handle,
            } => write!(
                f,
                "{direction} via clsact (prio {priority}, handle {:x}:{:x})",
                handle >> 16,
                handle & 0xffff
            ),
            AttachKind::XdpNative => write!(f, "ingress via xdp (native)"),
            AttachKind::XdpGeneric => write!(f, "ingress via xdp (generic)"),
        }
    }
}

/// A link is held only for its drop: dropping it detaches the program.
#[expect(dead_code, reason = "held for drop; never read")]
enum Link {
    Tc(SchedClassifierLink),
    Xdp(XdpLink),
}

/// Counters summed over CPUs, per direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DirCounters {
    pub ingress: CounterView,
    pub egress: CounterView,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CounterView {
    pub seen: u64,
    pub matched: u64,
    pub dropped: u64,
    pub delayed: u64,
}

impl From<Counters> for CounterView {
    fn from(c: Counters) -> Self {
        Self {
            seen: c.seen,
            matched: c.matched,
            dropped: c.dropped,
            delayed: c.delayed,
        }
    }
}

/// One loaded copy of the programs and maps. Dropping it detaches every link
/// (aya detaches TCX/XDP links and netlink filters it owns on drop).
pub struct Programs {
    ebpf: Ebpf,
    links: Vec<(AttachKind, Link)>,
    /// Kernel ids of the programs attached, for operators and residue checks.
    program_ids: Vec<u32>,
    _logger: Option<tokio::task::JoinHandle<()>>,
}

impl Programs {
    pub fn load(debug_log: bool) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        // aya-log records cost a ring-buffer write per event; level 0 disables them in
        // the kernel unless the operator asked for them.
        let level: u8 = if debug_log { 0xff } else { 0 };
        loader.override_global("AYA_LOG_LEVEL", &level, false);
        let mut ebpf = loader
            .load(OBJECT)
            .context("loading the faultline eBPF object")
            .map_err(crate::preflight::bpf_denied)?;
        let logger = if debug_log {
            Some(spawn_logger(&mut ebpf)?)
        } else {
            None
        };
        Ok(Self {
            ebpf,
            links: Vec::new(),
            program_ids: Vec::new(),
            _logger: logger,
        })
    }

    pub fn configure(&mut self, cfg: &FaultConfig) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(MAP_CONFIG)
            .ok_or_else(|| anyhow!("map {MAP_CONFIG} missing from the object"))?;
        let mut array: Array<_, FaultConfig> = Array::try_from(map)?;
        array
            .set(0, cfg, 0)
            .context("writing the fault configuration")?;
        Ok(())
    }

    fn tc_program(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("loading {name} into the kernel"))
                .map_err(crate::preflight::bpf_denied)?;
        }
        Ok(prog)
    }

    /// The fd of one of the object's tc programs (loaded on first use), for netlink
    /// filters the agent builds itself.
    pub fn tc_program_fd(&mut self, name: &str) -> Result<std::os::fd::RawFd> {
        use std::os::fd::{AsFd, AsRawFd};
        let prog = self.tc_program(name)?;
        let id = prog.info()?.id();
        let fd = prog.fd()?.as_fd().as_raw_fd();
        if !self.program_ids.contains(&id) {
            self.program_ids.push(id);
        }
        Ok(fd)
    }

    /// Attaches the fault program for `dir`. `mode` must be resolved (Tcx or
    /// Netlink); for netlink the caller has made sure a clsact qdisc exists.
    pub fn attach_tc(&mut self, iface: &str, dir: Dir, mode: TcMode) -> Result<AttachKind> {
        self.attach_tc_program(iface, dir.program(), dir, mode)
    }

    /// Attaches any of the object's tc programs (the IFB and delay-line helpers too).
    pub fn attach_tc_program(
        &mut self,
        iface: &str,
        program: &str,
        dir: Dir,
        mode: TcMode,
    ) -> Result<AttachKind> {
        let prog = self.tc_program(program)?;
        let options = match mode {
            TcMode::Netlink => TcAttachOptions::Netlink(NlOptions::default()),
            _ => TcAttachOptions::TcxOrder(Default::default()),
        };
        let id = prog
            .attach_with_options(iface, dir.tc_attach_type(), options)
            .with_context(|| format!("attaching {program} to {iface} {dir}"))?;
        let link = prog.take_link(id)?;
        let program_id = prog.info()?.id();
        let kind = match mode {
            TcMode::Netlink => AttachKind::Netlink {
                direction: dir,
                priority: link.priority()?,
                handle: link.handle()?.into(),
            },
            _ => AttachKind::Tcx { direction: dir },
        };
        self.links.push((kind.clone(), Link::Tc(link)));
        self.program_ids.push(program_id);
        Ok(kind)
    }

    /// Attaches the XDP program: native mode where the driver supports it, generic
    /// (skb) mode otherwise.
    pub fn attach_xdp(&mut self, iface: &str) -> Result<AttachKind> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(PROG_XDP)
            .ok_or_else(|| anyhow!("program {PROG_XDP} missing from the object"))?
            .try_into()?;
        prog.load()
            .context("loading the XDP program")
            .map_err(crate::preflight::bpf_denied)?;
        let (id, kind) = match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => (id, AttachKind::XdpNative),
            Err(native_err) => {
                let id = prog.attach(iface, XdpMode::Skb).with_context(|| {
                    format!("attaching XDP to {iface} (native mode failed too: {native_err})")
                })?;
                (id, AttachKind::XdpGeneric)
            }
        };
        let link = prog.take_link(id)?;
        self.program_ids.push(prog.info()?.id());
        self.links.push((kind.clone(), Link::Xdp(link)));
        Ok(kind)
    }

    /// Writes the jitter distribution table (see `faultline_common::LatencyModel`).
    pub fn set_jitter_table(&mut self, table: &[i32]) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(MAP_JITTER)
            .ok_or_else(|| anyhow!("map {MAP_JITTER} missing from the object"))?;
        let mut array: Array<_, i32> = Array::try_from(map)?;
        for (i, z) in table.iter().enumerate() {
            array
                .set(i as u32, z, 0)
                .context("writing the jitter table")?;
        }
        Ok(())
    }

    /// Hands the delay line's lease map to its owner (the delay-line thread).
    pub fn take_divert_lease(&mut self) -> Result<LeaseWriter> {
        let map = self
            .ebpf
            .take_map(MAP_DIVERT_LEASE)
            .ok_or_else(|| anyhow!("map {MAP_DIVERT_LEASE} missing from the object"))?;
        let mut array: Array<_, u64> = Array::try_from(map)?;
        Ok(Box::new(move |until: u64| {
            array
                .set(0, until, 0)
                .context("renewing the delay line's lease")
        }))
    }

    pub fn counters(&self) -> Result<DirCounters> {
        let map = self
            .ebpf
            .map(MAP_COUNTERS)
            .ok_or_else(|| anyhow!("map {MAP_COUNTERS} missing from the object"))?;
        let array: PerCpuArray<_, Counters> = PerCpuArray::try_from(map)?;
        let sum = |index: u32| -> Result<CounterView> {
            let mut total = Counters::default();
            for c in array.get(&index, 0)?.iter() {
                total.add(c);
            }
            Ok(total.into())
        };
        Ok(DirCounters {
            ingress: sum(DIR_INDEX_INGRESS)?,
            egress: sum(DIR_INDEX_EGRESS)?,
        })
    }

    pub fn program_ids(&self) -> &[u32] {
        &self.program_ids
    }

    /// Detaches every link now (rather than at drop), so callers can order removal.
    pub fn detach_all(&mut self) {
        self.links.clear();
    }
}

fn spawn_logger(ebpf: &mut Ebpf) -> Result<tokio::task::JoinHandle<()>> {
    let logger = aya_log::EbpfLogger::init(ebpf).context("initialising aya-log")?;
    // SAFETY: the logger owns its ring-buffer fd and keeps it open, unchanged, for as
    // long as the AsyncFd owns the logger.
    let mut fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }
    .map_err(|e| anyhow!("registering the aya-log ring buffer: {e}"))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
