//! The dashboard's charts, drawn on the server as SVG from recorded data: an
//! experiment's timeline of one signal (baseline, fault and recovery shaded, the
//! guard's threshold drawn, the breach marked) and the recovery-time distribution.
//! Pure functions of their inputs; every element a reader (or a test) looks for has
//! a class: `phase-baseline|fault|recovery`, `series`, `threshold`, `breach`, `bar`.
use std::fmt::Write;

use faultline_proto::v1::Phase;

use crate::report::stats::Distribution;

const W: f64 = 720.0;
const H: f64 = 200.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 24.0;
const BOTTOM: f64 = 26.0;

/// One signal of one experiment over time.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    pub title: String,
    pub unit: String,
    /// Where the values came from, shown beside the title.
    pub source: String,
    /// (time in ms, value), oldest first; readings without the signal are left out.
    pub points: Vec<(i64, f64)>,
    /// (from ms, to ms, phase) spans, oldest first.
    pub phases: Vec<(i64, i64, Phase)>,
    /// The guard on this signal: its value and what it is called.
    pub threshold: Option<(f64, String)>,
    /// When a guard breach became visible; the value it saw if it was this signal's.
    pub breach: Option<(i64, Option<f64>, String)>,
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The smallest of 1, 2 or 5 × 10^k at or above `x` (x > 0).
fn nice(x: f64) -> f64 {
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|v| *v >= x * 0.999_999)
        .unwrap_or(10.0 * p)
}

fn phase_class(p: Phase) -> Option<&'static str> {
    match p {
        Phase::Baseline => Some("baseline"),
        Phase::Fault => Some("fault"),
        Phase::Recovery => Some("recovery"),
        Phase::Unspecified
        | Phase::Queued
        | Phase::Preflight
        | Phase::Completed
        | Phase::Aborted
        | Phase::Failed
        | Phase::Interrupted => None,
    }
}

