//! The web dashboard in a real browser: Debian's Chromium, headless, driven over the
//! DevTools protocol (the headless_chrome crate), in the lab's coordinator namespace
//! against the real coordinator, with a real experiment on a real node.
//!
//! Screenshots are kept in `target/test-artifacts/` (dashboard-*.png).
use std::{
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use faultline_tests::{
    checks::faultline_leftovers,
    fleet::{NODE_IFACE, Role},
    lab::Lab,
};
use headless_chrome::{Browser, LaunchOptions, Tab, protocol::cdp::Page};
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const UI: &str = "http://127.0.0.1:7080/ui";

/// Chromium, started on a thread inside the coordinator's namespace (so the browser
/// and its DevTools connection live there, where the HTTP surface listens).
fn browser(lab: &Lab) -> Browser {
    lab.fleet.ctl.enter(|| {
        let options = LaunchOptions::default_builder()
            .path(Some(PathBuf::from("/usr/bin/chromium")))
            // As root, Chromium's own sandbox refuses to start; the test namespace
            // and a throwaway profile are the isolation here.
            .sandbox(false)
            .headless(true)
            .window_size(Some((1280, 1400)))
            .idle_browser_timeout(Duration::from_secs(120))
            .build()
            .expect("launch options");
        Browser::new(options).expect("start /usr/bin/chromium (apt: chromium)")
    })
}

/// `expr` evaluated in the page, as JSON (the protocol hands back objects and
/// arrays by reference, so the page serializes them).
fn eval(tab: &Tab, expr: &str) -> Value {
    tab.evaluate(&format!("JSON.stringify(({expr}))"), false)
        .expect("evaluate")
        .value
        .and_then(|v| v.as_str().and_then(|s| serde_json::from_str(s).ok()))
        .unwrap_or(Value::Null)
}

/// Polls `expr` until it is truthy; returns its value.
fn until(tab: &Tab, expr: &str, timeout: Duration) -> Value {
    let end = Instant::now() + timeout;
    loop {
        let v = eval(tab, expr);
        if !(v.is_null() || v == Value::Bool(false) || v == "") {
            return v;
        }
        assert!(
            Instant::now() < end,
            "{expr} not true after {timeout:?}; page: {}",
            eval(tab, "document.body.innerText")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn screenshot(tab: &Tab, name: &str) -> PathBuf {
    let png = tab
        .capture_screenshot(Page::CaptureScreenshotFormatOption::Png, None, None, true)
        .expect("screenshot");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    let path = dir.join(format!("dashboard-{name}.png"));
    std::fs::write(&path, &png).expect("write screenshot");
    // A PNG of a rendered page, not an empty capture.
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    eprintln!("screenshot: {} ({} bytes)", path.display(), png.len());
    path
}

fn open(browser: &Browser, lab: &Lab, role: Role, hash: &str) -> std::sync::Arc<Tab> {
    let tab = browser.new_tab().expect("tab");
    tab.navigate_to(&format!("{UI}#token={}", lab.fleet.token(role)))
        .expect("navigate");
    tab.wait_until_navigated().expect("navigated");
    until(
        &tab,
        "document.getElementById('who').textContent",
        Duration::from_secs(10),
    );
    if !hash.is_empty() {
        tab.evaluate(&format!("location.hash = '{hash}'"), false)
            .expect("route");
    }
    tab
}

/// The live reading's time and values for experiment `id`, as the page shows them.
fn live(tab: &Tab, id: &str) -> (String, String) {
    let v = eval(
        tab,
        &format!(
            "(() => {{ const l = document.getElementById('live-{id}'); \
             return l ? [l.dataset.at || '', l.innerText] : null }})()"
        ),
    );
    (
        v[0].as_str().unwrap_or_default().to_owned(),
        v[1].as_str().unwrap_or_default().to_owned(),
    )
}

#[test]
fn the_dashboard_follows_a_running_experiment_live_and_its_abort_button_ends_it() {
    let _g = serial();
    // One schedule entry whose next slot is months away, for the schedule views.
    let dir = faultline_tests::TempPath::dir("faultline-dash");
    let schedule = dir.join("schedule.yaml");
    std::fs::write(
        &schedule,
        "schedule:\n  - name: new-year-cpu\n    cron: '0 0 1 1 *'\n    scenario: cpu_stress\n    \
         target_node: node-1\n    cpu_stress: 5%\n    duration: 10s\n",
    )
    .expect("write schedule");
    let lab = Lab::new(&[], &["--schedule", schedule.to_str().unwrap()]);
    let spec = "scenario: latency_injection\ntarget_node: node-1\nlatency: 15ms\nduration: 120s\n\
                baseline: 2s\nabort_conditions: {latency_p99_above: 500ms}\n";
    let mut run = lab
        .fleet
        .watch_run(Role::Operator, &lab.spec_line(spec, ""));
    let applied = run.until(|e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("applied on"))
    });
    let id = applied["experiment"]
        .as_str()
        .expect("experiment id")
        .to_owned();
    assert!(
        !faultline_leftovers(&lab.fleet.nodes[0].ns, NODE_IFACE).is_empty(),
        "the latency fault is not on the node"
    );

    let browser = browser(&lab);

    // A viewer sees the running experiment and its live values, and no abort button.
    let viewer = open(&browser, &lab, Role::Viewer, "");
    until(
        &viewer,
        &format!("!!document.getElementById('live-{id}')"),
        Duration::from_secs(15),
    );
    assert_eq!(
        eval(&viewer, "document.querySelectorAll('button.abort').length"),
        0,
        "a viewer's page offers abort"
    );
    assert!(
        eval(&viewer, "document.getElementById('who').textContent")
            .as_str()
            .unwrap()
            .contains("viewer")
    );
    // The server refuses a viewer's abort whatever a page does.
    let refused = viewer
        .evaluate(
            &format!(
                "fetch('/abort?experiment={id}', {{method: 'POST', headers: \
                 {{Authorization: 'Bearer ' + sessionStorage.getItem('faultline-token')}}}}).then(r => r.status)"
            ),
            true,
        )
        .expect("fetch")
        .value
        .and_then(|v| v.as_u64());
    assert_eq!(refused, Some(403), "a viewer's POST /abort");
    assert!(
        lab.fleet.experiment(&id)["phase"] == "fault",
        "a viewer's abort changed the experiment"
    );
    viewer.close(true).ok();

    // An operator's page shows the same experiment with values that move on.
    let tab = open(&browser, &lab, Role::Operator, "");
    until(
        &tab,
        &format!("!!document.querySelector('button.abort[data-experiment=\"{id}\"]')"),
        Duration::from_secs(15),
    );
    let (at1, text1) = live(&tab, &id);
    let end = Instant::now() + Duration::from_secs(15);
    let (at2, text2) = loop {
        std::thread::sleep(Duration::from_millis(500));
        let (at, text) = live(&tab, &id);
        if at != at1 && text != text1 {
            break (at, text);
        }
        assert!(Instant::now() < end, "live values did not change: {text1}");
    };
    eprintln!("live: {text1:?} -> {text2:?}");
    assert!(at2.parse::<i64>().unwrap() > at1.parse::<i64>().unwrap());
    assert!(text2.contains("p99"), "{text2}");
    screenshot(&tab, "running");

    // The detail page charts the timeline with the phases shaded and the guard drawn.
    tab.evaluate(&format!("location.hash = '#/experiments/{id}'"), false)
        .expect("route");
    until(
        &tab,
        "!!document.querySelector('.chart-latency_p99 svg .phase-fault')",
        Duration::from_secs(10),
    );
    assert!(
        eval(
            &tab,
            "!!document.querySelector('.chart-latency_p99 svg .threshold')"
        ) == Value::Bool(true),
        "no threshold line for latency_p99_above"
    );
    assert!(
        eval(
            &tab,
            "!!document.querySelector('.chart-latency_p99 svg .phase-baseline')"
        ) == Value::Bool(true)
    );

    // The abort button ends it: the effect is gone on the node and the banner says
    // the kill switch is engaged.
    let clicked = Instant::now();
    tab.find_element(&format!("button.abort[data-experiment=\"{id}\"]"))
        .expect("abort button")
        .click()
        .expect("click");
    let (code, _) = run.finish();
    eprintln!(
        "run ended {:?} after the click, exit {code:?}",
        clicked.elapsed()
    );
    assert_eq!(code, Some(4), "an aborted run's exit code");
    let e = lab.fleet.experiment(&id);
    assert_eq!(e["phase"], "aborted", "{e}");
    let left = faultline_leftovers(&lab.fleet.nodes[0].ns, NODE_IFACE);
    assert!(
        left.is_empty(),
        "left on the node after the abort: {left:?}"
    );
    until(
        &tab,
        "!document.getElementById('killswitch').hidden",
        Duration::from_secs(10),
    );
    let banner = eval(&tab, "document.getElementById('killswitch').textContent");
    assert!(
        banner.as_str().unwrap().contains("Kill switch engaged"),
        "{banner}"
    );
    until(
        &tab,
        "(document.getElementById('detail') || {dataset: {}}).dataset.phase === 'aborted'",
        Duration::from_secs(10),
    );
    screenshot(&tab, "aborted");

    // The overview now counts it, and the lists show it.
    tab.evaluate("location.hash = '#/'", false).expect("route");
    until(
        &tab,
        "!!document.getElementById('status') && document.getElementById('status').innerText.includes('No active chaos')",
        Duration::from_secs(10),
    );
    let next = eval(&tab, "document.getElementById('next').innerText");
    assert!(
        next.as_str()
            .is_some_and(|t| t.contains("cpu_stress") && t.contains("new-year-cpu")),
        "the overview's next scheduled test: {next}"
    );
    tab.evaluate("location.hash = '#/experiments'", false)
        .expect("route");
    until(
        &tab,
        &format!("!!document.querySelector('#experiments tr[data-experiment=\"{id}\"]')"),
        Duration::from_secs(10),
    );
    tab.evaluate("location.hash = '#/schedules'", false)
        .expect("route");
    let row = until(
        &tab,
        "(document.querySelector('#schedules tr[data-schedule=\"new-year-cpu\"]') || {}).innerText",
        Duration::from_secs(10),
    );
    assert!(
        row.as_str()
            .is_some_and(|t| t.contains("-01-01 00:00:00 UTC")),
        "the entry's next run: {row}"
    );
    tab.evaluate("location.hash = '#/nodes'", false)
        .expect("route");
    until(
        &tab,
        "!!document.querySelector('#nodes tr[data-node=\"node-1\"] .ok')",
        Duration::from_secs(10),
    );

    // A guard's breach is marked on the chart of the signal it watched, at the
    // threshold the spec set.
    let out = lab.fleet.cli(Role::Admin, &["clear-kill-switch"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let guarded = lab.run(
        "scenario: latency_injection\ntarget_node: node-1\nlatency: 50ms\nduration: 40s\n\
         baseline: 2s\nabort_conditions: {latency_p99_above: 30ms}\nexpected_impact: minimal\n",
        "",
    );
    assert_eq!(guarded.code, Some(4), "{}", guarded.outcome);
    assert_eq!(
        guarded.outcome["breach"]["guard"],
        "abort_conditions.latency_p99_above"
    );
    let id2 = guarded.events[0]["experiment"]
        .as_str()
        .expect("experiment id")
        .to_owned();
    tab.evaluate(&format!("location.hash = '#/experiments/{id2}'"), false)
        .expect("route");
    until(
        &tab,
        "!!document.querySelector('.chart-latency_p99 svg .breach circle')",
        Duration::from_secs(10),
    );
    let label = eval(
        &tab,
        "document.querySelector('.chart-latency_p99 svg .threshold-label').textContent",
    );
    assert_eq!(label, "latency_p99_above 30.0", "{label}");
    assert!(
        eval(&tab, "document.getElementById('breach').innerText")
            .as_str()
            .is_some_and(|t| t.contains("latency_p99_above")),
        "no breach line in the detail"
    );
    // The stated hypothesis and the judgement on it, with what refuted it.
    let line = eval(&tab, "document.getElementById('hypothesis').innerText");
    assert!(
        line.as_str()
            .is_some_and(|t| t.starts_with("hypothesis minimal: refuted: guard")),
        "{line}"
    );
    screenshot(&tab, "breach");
    let left = faultline_leftovers(&lab.fleet.nodes[0].ns, NODE_IFACE);
    assert!(
        left.is_empty(),
        "left on the node after the guard's abort: {left:?}"
    );
}

#[test]
fn the_dashboard_api_needs_a_token_and_serves_a_data_free_page() {
    let _g = serial();
    let lab = Lab::new(&[], &[]);
    let (code, page) = lab.fleet.http(None, "GET", "/ui");
    assert_eq!(code, 200);
    assert!(page.as_str().unwrap().contains("/ui/app.js"), "{page}");
    for path in [
        "/api/v1/overview",
        "/api/v1/experiments",
        "/api/v1/schedules",
        "/api/v1/nodes",
        "/api/v1/distribution",
        "/api/v1/whoami",
    ] {
        let (code, _) = lab.fleet.http(None, "GET", path);
        assert_eq!(code, 401, "{path} without a token");
        let (code, _) = lab.fleet.http(Some(Role::Viewer), "GET", path);
        assert_eq!(code, 200, "{path} with a viewer token");
    }
    let (code, me) = lab
        .fleet
        .http(Some(Role::Operator), "GET", "/api/v1/whoami");
    assert_eq!(
        (code, &me["role"], &me["can_abort"]),
        (200, &"operator".into(), &true.into())
    );
    let (_, me) = lab.fleet.http(Some(Role::Viewer), "GET", "/api/v1/whoami");
    assert_eq!(me["can_abort"], false);
    let (code, e) = lab
        .fleet
        .http(Some(Role::Viewer), "GET", "/api/v1/experiments/exp-999999");
    assert_eq!(code, 404, "{e}");
    let (code, o) = lab
        .fleet
        .http(Some(Role::Viewer), "GET", "/api/v1/overview");
    assert_eq!(code, 200);
    assert_eq!(o["readiness"]["ready"], true, "{o}");
    assert_eq!(o["connected_agents"][0], "node-1", "{o}");
}
