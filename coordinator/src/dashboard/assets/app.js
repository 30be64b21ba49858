// faultline dashboard. One page, no build step, no third-party code.
//
// The token comes from the login form or once from the URL fragment
// (#token=...; a fragment never reaches a server) and is kept in this tab's
// sessionStorage only. Every view is re-read once a second while it is shown.
// Everything the API returns is text to the page: it goes through esc() before it
// reaches innerHTML; SVG charts are drawn and escaped by the coordinator.
"use strict";

const KEY = "faultline-token";
let me = null;
let timer = null;

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function num(v, digits, unit) {
  return v === null || v === undefined ? "-" : Number(v).toFixed(digits) + (unit || "");
}
function when(ms) {
  return ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC") : "-";
}

async function api(path, method) {
  const r = await fetch(path, { method: method || "GET", headers: { Authorization: "Bearer " + sessionStorage.getItem(KEY) } });
  if (r.status === 401) { showLogin("the token was refused"); throw new Error("unauthorized"); }
  const body = (r.headers.get("content-type") || "").includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new Error((body && body.error) || r.status);
  return body;
}

function showLogin(why) {
  sessionStorage.removeItem(KEY);
  me = null;
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = why || "";
  document.getElementById("main").innerHTML = "";
  document.getElementById("who").textContent = "";
}

function flash(text) {
  const f = document.getElementById("flash");
  f.textContent = text;
  f.hidden = !text;
}

function abortButton(id) {
  // Operators and admins only; the server refuses anyone else's abort as well.
  return me && me.can_abort ? `<button class="abort" data-experiment="${esc(id)}">Abort ${esc(id)}</button>` : "";
}

function liveLine(id, l) {
  if (!l) return `<div class="live" id="live-${esc(id)}">no reading yet</div>`;
  return `<div class="live" id="live-${esc(id)}" data-at="${esc(l.at_ms)}">
    <span>reading ${esc(when(l.at_ms))}</span>
    <span>error rate <b class="v-error">${num(l.error_rate_percent, 2, "%")}</b></span>
    <span>p99 <b class="v-p99">${num(l.latency_p99_ms, 1, " ms")}</b></span>
    <span>throughput <b class="v-rps">${num(l.throughput_rps, 1, "/s")}</b></span>
    <span>health <b class="v-health">${num(l.health_score, 0, "")}</b></span>
    <span>node CPU <b class="v-cpu">${num(l.node_cpu_percent, 1, "%")}</b></span></div>`;
}

function verdictOf(e) {
  return e.outcome ? e.outcome.verdict : e.phase;
}

async function overview() {
  const o = await api("/api/v1/overview");
  const s = o.stats_30d;
  const running = o.running.length === 0
    ? `<p class="ok" id="status"><span class="dot"></span>No active chaos</p>`
    : `<p class="bad" id="status"><span class="dot"></span>${o.running.length} running</p>` + o.running.map((e) => `
      <div class="card running" data-experiment="${esc(e.id)}">
        <a href="#/experiments/${esc(e.id)}">${esc(e.id)}</a> ${esc(e.summary)} on ${esc(e.nodes.join(", "))}
        — <b class="phase">${esc(e.phase)}</b> ${abortButton(e.id)}
        ${liveLine(e.id, e.live)}
      </div>`).join("");
  const last = o.last_test
    ? `<a href="#/experiments/${esc(o.last_test.id)}">${esc(o.last_test.id)}</a> ${esc(when(o.last_test.started_ms))}
       (${esc(o.last_test.scenario)}): <b class="${verdictOf(o.last_test) === "passed" ? "ok" : "bad"}">${esc(verdictOf(o.last_test)).toUpperCase()}</b>`
    : "none yet";
  const next = o.next_scheduled
    ? `${esc(when(o.next_scheduled.at_ms))} (${esc(o.next_scheduled.scenario)}, ${esc(o.next_scheduled.schedule)})`
    : "none scheduled";
  const health = o.health ? `${num(o.health.score, 0, "")}/100 <small>(${esc(o.health.experiment)}, ${esc(when(o.health.at_ms))})</small>` : "- (no health score recorded)";
  const ready = o.readiness.ready
    ? `<b class="ok"><span class="dot"></span>READY</b> <small>(${o.connected_agents.length} agent(s) connected, kill switch clear, no blackout; \`faultline status\` runs the dry run)</small>`
    : `<b class="bad"><span class="dot"></span>NOT READY</b>: ${o.readiness.reasons.map(esc).join("; ")}`;
  return `
    <h2>Production Chaos Dashboard</h2>
    <div class="card"><h3>Current Status</h3>${running}</div>
    <div class="grid">
      <div class="card"><h3>Last Test</h3><p id="last-test">${last}</p></div>
      <div class="card"><h3>30-Day Statistics</h3><ul id="stats">
        <li>Total Tests: <b>${esc(s.tests)}</b></li>
        <li>Success Rate: <b>${num(s.success_rate_percent, 0, "%")}</b></li>
        <li>Avg Recovery: <b>${num(s.avg_recovery_s, 1, " s")}</b></li>
        <li>Issues Found: <b>${esc(s.issues_found)}</b> (${esc(s.issues_resolved)} resolved)</li>
        <li>Resilience score: <b>${num(s.resilience_score, 0, "")}</b></li></ul></div>
      <div class="card"><h3>Next Scheduled Test</h3><p id="next">${next}</p></div>
      <div class="card"><h3>System Health</h3><p id="health">${health}</p>
        <h3>Chaos Readiness</h3><p id="readiness">${ready}</p></div>
    </div>
    <div class="card"><h3>Recovery-time distribution (30 days)</h3><div id="distribution">${await api("/api/v1/distribution")}</div></div>`;
}