fn fmt_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub fn timeline(t: &Timeline) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart timeline" viewBox="0 0 {W} {H}" role="img" aria-label="{}">"#,
        escape(&t.title)
    );
    let source = if t.source.is_empty() {
        String::new()
    } else {
        format!(" — {}", t.source)
    };
    let _ = write!(
        s,
        r#"<text class="title" x="{LEFT}" y="15">{} ({}){}</text>"#,
        escape(&t.title),
        escape(&t.unit),
        escape(&source)
    );
    let times = t
        .points
        .iter()
        .map(|p| p.0)
        .chain(t.phases.iter().flat_map(|p| [p.0, p.1]));
    let (t0, t1) = times.fold((i64::MAX, i64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    if t.points.is_empty() || t0 >= t1 {
        let _ = write!(
            s,
            r#"<text class="empty" x="{}" y="{}">no readings of this signal</text></svg>"#,
            W / 2.0 - 70.0,
            H / 2.0
        );
        return s;
    }
    let top = t
        .points
        .iter()
        .map(|p| p.1)
        .chain(t.threshold.iter().map(|x| x.0))
        .chain(t.breach.iter().filter_map(|b| b.1))
        .fold(0.0f64, f64::max);
    // Four grid steps of 1, 2 or 5 × 10^k, the last at or just above the peak.
    let step = if top > 0.0 {
        nice(top * 1.05 / 4.0)
    } else {
        0.25
    };
    let ymax = (top * 1.05 / step).ceil().max(1.0) * step;
    let steps = (ymax / step).round() as i32;
    let x = |ms: i64| LEFT + (ms - t0) as f64 / (t1 - t0) as f64 * (W - LEFT - RIGHT);
    let y = |v: f64| TOP + (1.0 - v / ymax) * (H - TOP - BOTTOM);
    for (from, to, p) in &t.phases {
        if let Some(c) = phase_class(*p) {
            let _ = write!(
                s,
                r#"<rect class="phase phase-{c}" x="{:.1}" y="{TOP}" width="{:.1}" height="{}"><title>{c}</title></rect>"#,
                x(*from),
                (x(*to) - x(*from)).max(0.5),
                H - TOP - BOTTOM
            );
        }
    }
    for i in 0..=steps {
        let v = step * f64::from(i);
        let _ = write!(
            s,
            r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{:.1}" y2="{:.1}"/><text class="axis" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            W - RIGHT,
            y(v),
            y(v),
            LEFT - 4.0,
            y(v) + 4.0,
            fmt_value(v)
        );
    }
    let span_s = (t1 - t0) as f64 / 1e3;
    let step = nice((span_s / 6.0).max(1.0));
    let mut k = 0.0;
    while k <= span_s + 1e-9 {
        let ms = t0 + (k * 1e3) as i64;
        let _ = write!(
            s,
            r#"<text class="axis" x="{:.1}" y="{}" text-anchor="middle">+{}s</text>"#,
            x(ms),
            H - 8.0,
            k
        );
        k += step;
    }
    if let Some((v, name)) = &t.threshold {
        let _ = write!(
            s,
            r#"<line class="threshold" x1="{LEFT}" x2="{}" y1="{:.1}" y2="{:.1}"><title>{} {}</title></line><text class="threshold-label" x="{}" y="{:.1}" text-anchor="end">{} {}</text>"#,
            W - RIGHT,
            y(*v),
            y(*v),
            escape(name),
            fmt_value(*v),
            W - RIGHT - 2.0,
            y(*v) - 3.0,
            escape(name),
            fmt_value(*v)
        );
    }
    let line: Vec<String> = t
        .points
        .iter()
        .map(|(ms, v)| format!("{:.1},{:.1}", x(*ms), y(*v)))
        .collect();
    let _ = write!(
        s,
        r#"<polyline class="series" fill="none" points="{}"/>"#,
        line.join(" ")
    );
    if let Some((at, value, label)) = &t.breach {
        let bx = x((*at).clamp(t0, t1));
        let _ = write!(
            s,
            r#"<g class="breach"><title>{}</title><line x1="{bx:.1}" x2="{bx:.1}" y1="{TOP}" y2="{}"/>"#,
            escape(label),
            H - BOTTOM
        );
        if let Some(v) = value {
            let _ = write!(s, r#"<circle cx="{bx:.1}" cy="{:.1}" r="4"/>"#, y(*v));
        }
        // The label goes on whichever side of the line has room.
        let (lx, anchor) = if bx > W - RIGHT - 60.0 {
            (bx - 4.0, "end")
        } else {
            (bx + 4.0, "start")
        };
        let _ = write!(
            s,
            r#"<text x="{lx:.1}" y="{}" text-anchor="{anchor}">breach</text></g>"#,
            TOP + 10.0
        );
    }
    s.push_str("</svg>");
    s
}

/// The recovery-time distribution: one bar per bucket of the fleet summary.
pub fn distribution(d: &Distribution) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart distribution" viewBox="0 0 {W} {H}" role="img" aria-label="recovery-time distribution">"#
    );
    let caption = match (d.median_s, d.p99_s) {
        (Some(m), Some(p)) => format!(
            "{} recoveries, median {}s, p99 {}s",
            d.count,
            fmt_value(m),
            fmt_value(p)
        ),
        _ => format!("{} recoveries", d.count),
    };
    let _ = write!(
        s,
        r#"<text class="title" x="{LEFT}" y="15">{}</text>"#,
        escape(&caption)
    );
    let n = d.buckets.len().max(1) as f64;
    let most = d.buckets.iter().map(|b| b.count).max().unwrap_or(0).max(1);
    let slot = (W - LEFT - RIGHT) / n;
    for (i, b) in d.buckets.iter().enumerate() {
        let h = f64::from(b.count) / f64::from(most) * (H - TOP - BOTTOM);
        let bx = LEFT + i as f64 * slot + slot * 0.15;
        let _ = write!(
            s,
            r#"<rect class="bar" data-count="{}" x="{bx:.1}" y="{:.1}" width="{:.1}" height="{h:.1}"><title>{}: {} ({:.0}%)</title></rect><text class="axis" x="{:.1}" y="{}" text-anchor="middle">{}</text><text class="count" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            b.count,
            H - BOTTOM - h,
            slot * 0.7,
            escape(b.label),
            b.count,
            b.share_percent,
            bx + slot * 0.35,
            H - 8.0,
            escape(b.label),
            bx + slot * 0.35,
            H - BOTTOM - h - 4.0,
            b.count
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(svg: &str, class: &str, name: &str) -> f64 {
        let at = svg
            .find(&format!("class=\"{class}\""))
            .unwrap_or_else(|| panic!("no {class} in {svg}"));
        let rest = &svg[at..];
        let from = rest.find(&format!(" {name}=\"")).expect("attribute") + name.len() + 3;
        rest[from..from + rest[from..].find('"').unwrap()]
            .parse()
            .unwrap()
    }

    #[test]
    fn a_timeline_shades_its_phases_draws_the_threshold_and_marks_the_breach() {
        let t = Timeline {
            title: "latency p99".into(),
            unit: "ms".into(),
            source: "http".into(),
            points: vec![(0, 10.0), (1000, 12.0), (2000, 60.0), (3000, 11.0)],
            phases: vec![
                (0, 1000, Phase::Baseline),
                (1000, 2500, Phase::Fault),
                (2500, 3000, Phase::Recovery),
            ],
            threshold: Some((30.0, "latency_p99_above".into())),
            breach: Some((2000, Some(60.0), "p99 60 > 30".into())),
        };
        let svg = timeline(&t);
        assert!(svg.contains("latency p99 (ms) — http"), "{svg}");
        for c in ["phase-baseline", "phase-fault", "phase-recovery", "series"] {
            assert!(svg.contains(c), "{c}: {svg}");
        }
        // A 60 ms peak gets a 0-80 ms axis in steps of 20, on which 30 ms lies 5/8
        // of the plot's height down from its top.
        let ty = attr(&svg, "threshold", "y1");
        assert!(
            (ty - (TOP + 0.625 * (H - TOP - BOTTOM))).abs() < 0.2,
            "{ty}"
        );
        assert!(
            svg.contains(">80.0</text>") && !svg.contains(">100</text>"),
            "{svg}"
        );
        // The breach is drawn at 2 s of a 3 s span.
        let bx: f64 = {
            let at = svg.find("class=\"breach\"").unwrap();
            let rest = &svg[at..];
            let from = rest.find("x1=\"").unwrap() + 4;
            rest[from..from + rest[from..].find('"').unwrap()]
                .parse()
                .unwrap()
        };
        assert!(
            (bx - (LEFT + 2.0 / 3.0 * (W - LEFT - RIGHT))).abs() < 0.2,
            "{bx}"
        );
        assert!(svg.contains("<circle"), "{svg}");
    }

    #[test]
    fn labels_are_escaped_and_an_empty_timeline_says_so() {
        let t = Timeline {
            title: "a<b & \"c\"".into(),
            ..Default::default()
        };
        let svg = timeline(&t);
        assert!(svg.contains("a&lt;b &amp; &quot;c&quot;"), "{svg}");
        assert!(svg.contains("no readings"), "{svg}");
        assert!(!svg.contains("a<b"), "{svg}");
    }

    #[test]
    fn the_distribution_draws_one_bar_per_bucket_scaled_to_the_largest() {
        let d = crate::report::stats::distribution(&[1.0, 2.0, 3.0, 15.0, 70.0]);
        let svg = distribution(&d);
        assert_eq!(svg.matches("class=\"bar\"").count(), d.buckets.len());
        assert!(svg.contains("data-count=\"3\""), "{svg}");
        assert!(svg.contains("5 recoveries"), "{svg}");
        let full = attr(&svg, "bar", "height");
        assert!((full - (H - TOP - BOTTOM)).abs() < 0.2, "{full}");
    }

    #[test]
    fn nice_steps_are_one_two_or_five() {
        assert_eq!(nice(0.3), 0.5);
        assert_eq!(nice(66.0), 100.0);
        assert_eq!(nice(2.0), 2.0);
        assert_eq!(nice(12.0), 20.0);
    }
}
