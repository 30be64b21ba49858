//! What an experiment accumulates per phase: the node's kernel metrics (`Window`)
//! and the service's health signals (`Signals`), from which the result's baseline /
//! during / max impact / after figures come.
use faultline_proto::v1::{FaultReadings, MetricSample, SignalSummary};

use crate::health::Reading;

/// Node metric samples of one phase.
#[derive(Default)]
pub struct Window {
    pub cpu: Vec<f64>,
    pub memory: Vec<f64>,
    pub dropped: u64,
    pub matched: u64,
    pub delayed: u64,
    pub retransmits: (Option<u64>, u64),
    /// The fault's own readings: the latest, and the largest of each field.
    pub fault_last: Option<FaultReadings>,
    pub fault_max: Option<FaultReadings>,
}

impl Window {
    pub fn add(&mut self, s: &MetricSample) {
        self.cpu.push(s.cpu_busy_percent);
        self.memory.push(s.memory_used_percent);
        let (i, e) = (s.ingress.unwrap_or_default(), s.egress.unwrap_or_default());
        self.dropped = self.dropped.max(i.dropped + e.dropped);
        self.matched = self.matched.max(i.matched + e.matched);
        self.delayed = self.delayed.max(i.delayed + e.delayed);
        self.retransmits.0.get_or_insert(s.tcp_retransmits);
        self.retransmits.1 = s.tcp_retransmits;
        if let Some(r) = &s.fault_readings {
            self.fault_last = Some(*r);
            self.fault_max.get_or_insert(*r).keep_max(r);
        }
    }
    pub fn mean(v: &[f64]) -> f64 {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    }
    pub fn max(v: &[f64]) -> f64 {
        v.iter().copied().fold(0.0, f64::max)
    }
    fn mean_opt(v: &[f64]) -> Option<f64> {
        (!v.is_empty()).then(|| Self::mean(v))
    }
}

/// The signals of one reading, as the result reports them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Values {
    pub error_rate: Option<f64>,
    pub latency_p99: Option<f64>,
    pub throughput: Option<f64>,
    pub health_score: Option<f64>,
    pub availability: Option<f64>,
}

impl Values {
    pub fn of(r: &Reading) -> Self {
        Self {
            error_rate: r.error_rate(),
            latency_p99: r.p99_ms(),
            throughput: r.throughput(),
            health_score: r.health_score,
            availability: r.error_rate().map(|e| 100.0 - e),
        }
    }
}

/// Mean and worst of one signal.
#[derive(Clone, Copy, Debug, Default)]
struct Acc {
    n: usize,
    sum: f64,
    worst: Option<f64>,
}

impl Acc {
    fn add(&mut self, v: Option<f64>, higher_is_worse: bool) {
        let Some(v) = v else { return };
        self.n += 1;
        self.sum += v;
        self.worst = Some(match self.worst {
            None => v,
            Some(w) if higher_is_worse => w.max(v),
            Some(w) => w.min(v),
        });
    }
    fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }
}

/// The health signals of one phase.
#[derive(Clone, Debug, Default)]
pub struct Signals {
    acc: [Acc; 5],
    pub source: &'static str,
    pub score_computed: bool,
}

/// (name, unit, higher is worse) of each signal, in `Signals::acc` order.
const SIGNALS: [(&str, &str, bool); 5] = [
    ("error_rate", "%", true),
    ("latency_p99", "ms", true),
    ("throughput", "req/s", false),
    ("health_score", "points", false),
    ("availability", "%", false),
];

impl Signals {
    pub fn add(&mut self, v: &Values, source: &'static str) {
        let vals = [
            v.error_rate,
            v.latency_p99,
            v.throughput,
            v.health_score,
            v.availability,
        ];
        for (i, (_, _, worse)) in SIGNALS.iter().enumerate() {
            self.acc[i].add(vals[i], *worse);
        }
        if !source.is_empty() {
            self.source = source;
        }
    }

    pub fn mean(&self, name: &str) -> Option<f64> {
        SIGNALS
            .iter()
            .position(|s| s.0 == name)
            .and_then(|i| self.acc[i].mean())
    }

    pub fn is_empty(&self) -> bool {
        self.acc.iter().all(|a| a.n == 0)
    }
}

/// The result's table: baseline, during (mean and worst), after, per signal with a
/// source, then the node's CPU and memory.
pub fn summaries(
    baseline: &Signals,
    during: &Signals,
    after: &Signals,
    score_source: &'static str,
    nodes: [&Window; 3],
) -> Vec<SignalSummary> {
    let mut out = Vec::new();
    for (i, (name, unit, _)) in SIGNALS.iter().enumerate() {
        let (b, d, a) = (baseline.acc[i], during.acc[i], after.acc[i]);
        if b.n + d.n + a.n == 0 {
            continue;
        }
        out.push(SignalSummary {
            name: (*name).to_owned(),
            unit: (*unit).to_owned(),
            source: if *name == "health_score" {
                score_source.to_owned()
            } else {
                [baseline.source, during.source, after.source]
                    .into_iter()
                    .find(|s| !s.is_empty())
                    .unwrap_or("")
                    .to_owned()
            },
            baseline: b.mean(),
            during: d.mean(),
            max_impact: d.worst,
            after: a.mean(),
        });
    }
    let [b, d, a] = nodes;
    for (name, pick) in [
        (
            "node_cpu",
            (|w: &Window| w.cpu.clone()) as fn(&Window) -> Vec<f64>,
        ),
        ("node_memory", |w: &Window| w.memory.clone()),
    ] {
        let (bv, dv, av) = (pick(b), pick(d), pick(a));
        if bv.is_empty() && dv.is_empty() && av.is_empty() {
            continue;
        }
        out.push(SignalSummary {
            name: name.to_owned(),
            unit: "%".into(),
            source: "node".into(),
            baseline: Window::mean_opt(&bv),
            during: Window::mean_opt(&dv),
            max_impact: (!dv.is_empty()).then(|| Window::max(&dv)),
            after: Window::mean_opt(&av),
        });
    }
    out
}