async function experiments() {
  const l = await api("/api/v1/experiments?limit=100");
  const rows = l.experiments.map((e) => `<tr data-experiment="${esc(e.id)}">
      <td><a href="#/experiments/${esc(e.id)}">${esc(e.id)}</a></td><td>${esc(e.scenario || "-")}</td>
      <td>${esc(e.summary)}</td><td>${esc(e.nodes.join(", "))}</td><td>${esc(when(e.started_ms))}</td>
      <td>${esc(verdictOf(e))}</td><td>${esc(e.outcome ? e.outcome.classification : "-")}</td>
      <td>${num(e.recovery_s, 1, " s")}</td></tr>`).join("");
  return `<h2>Experiments</h2><table id="experiments"><tr><th>id</th><th>scenario</th><th>fault</th><th>nodes</th>
    <th>started</th><th>verdict / phase</th><th>classification</th><th>recovery</th></tr>${rows}</table>`;
}

async function experiment(id) {
  const e = await api("/api/v1/experiments/" + encodeURIComponent(id));
  const o = e.outcome;
  const result = o
    ? `<p>verdict <b>${esc(o.verdict)}</b>, classification <b>${esc(o.classification)}</b>, recovery ${num(o.recovery_s, 2, " s")}</p>
       ${o.breach ? `<p class="bad" id="breach">guard breach: ${esc(o.breach.guard)} (${esc(o.breach.source)}) observed ${num(o.breach.observed, 2, "")} ${esc(o.breach.unit)} against ${num(o.breach.threshold, 2, "")}</p>` : ""}
       ${o.message ? `<p>${esc(o.message)}</p>` : ""}
       ${o.hypothesis ? `<p id="hypothesis" class="${o.hypothesis.result === "refuted" ? "bad" : ""}">hypothesis <b>${esc(o.hypothesis.name)}</b>: ${esc(o.hypothesis.summary)}</p>` : ""}`
    : "";
  const events = e.events.map((v) => `<tr><td>${esc(when(v.at_ms))}</td><td>${esc(v.phase)}</td><td>${esc(v.message)}</td></tr>`).join("");
  return `<h2>${esc(e.id)} <small>${esc(e.summary)}</small></h2>
    <div class="card" id="detail" data-phase="${esc(e.phase)}">
      <p>${esc(e.scenario || "-")} on ${esc(e.nodes.join(", "))}, started ${esc(when(e.started_ms))}; phase <b class="phase">${esc(e.phase)}</b>
      ${e.running ? abortButton(e.id) : ""}</p>
      ${e.running ? liveLine(e.id, e.live) : ""}
      ${result}
    </div>
    <div class="card" id="charts"><h3>Timeline (${esc(e.readings)} readings; baseline blue, fault red, recovery green)</h3>
      ${e.charts.map((c) => `<div class="chart-${esc(c.signal)}">${c.svg}</div>`).join("") || "<p>no readings</p>"}</div>
    <div class="card"><h3>Events</h3><table>${events}</table></div>`;
}

