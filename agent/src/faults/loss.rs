//! Packet loss: the operator's model (Bernoulli percent, or Gilbert-Elliott with
//! netem's `gemodel p r 1-h 1-k` parameters) turned into the kernel's `LossModel`.
use clap::{Args, ValueEnum};
use faultline_common::{LOSS_BERNOULLI, LOSS_GILBERT_ELLIOTT, LossModel, PROB_ONE};
use faultline_proto::limits::Percent;

use crate::errors::UsageError;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Model {
    /// Each matching packet is lost independently with --percent.
    #[default]
    Bernoulli,
    /// Bursty loss: a two-state Markov chain (netem's gemodel).
    GilbertElliott,
}

#[derive(Args, Clone, Debug, Default)]
pub struct LossArgs {
    /// Loss model.
    #[arg(long, value_enum, default_value_t = Model::Bernoulli)]
    pub model: Model,
    /// Bernoulli loss probability in percent (resolution 1e-6 % or better).
    #[arg(long, value_parser = parse_percent, allow_negative_numbers = true)]
    pub percent: Option<Percent>,
    /// Gilbert-Elliott: percent chance per packet to move from the good to the bad state.
    #[arg(long = "ge-p", value_parser = parse_percent, allow_negative_numbers = true)]
    pub ge_p: Option<Percent>,
    /// Gilbert-Elliott: percent chance per packet to move back to good [default: 100 - p].
    #[arg(long = "ge-r", value_parser = parse_percent, allow_negative_numbers = true)]
    pub ge_r: Option<Percent>,
    /// Gilbert-Elliott: loss percent in the bad state (netem's 1-h) [default: 100].
    #[arg(long = "ge-1-h", value_parser = parse_percent, allow_negative_numbers = true)]
    pub ge_bad_loss: Option<Percent>,
    /// Gilbert-Elliott: loss percent in the good state (netem's 1-k) [default: 0].
    #[arg(long = "ge-1-k", value_parser = parse_percent, allow_negative_numbers = true)]
    pub ge_good_loss: Option<Percent>,
}

/// A loss probability in percent: between 0 and 100, and 0 or at least the data
/// path's resolution (a smaller one would be applied as no loss at all).
pub fn parse_percent(s: &str) -> Result<Percent, String> {
    let p = s
        .parse::<Percent>()
        .map_err(|e| format!("{e} (percent must be between 0 and 100)"))?;
    faultline_proto::filter::check_loss_resolution(p)?;
    Ok(p)
}

/// Fixed-point probability for the data path (see `faultline_common::PROB_ONE`).
pub fn probability(p: Percent) -> u64 {
    ((p.value() / 100.0) * PROB_ONE as f64).round() as u64
}

/// A validated loss request.
#[derive(Clone, Debug, PartialEq)]
pub struct LossPlan {
    pub model: LossModel,
    /// The long-run loss rate the model produces; this is what the caps limit.
    pub expected: Percent,
    pub description: String,
}

