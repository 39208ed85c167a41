// pgfanout console: polls /console/api and draws it. No framework, no
// build step; every text from the server goes through textContent.
"use strict";

const POLL_MS = 2000;
const $ = (sel) => document.querySelector(sel);

// h("div", {class: "x"}, "text", child, ...)
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}

function secs(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  if (s < 1) return (s * 1000).toFixed(0) + " ms";
  if (s < 90) return s.toFixed(1) + " s";
  if (s < 5400) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function count(n) {
  // + 0 turns -0 (what Prometheus renders for some zero gauges) into 0.
  return n === null || n === undefined ? "–" : (Math.round(n) + 0).toLocaleString("en-US");
}

function ago(now, t) {
  return t ? secs(now - t) + " ago" : "never";
}

// A small line chart of a series (oldest first), scaled to its maximum.
function sparkline(series, label) {
  const box = h("div", { class: "chart", title: label });
  if (!series || series.length < 2) {
    box.append(h("span", { class: "muted empty" }, "rate: collecting samples…"));
    return box;
  }
  const max = Math.max(...series, 1);
  const w = 100, ht = 30;
  const pts = series.map((v, i) => `${(i / (series.length - 1)) * w},${ht - (v / max) * (ht - 2) - 1}`).join(" ");
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${ht}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  const line = document.createElementNS(svgNS, "polyline");
  line.setAttribute("points", pts);
  svg.append(line);
  box.append(svg, h("span", { class: "muted" }, `now ${count(series[series.length - 1])}/s · peak ${count(max)}/s · last ${secs(series.length * sampleSeconds)}`));
  return box;
}

function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

let sampleSeconds = 10;
// Backfill progress seen before, per id: [{t, rows}] for rows/s.
const seen = new Map();

function backfillRate(b, now) {
  const hist = seen.get(b.id) || [];
  hist.push({ t: now, rows: b.rows });
  while (hist.length > 2 && now - hist[0].t > 30) hist.shift();
  seen.set(b.id, hist);
  const first = hist[0];
  const dt = now - first.t;
  return dt > 0 ? (b.rows - first.rows) / dt : null;
}

function token() {
  return sessionStorage.getItem("pgfanout-token") || "";
}

async function act(id, action) {
  const out = $("#action-result");
  out.textContent = `${action} backfill ${id}…`;
  try {
    const r = await fetch(`/backfills/${id}/${action}`, { method: "POST", headers: { Authorization: `Bearer ${token()}` } });
    const body = await r.json().catch(() => ({}));
    out.textContent = r.ok ? `${action}: requested (applied within a second)` : `${action} refused: ${body.error || r.status}`;
  } catch (e) {
    out.textContent = `${action} failed: ${e}`;
  }
  refresh();
}

function renderSource(d) {
  const s = d.source;
  const role = s.role === "off" ? "single instance" : s.role + (s.leader ? ` (leader: ${s.leader})` : "");
  const box = $("#source");
  box.querySelector(".facts").replaceWith(facts([
    ["slot", s.slot || "–"],
    ["streaming", s.streaming ? "yes" : "no"],
    ["lag", `${bytes(s.lag_bytes)} · ${secs(s.lag_seconds)}`],
    ["WAL retained", bytes(s.retained_wal_bytes)],
    ["confirmed", s.confirmed_flush_lsn],
    ["changes read", count(s.changes_read_total)],
    ["reconnects", count(s.reconnects_total)],
    ["role", role],
  ]));
  box.querySelector(".chart").replaceWith(sparkline(s.read_rate, "changes read per second"));
  const state = $("#state");
  const failing = d.sinks.filter((k) => k.error).length;
  if (!s.streaming) { state.textContent = s.role === "standby" ? "standby" : "not streaming"; state.className = "pill warn"; }
  else if (failing) { state.textContent = `${failing} sink${failing > 1 ? "s" : ""} failing`; state.className = "pill bad"; }
  else { state.textContent = "streaming"; state.className = "pill ok"; }
}

function renderSinks(d) {
  $("#sinks").replaceChildren(...d.sinks.map((k) => h("article", { class: "sink" + (k.error ? " failing" : ""), dataset: { name: k.name } },
    h("h3", {}, k.name, h("span", { class: "pill " + (k.error ? "bad" : "ok") }, k.error ? "failing" : "ok")),
    facts([
      ["durable", k.durable_lsn || "–"],
      ["behind", secs(k.behind_seconds)],
      ["written", count(k.written_total)],
      ["retries", `${count(k.failed_total)} records · ${count(k.retries)} attempts`],
      ["dead letters", count(k.dead_lettered_total)],
      ["last write", ago(d.now, k.last_write)],
    ]),
    sparkline(k.rate, `${k.name}: records written per second`),
    k.error ? h("p", { class: "error" }, `failing for ${secs(d.now - k.failing_since)}: ${k.error}`) : null,
  )));
}

function renderBackfills(d) {
  const box = $("#backfills");
  if (d.database_error) {
    box.replaceChildren(h("p", { class: "error" }, d.database_error));
    return;
  }
  if (!d.backfills.length) {
    box.replaceChildren(h("p", { class: "muted" }, "none"));
    return;
  }
  box.replaceChildren(...d.backfills.map((b) => {
    const rate = b.status === "running" ? backfillRate(b, d.now) : null;
    const total = b.estimated_rows && b.estimated_rows >= b.rows ? b.estimated_rows : null;
    const pct = b.status === "done" ? 100 : total ? Math.min(100, (100 * b.rows) / total) : null;
    const eta = rate && total ? (total - b.rows) / rate : null;
    const active = ["pending", "running", "paused"].includes(b.status);
    const buttons = d.controls && active ? h("div", { class: "actions" },
      b.status === "paused"
        ? h("button", { type: "button", onclick: () => act(b.id, "resume") }, "resume")
        : h("button", { type: "button", onclick: () => act(b.id, "pause") }, "pause"),
      h("button", { type: "button", onclick: () => act(b.id, "cancel") }, "cancel")) : null;
    return h("article", { class: "backfill", dataset: { id: b.id, rows: b.rows, status: b.status } },
      h("h3", {}, `#${b.id} ${b.table}`, h("span", { class: "pill " + (b.status === "failed" ? "bad" : b.status === "done" ? "ok" : "warn") }, b.status)),
      h("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": pct === null ? undefined : pct.toFixed(0) },
        h("span", { style: `width: ${pct === null ? 0 : pct.toFixed(1)}%` })),
      h("div", { class: "muted" },
        `${count(b.rows)} rows` + (total ? ` of ~${count(total)}` : "") + (pct !== null ? ` (${pct.toFixed(0)}%)` : "") +
        ` · ${count(b.chunks)} chunks` + (rate !== null ? ` · ${count(rate)} rows/s` : "") + (eta !== null ? ` · ETA ${secs(eta)}` : "") +
        (b.max_rows_per_second ? ` · limit ${count(b.max_rows_per_second)}/s` : "") + (b.reason ? ` · ${b.reason}` : "")),
      b.error ? h("p", { class: "error" }, b.error) : null,
      buttons);
  }));
}

