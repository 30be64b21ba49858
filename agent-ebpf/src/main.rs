//! faultline's eBPF data path.
//!
//! Three entry points share one decision: `faultline_ingress` / `faultline_egress`
//! (tc, attached through TCX or clsact) and `faultline_xdp` (ingress only). Each run
//! counts the packet, and — only while the fault is armed, in date and the packet
//! matches the in-kernel filter — applies the fault. Passing returns "continue"
//! rather than "accept", so programs attached after ours still see the packet.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod deadline;
mod filter;
mod loss;
mod packet;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::info;
use faultline_common::{
    Counters, DIR_COUNT, DIR_EGRESS, DIR_INDEX_EGRESS, DIR_INDEX_INGRESS, DIR_INGRESS, FLAG_LOG,
    FaultConfig,
};
use packet::PacketMeta;

#[map(name = "FL_CONFIG")]
static CONFIG: Array<FaultConfig> = Array::with_max_entries(1, 0);

#[map(name = "FL_COUNTERS")]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(DIR_COUNT, 0);

/// The outcome for one packet; small on purpose (see `packet::parse`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Drop,
    /// Drop, and debug logging is on.
    DropLogged,
}

#[classifier]
pub fn faultline_ingress(ctx: TcContext) -> i32 {
    tc_run(&ctx, DIR_INDEX_INGRESS, DIR_INGRESS)
}

#[classifier]
pub fn faultline_egress(ctx: TcContext) -> i32 {
    tc_run(&ctx, DIR_INDEX_EGRESS, DIR_EGRESS)
}

#[xdp]
pub fn faultline_xdp(ctx: XdpContext) -> u32 {
    let mut meta = PacketMeta::new();
    let verdict = decide(DIR_INDEX_INGRESS, DIR_INGRESS, &mut meta, |meta| {
        packet::parse(&ctx, meta)
    });
    match verdict {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::DropLogged => {
            log_drop(&ctx, &meta);
            xdp_action::XDP_DROP
        }
    }
}

#[inline(always)]
fn tc_run(ctx: &TcContext, dir_index: u32, dir_bit: u32) -> i32 {
    let mut meta = PacketMeta::new();
    let verdict = decide(dir_index, dir_bit, &mut meta, |meta| {
        packet::parse(ctx, meta)
    });
    match verdict {
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop => TC_ACT_SHOT,
        Verdict::DropLogged => {
            log_drop(ctx, &meta);
            TC_ACT_SHOT
        }
    }
}

/// The shared decision. `parse` runs only once the fault is known to be armed and in
/// date, so an idle program costs one counter bump and one map lookup.
#[inline(always)]
fn decide(
    dir_index: u32,
    dir_bit: u32,
    meta: &mut PacketMeta,
    parse: impl FnOnce(&mut PacketMeta) -> bool,
) -> Verdict {
    let Some(counters) = COUNTERS.get_ptr_mut(dir_index) else {
        return Verdict::Pass;
    };
    // SAFETY: per-CPU value of a map we own; the program cannot be preempted on this CPU.
    let counters = unsafe { &mut *counters };
    counters.seen += 1;

    let Some(cfg) = CONFIG.get(0) else {
        return Verdict::Pass;
    };
    if cfg.armed == 0 || cfg.directions & dir_bit == 0 {
        return Verdict::Pass;
    }
    if deadline::expired(cfg.deadline_ns) {
        return Verdict::Pass;
    }
    if !parse(meta) || !filter::matches(&cfg.filter, meta) {
        return Verdict::Pass;
    }
    counters.matched += 1;

    if !loss::should_drop(&cfg.loss) {
        return Verdict::Pass;
    }
    counters.dropped += 1;
    if cfg.flags & FLAG_LOG != 0 {
        Verdict::DropLogged
    } else {
        Verdict::Drop
    }
}

#[inline(always)]
fn log_drop<C: aya_ebpf::EbpfContext>(ctx: &C, meta: &PacketMeta) {
    info!(
        ctx,
        "faultline: drop family={} proto={} sport={} dport={}",
        meta.family,
        meta.proto,
        meta.sport,
        meta.dport
    );
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    panic!("faultline-ebpf is an eBPF object; it only runs when loaded by faultline-agent")
}
