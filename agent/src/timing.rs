//! The latency timing model both backends apply (EDT in the kernel, the agent's
//! delay line): a delay, and jitter drawn from the distribution's table exactly as
//! the kernel draws it. A leaf: the latency fault builds it, the delay line runs it.
use std::sync::Arc;

use faultline_common::{JITTER_SHIFT, JITTER_TABLE_SIZE};

#[derive(Clone, Debug)]
pub struct Timing {
    pub delay_ns: u64,
    pub jitter_ns: u64,
    pub table: Arc<Vec<i32>>,
    pub reorder: bool,
}

impl Timing {
    /// The jitter offset for one 32-bit random draw, exactly as the kernel computes it.
    pub fn offset_ns(&self, random: u32) -> i64 {
        if self.jitter_ns == 0 {
            return 0;
        }
        let z = self.table[(random & (JITTER_TABLE_SIZE - 1)) as usize];
        (i64::from(z) * self.jitter_ns as i64) >> JITTER_SHIFT
    }
}
