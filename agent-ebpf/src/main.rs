//! faultline's eBPF data path.
//!
//! Three entry points share one decision: `faultline_ingress` / `faultline_egress`
//! (tc, attached through TCX or clsact) and `faultline_xdp` (ingress only). Each run
//! counts the packet, and — only while the fault is armed, in date and the packet
//! matches the in-kernel filter — applies the fault: drop it, or delay it (see
//! `latency`). Passing returns "continue" rather than "accept", so programs attached
//! after ours still see the packet.
//!
//! Two helpers serve latency: `faultline_ifb` stamps departure times on the agent's
//! IFB device, `faultline_reinj` returns packets released by the delay line.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod deadline;
mod filter;
mod latency;
mod loss;
mod packet;

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    helpers::bpf_redirect,
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::info;
use faultline_common::{
    Counters, DELAY_DIVERT, DELAY_EDT, DELAYED_MARK, DIR_COUNT, DIR_EGRESS, DIR_INDEX_EGRESS,
    DIR_INDEX_INGRESS, DIR_INGRESS, FLAG_LOG, FaultConfig, LatencyModel,
};
use packet::PacketMeta;

#[map(name = "FL_CONFIG")]
static CONFIG: Array<FaultConfig> = Array::with_max_entries(1, 0);

#[map(name = "FL_COUNTERS")]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(DIR_COUNT, 0);

/// The outcome for one packet; a plain tag on purpose (see `packet::parse`), so no
/// pointer has to stay live across the parse. Delayed packets read the model again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Drop,
    /// Drop, and debug logging is on.
    DropLogged,
    /// Delay (already counted); the model is read again from the config.
    Delay,
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
        // The agent refuses latency on XDP; a delay verdict cannot occur here.
        Verdict::Pass | Verdict::Delay => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::DropLogged => {
            log_drop(&ctx, &meta);
            xdp_action::XDP_DROP
        }
    }
}

#[inline(always)]
fn tc_run(ctx: &TcContext, dir_index: u32, dir_bit: u32) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: the program's context; `mark` is readable from tc programs.
    if unsafe { (*skb).mark } == DELAYED_MARK {
        // Released by the delay line: it has had its delay. Pass it on untagged.
        ctx.set_mark(0);
        return TC_ACT_UNSPEC;
    }
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
        Verdict::Delay => {
            let Some(cfg) = CONFIG.get(0) else {
                return TC_ACT_UNSPEC;
            };
            let lat = &cfg.latency;
            let target = match (lat.backend, dir_bit) {
                (DELAY_EDT, DIR_EGRESS) => {
                    latency::stamp_departure(skb, lat);
                    return TC_ACT_UNSPEC;
                }
                // `faultline_to_ifb`, later in the chain, moves it to the IFB.
                (DELAY_EDT, _) => return TC_ACT_UNSPEC,
                (DELAY_DIVERT, DIR_INGRESS) => lat.ingress_redirect,
                _ => lat.egress_redirect,
            };
            // SAFETY: helper with plain arguments.
            unsafe { bpf_redirect(target, 0) as i32 }
        }
    }
}

/// Classic classifier in front of a `mirred` action to the IFB: "matches" (-1, the
/// filter's default class) exactly the ingress packets EDT latency applies to. It
/// runs after `faultline_ingress`, so packets that fault dropped never get here.
#[classifier]
pub fn faultline_to_ifb(ctx: TcContext) -> i32 {
    let Some(cfg) = CONFIG.get(0) else {
        return 0;
    };
    if cfg.armed == 0
        || cfg.latency.backend != DELAY_EDT
        || cfg.directions & DIR_INGRESS == 0
        || deadline::expired(cfg.deadline_ns)
    {
        return 0;
    }
    let mut meta = PacketMeta::new();
    if packet::parse(&ctx, &mut meta) && filter::matches(&cfg.filter, &meta) {
        -1
    } else {
        0
    }
}

/// On the egress of the agent's IFB: only packets `faultline_ingress` redirected for
/// EDT latency arrive here; stamp them for the IFB's fq qdisc.
#[classifier]
pub fn faultline_ifb(ctx: TcContext) -> i32 {
    if let Some(cfg) = CONFIG.get(0)
        && cfg.armed != 0
        && cfg.latency.backend == DELAY_EDT
        && !deadline::expired(cfg.deadline_ns)
    {
        latency::stamp_departure(ctx.skb.skb, &cfg.latency);
    }
    TC_ACT_UNSPEC
}

/// On the ingress of the delay line's TAP devices: a frame the agent wrote back after
/// its delay. Tag it so the fault program lets it through, and send it to the device
/// and direction it was taken from.
#[classifier]
pub fn faultline_reinj(ctx: TcContext) -> i32 {
    let Some(cfg) = CONFIG.get(0) else {
        return TC_ACT_SHOT;
    };
    let lat = &cfg.latency;
    // SAFETY: the program's context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let flags = if ifindex == lat.ingress_redirect {
        BPF_F_INGRESS as u64
    } else if ifindex == lat.egress_redirect {
        0
    } else {
        // Not one of the delay line's devices (or the fault is gone): nowhere to go.
        return TC_ACT_SHOT;
    };
    ctx.set_mark(DELAYED_MARK);
    // SAFETY: helper with plain arguments.
    unsafe { bpf_redirect(lat.target_ifindex, flags) as i32 }
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
        return delay(counters, &cfg.latency);
    }
    counters.dropped += 1;
    if cfg.flags & FLAG_LOG != 0 {
        Verdict::DropLogged
    } else {
        Verdict::Drop
    }
}

/// The latency part of the decision, for a matched packet that was not dropped.
#[inline(always)]
fn delay(counters: &mut Counters, lat: &LatencyModel) -> Verdict {
    let delaying = match lat.backend {
        DELAY_EDT => true,
        DELAY_DIVERT => latency::delay_line_alive(),
        _ => false,
    };
    if !delaying {
        return Verdict::Pass;
    }
    counters.delayed += 1;
    Verdict::Delay
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