function renderPipelines(d) {
  const verify = new Map(d.verify.map((v) => [v.pipeline, v]));
  $("#pipelines tbody").replaceChildren(...d.pipelines.map((p) => {
    const v = verify.get(p.name);
    const last = v ? `${count(v.divergent)} divergent of ${count(v.rows_checked)} (${count(v.repaired)} repaired), ${ago(d.now, v.finished_at)}` : "never";
    return h("tr", {}, h("td", {}, p.name), h("td", {}, p.from.join(", ")), h("td", {}, p.to), h("td", {}, count(p.dead_lettered_total)),
      h("td", { class: v && v.divergent > 0 ? "error" : "" }, last));
  }));
}

function renderLetters(d) {
  $("#no-letters").hidden = d.dead_letters.length > 0;
  $("#letters").replaceChildren(...d.dead_letters.map((l) => h("li", {},
    h("div", {}, `${l.table} ${JSON.stringify(l.key)} → ${l.sink} (${l.pipeline}) at ${l.position}, ${ago(d.now, l.at)}`),
    h("p", { class: "error" }, l.error))));
}

async function refresh() {
  try {
    const r = await fetch("/console/api", { cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const d = await r.json();
    sampleSeconds = d.sample_seconds || sampleSeconds;
    $("#token-form").hidden = !d.controls;
    $("#version").textContent = `pgfanout ${d.version}`;
    renderSource(d);
    renderSinks(d);
    renderBackfills(d);
    renderPipelines(d);
    renderLetters(d);
    $("#updated").textContent = "updated " + new Date(d.now * 1000).toLocaleTimeString();
  } catch (e) {
    const state = $("#state");
    state.textContent = "daemon unreachable";
    state.className = "pill bad";
    $("#updated").textContent = String(e.message || e);
  }
}

$("#token").value = token();
$("#token").addEventListener("input", (e) => sessionStorage.setItem("pgfanout-token", e.target.value));
$("#token-form").addEventListener("submit", (e) => e.preventDefault());
refresh();
setInterval(refresh, POLL_MS);