impl LossArgs {
    pub fn plan(&self) -> Result<LossPlan, UsageError> {
        let ge_given = [self.ge_p, self.ge_r, self.ge_bad_loss, self.ge_good_loss]
            .iter()
            .any(Option::is_some);
        match self.model {
            Model::Bernoulli => {
                if ge_given {
                    return Err(UsageError(
                        "--ge-* options need --model gilbert-elliott".into(),
                    ));
                }
                let percent = self
                    .percent
                    .ok_or_else(|| UsageError("--percent is required for Bernoulli loss".into()))?;
                Ok(LossPlan {
                    model: LossModel {
                        kind: LOSS_BERNOULLI,
                        loss_good: probability(percent),
                        ..Default::default()
                    },
                    expected: percent,
                    description: format!("{percent} bernoulli"),
                })
            }
            Model::GilbertElliott => {
                if self.percent.is_some() {
                    return Err(UsageError(
                        "--percent conflicts with --model gilbert-elliott; its loss rate \
                         follows from --ge-p/--ge-r/--ge-1-h/--ge-1-k"
                            .into(),
                    ));
                }
                let p = self.ge_p.ok_or_else(|| {
                    UsageError("--ge-p is required for Gilbert-Elliott loss".into())
                })?;
                let pct = |v: f64| Percent::new(v).expect("in range");
                let r = self.ge_r.unwrap_or_else(|| pct(100.0 - p.value()));
                let bad = self.ge_bad_loss.unwrap_or_else(|| pct(100.0));
                let good = self.ge_good_loss.unwrap_or_else(|| pct(0.0));
                let expected = ge_stationary_loss(p.value(), r.value(), bad.value(), good.value())
                    .ok_or_else(|| {
                        UsageError(
                            "--ge-p and --ge-r are both 0: the chain never moves, its loss \
                             rate is undefined"
                                .into(),
                        )
                    })?;
                Ok(LossPlan {
                    model: LossModel {
                        kind: LOSS_GILBERT_ELLIOTT,
                        p: probability(p),
                        r: probability(r),
                        loss_bad: probability(bad),
                        loss_good: probability(good),
                        ..Default::default()
                    },
                    expected: pct(expected),
                    description: format!(
                        "gilbert-elliott p={p} r={r} 1-h={bad} 1-k={good} (long-run {:.4}%)",
                        expected
                    ),
                })
            }
        }
    }
}

/// Long-run loss of the Gilbert-Elliott chain, in percent: the chain spends
/// p/(p+r) of the packets in the bad state.
pub fn ge_stationary_loss(p: f64, r: f64, bad_loss: f64, good_loss: f64) -> Option<f64> {
    if p + r == 0.0 {
        return None;
    }
    let in_bad = p / (p + r);
    Some(in_bad * bad_loss + (1.0 - in_bad) * good_loss)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(model: Model) -> LossArgs {
        LossArgs {
            model,
            percent: None,
            ge_p: None,
            ge_r: None,
            ge_bad_loss: None,
            ge_good_loss: None,
        }
    }

    #[test]
    fn probabilities_resolve_one_in_a_million() {
        let one_ppm = probability(Percent::new(1e-4).unwrap());
        assert!(one_ppm > 0);
        let rel = (one_ppm as f64 / PROB_ONE as f64 - 1e-6).abs() / 1e-6;
        assert!(rel < 1e-3, "relative error {rel}");
        assert_eq!(probability(Percent::new(100.0).unwrap()), PROB_ONE);
        assert_eq!(probability(Percent::new(0.0).unwrap()), 0);
    }

    #[test]
    fn gilbert_elliott_defaults_follow_netem() {
        let mut a = args(Model::GilbertElliott);
        a.ge_p = Some(Percent::new(5.0).unwrap());
        let plan = a.plan().unwrap();
        // r defaults to 100 - p, 1-h to 100 %, 1-k to 0 %: loss = p/(p+r) = 5 %.
        assert_eq!(plan.model.r, probability(Percent::new(95.0).unwrap()));
        assert_eq!(plan.model.loss_bad, PROB_ONE);
        assert_eq!(plan.model.loss_good, 0);
        assert!((plan.expected.value() - 5.0).abs() < 1e-9);
    }

    #[test]
    fn stationary_loss_mixes_the_two_states() {
        let l = ge_stationary_loss(1.0, 24.0, 80.0, 0.4).unwrap();
        assert!((l - (0.04 * 80.0 + 0.96 * 0.4)).abs() < 1e-9);
        assert_eq!(ge_stationary_loss(0.0, 0.0, 100.0, 0.0), None);
    }

    #[test]
    fn conflicting_options_are_refused() {
        let mut a = args(Model::Bernoulli);
        assert!(a.plan().unwrap_err().0.contains("--percent is required"));
        a.percent = Some(Percent::new(1.0).unwrap());
        a.ge_p = Some(Percent::new(1.0).unwrap());
        assert!(a.plan().unwrap_err().0.contains("gilbert-elliott"));
        let mut g = args(Model::GilbertElliott);
        g.percent = Some(Percent::new(1.0).unwrap());
        assert!(g.plan().unwrap_err().0.contains("conflicts"));
    }
}