async function schedules() {
  const s = await api("/api/v1/schedules");
  const rows = s.schedules.map((e) => `<tr data-schedule="${esc(e.name)}"><td>${esc(e.name)}</td><td>${esc(e.when)}</td><td>${esc(e.scenario)}</td>
      <td>${e.paused ? "paused by " + esc(e.paused_by) : esc(when(e.next_run_ms))}</td>
      <td>${e.last_run ? esc(e.last_run.status) + " " + esc(when(e.last_run.slot_ms)) + " " + esc(e.last_run.experiment || e.last_run.reasons.join("; ")) : "-"}</td></tr>`).join("");
  const bl = s.blackouts.map((b) => `<tr><td>${esc(b.name)}</td><td>${esc(b.when)}</td>
      <td>${b.active ? "active until " + esc(when(b.active_until_ms)) : "next " + esc(when(b.next_start_ms))}</td></tr>`).join("");
  return `<h2>Schedules <small>${esc(s.source)}</small></h2>
    <table id="schedules"><tr><th>name</th><th>when</th><th>scenario</th><th>next run</th><th>last run</th></tr>${rows}</table>
    <h3>Blackouts</h3><table><tr><th>name</th><th>when</th><th>state</th></tr>${bl}</table>`;
}

async function nodes() {
  const n = await api("/api/v1/nodes");
  const rows = n.nodes.map((x) => `<tr data-node="${esc(x.name)}"><td>${esc(x.name)}</td>
      <td class="${x.connected ? "ok" : "bad"}">${x.connected ? "connected" : "disconnected"}</td>
      <td>${esc(x.agent_version)}</td><td>${esc(x.kernel)} cgroup ${esc(x.cgroup)} latency ${esc(x.latency_backend)}</td><td>${esc(when(x.last_heartbeat_ms))}</td><td>${esc(x.lease || "-")}</td>
      <td>${esc(Object.entries(x.labels || {}).map(([k, v]) => k + "=" + v).join(", "))}</td></tr>`).join("");
  return `<h2>Nodes</h2><table id="nodes"><tr><th>node</th><th>session</th><th>agent</th><th>kernel</th><th>last heartbeat</th><th>lease</th><th>labels</th></tr>${rows}</table>`;
}

async function banner() {
  const s = await api("/status");
  const b = document.getElementById("killswitch");
  b.hidden = !s.kill_switch;
  b.textContent = s.kill_switch ? "Kill switch engaged: " + s.kill_switch + " — no experiment can start until an admin clears it (faultline clear-kill-switch)." : "";
}

async function render() {
  if (!sessionStorage.getItem(KEY)) return showLogin();
  try {
    if (!me) {
      me = await api("/api/v1/whoami");
      document.getElementById("who").textContent = me.name + " (" + me.role + ")";
      document.getElementById("login").hidden = true;
    }
    const parts = location.hash.replace(/^#\/?/, "").split("/");
    const view = parts[0] === "experiments" && parts[1] ? experiment(decodeURIComponent(parts[1]))
      : parts[0] === "experiments" ? experiments()
      : parts[0] === "schedules" ? schedules()
      : parts[0] === "nodes" ? nodes()
      : overview();
    const [html] = await Promise.all([view, banner()]);
    const main = document.getElementById("main");
    main.innerHTML = html;
    main.dataset.rendered = String(Date.now());
  } catch (err) {
    if (String(err.message) !== "unauthorized") flash("could not load: " + err.message);
  }
}

function schedule() {
  clearTimeout(timer);
  render().finally(() => { timer = setTimeout(schedule, 1000); });
}

document.getElementById("main").addEventListener("click", async (ev) => {
  const b = ev.target.closest("button.abort");
  if (!b) return;
  b.disabled = true;
  const id = b.dataset.experiment;
  try {
    // Abort is the safe direction (it removes effects and engages the kill switch),
    // so one click does it, without a confirmation step to get wrong under stress.
    const r = await api("/abort?experiment=" + encodeURIComponent(id) + "&reason=" + encodeURIComponent("dashboard: " + me.name), "POST");
    flash("aborted " + r.aborted.join(", ") + " in " + Number(r.took_ms).toFixed(0) + " ms; kill switch engaged");
  } catch (err) {
    flash("abort failed: " + err.message);
  }
  schedule();
});

document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY, document.getElementById("token").value.trim());
  me = null;
  schedule();
});

window.addEventListener("hashchange", schedule);

const fromUrl = location.hash.match(/token=([^&]+)/);
if (fromUrl) {
  sessionStorage.setItem(KEY, decodeURIComponent(fromUrl[1]));
  history.replaceState(null, "", location.pathname + "#/");
}
schedule();
