//! Packet loss: Bernoulli and Gilbert-Elliott (netem's `gemodel`).
//!
//! The Gilbert-Elliott chain is kept per CPU. A single shared chain would need a lock
//! or atomics on every packet; per-CPU chains keep the data path lock-free and each
//! still produces bursts with the model's statistics, because a flow is normally
//! processed on one CPU (RSS/RPS steering).

use aya_ebpf::{helpers::bpf_get_prandom_u32, macros::map, maps::PerCpuArray};
use faultline_common::{GE_BAD, GE_GOOD, LOSS_BERNOULLI, LOSS_GILBERT_ELLIOTT, LossModel};

#[map(name = "FL_GE_STATE")]
static GE_STATE: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// True with probability `p / PROB_ONE`.
#[inline(always)]
fn chance(p: u64) -> bool {
    // SAFETY: helper without arguments.
    (unsafe { bpf_get_prandom_u32() } as u64) < p
}

#[inline(always)]
pub fn should_drop(model: &LossModel) -> bool {
    match model.kind {
        LOSS_BERNOULLI => chance(model.loss_good),
        LOSS_GILBERT_ELLIOTT => {
            let Some(state) = GE_STATE.get_ptr_mut(0) else {
                return false;
            };
            // SAFETY: per-CPU value; no concurrent access on this CPU.
            let state = unsafe { &mut *state };
            if *state == GE_BAD {
                let lost = chance(model.loss_bad);
                if chance(model.r) {
                    *state = GE_GOOD;
                }
                lost
            } else {
                let lost = chance(model.loss_good);
                if chance(model.p) {
                    *state = GE_BAD;
                }
                lost
            }
        }
        _ => false,
    }
}
