//! Jitter distributions, shared by everything that must agree on them: the agent
//! writes the table into the kernel and draws from it in the delay line, and both the
//! agent and the coordinator bound a request's worst-case delay by it.
use std::time::Duration;

use faultline_common::{JITTER_SCALE, JITTER_SHIFT, JITTER_TABLE_SIZE};

/// The shape of the jitter around the delay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Shape {
    /// Offsets spread evenly over [-jitter, +jitter].
    #[default]
    Uniform,
    /// Normal with standard deviation = jitter (the table's tails end at +-3.7 sd).
    Normal,
}

/// The largest delay a packet can get: `delay` plus the table's largest offset.
/// This is what latency caps bound.
pub fn worst_case(delay: Duration, jitter: Duration, shape: Shape) -> Duration {
    let max_z = table(shape)
        .iter()
        .map(|z| z.unsigned_abs())
        .max()
        .unwrap_or(0);
    let extra = (u128::from(max_z) * jitter.as_nanos()) >> JITTER_SHIFT;
    delay + Duration::from_nanos(extra as u64)
}

/// The table: quantiles of the distribution at the midpoints of `JITTER_TABLE_SIZE`
/// equal-probability bins, in units of jitter / `JITTER_SCALE`. A uniform random
/// index then draws from the distribution (netem's approach).
pub fn table(shape: Shape) -> Vec<i32> {
    let n = JITTER_TABLE_SIZE as usize;
    (0..n)
        .map(|i| {
            let q = (i as f64 + 0.5) / n as f64;
            let z = match shape {
                Shape::Uniform => 2.0 * q - 1.0,
                Shape::Normal => inverse_normal_cdf(q),
            };
            (z * f64::from(JITTER_SCALE)).round() as i32
        })
        .collect()
}

/// Acklam's rational approximation of the standard normal quantile function
/// (relative error < 1.2e-9, far below the table's resolution).
fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(t: &[i32]) -> (f64, f64) {
        let n = t.len() as f64;
        let mean = t.iter().map(|&z| f64::from(z)).sum::<f64>() / n;
        let var = t
            .iter()
            .map(|&z| (f64::from(z) - mean).powi(2))
            .sum::<f64>()
            / n;
        (
            mean / f64::from(JITTER_SCALE),
            var.sqrt() / f64::from(JITTER_SCALE),
        )
    }

    #[test]
    fn tables_have_the_distributions_moments() {
        let (mean, sd) = moments(&table(Shape::Normal));
        assert!(mean.abs() < 1e-3, "normal mean {mean}");
        assert!((sd - 1.0).abs() < 0.01, "normal sd {sd}");
        let (mean, sd) = moments(&table(Shape::Uniform));
        assert!(mean.abs() < 1e-3, "uniform mean {mean}");
        // Uniform on [-1, 1]: sd = 1/sqrt(3).
        assert!((sd - 1.0 / 3f64.sqrt()).abs() < 1e-3, "uniform sd {sd}");
    }

    #[test]
    fn quantile_function_matches_known_values() {
        assert!(inverse_normal_cdf(0.5).abs() < 1e-9);
        assert!((inverse_normal_cdf(0.975) - 1.959_964).abs() < 1e-5);
        assert!((inverse_normal_cdf(0.001) + 3.090_232).abs() < 1e-5);
    }

    #[test]
    fn worst_case_adds_the_largest_offset() {
        let ms = Duration::from_millis;
        let uniform = worst_case(ms(40), ms(10), Shape::Uniform);
        assert!(uniform <= ms(50) && uniform > Duration::from_micros(49_990));
        let normal = worst_case(ms(40), ms(10), Shape::Normal);
        assert!(normal > ms(76) && normal < ms(78), "{normal:?}");
        assert_eq!(worst_case(ms(40), ms(0), Shape::Normal), ms(40));
    }
}
