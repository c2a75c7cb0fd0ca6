// The alike Manager: plain JavaScript over the daemon's REST API and its
// event stream. No framework and no build step; everything the page shows
// comes from /api/ (docs/openapi.json).
"use strict";

const $ = (id) => document.getElementById(id);
const SECTIONS = ["jobs", "live", "history", "vms", "store"];
let stores = [];
let events = null;
const live = new Map(); // "run|vm|disk" -> {title, done, total, el}

function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k ?? ""));
  return e;
}

function say(text) { $("status").textContent = text; }

function bytes(n) {
  if (n === undefined || n === null) return "";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0; let x = Number(n);
  while (x >= 1024 && i < u.length - 1) { x /= 1024; i++; }
  return (i ? x.toFixed(1) : x) + " " + u[i];
}

function when(ms) {
  if (ms === undefined || ms === null) return "";
  return new Date(Number(ms)).toLocaleString();
}

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (r.status === 401 && path !== "/login") { showLogin(); throw new Error("not logged in"); }
  if (!r.ok) { const e = new Error((data && data.error) || r.statusText); e.status = r.status; throw e; }
  return data;
}

function showLogin() {
  $("nav").hidden = true;
  for (const s of SECTIONS) $(s).hidden = true;
  $("login").hidden = false;
  $("login-user").focus();
  if (events) { events.close(); events = null; }
}

function show(section) {
  if (!SECTIONS.includes(section)) section = "jobs";
  $("login").hidden = true;
  $("nav").hidden = false;
  for (const s of SECTIONS) $(s).hidden = s !== section;
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.section === section) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  refresh(section).catch((e) => say(e.message));
}

async function refresh(section) {
  if (section === "jobs") return loadJobs();
  if (section === "history") return loadHistory();
  if (section === "vms") return loadVms();
  if (section === "store") return loadStores();
}

function resultOf(x) {
  if (!x) return "";
  if (typeof x === "string") return x;
  return x.result || x.status || "";
}

async function loadJobs() {
  const body = $("jobs-body");
  const sel = $("job-store");
  if (!stores.length) stores = await api("GET", "/api/stores");
  sel.replaceChildren(...stores.map((s) => el("option", { value: s.name }, s.name)));
  let jobs;
  try { jobs = await api("GET", "/api/jobs"); } catch (e) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 6 }, e.status === 501 ? "This daemon runs no scheduler." : e.message)));
    return;
  }
  body.replaceChildren(...jobs.map((j) => {
    const last = resultOf(j.last_result ?? j.last_run);
    return el("tr", { "data-job": j.name },
      el("th", { scope: "row" }, j.name),
      el("td", {}, j.kind ?? ""),
      el("td", {}, typeof j.schedule === "string" ? j.schedule : JSON.stringify(j.schedule ?? "")),
      el("td", {}, when(j.next_run_ms ?? j.next_run)),
      el("td", { class: last }, last),
      el("td", {}, el("button", { type: "button", "aria-label": "Run " + j.name + " now", onclick: () => runJob(j.name) }, "Run now")));
  }));
  if (!jobs.length) body.replaceChildren(el("tr", {}, el("td", { colspan: 6 }, "No jobs yet.")));
}

async function runJob(name) {
  try {
    const r = await api("POST", "/api/jobs/" + encodeURIComponent(name) + "/run");
    say("Started " + name + (r && r.run ? " (run " + r.run + ")" : ""));
    location.hash = "#live";
  } catch (e) { say("Could not start " + name + ": " + e.message); }
}

async function saveJob(ev) {
  ev.preventDefault();
  const name = $("job-name").value.trim();
  const def = { kind: $("job-kind").value, store: $("job-store").value };
  const pool = $("job-pool").value.trim();
  if (pool) def.pool = pool;
  const vms = $("job-vms").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (vms.length) def.vms = vms;
  const sched = $("job-schedule").value.trim();
  if (sched) def.schedule = sched;
  const extra = $("job-extra").value.trim();
  if (extra) {
    try { Object.assign(def, JSON.parse(extra)); } catch (e) { say("More settings: not JSON (" + e.message + ")"); return; }
  }
  try {
    await api("PUT", "/api/jobs/" + encodeURIComponent(name), def);
    say("Saved job " + name);
    $("new-job").open = false;
    await loadJobs();
  } catch (e) { say("Could not save " + name + ": " + e.message); }
}

async function loadHistory(ev) {
  if (ev) ev.preventDefault();
  const q = new URLSearchParams();
  for (const [k, id] of [["job", "f-job"], ["vm", "f-vm"], ["result", "f-result"]]) {
    const v = $(id).value.trim(); if (v) q.set(k, v);
  }
  const body = $("history-body");
  let runs;
  try { runs = await api("GET", "/api/runs?" + q.toString()); } catch (e) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 7 }, e.status === 501 ? "This daemon runs no scheduler." : e.message)));
    return;
  }
  body.replaceChildren(...runs.map((r) => {
    const vms = r.vms || [];
    const sum = (k) => vms.reduce((a, v) => a + (v[k] || (v.disks || []).reduce((b, d) => b + (d[k] || 0), 0)), 0);
    const res = resultOf(r);
    return el("tr", { "data-run": r.id },
      el("th", { scope: "row" }, r.job ?? ""),
      el("td", {}, when(r.start_ms ?? r.started_ms)),
      el("td", {}, when(r.end_ms ?? r.ended_ms)),
      el("td", { class: res }, res),
      el("td", {}, vms.map((v) => v.vm ?? v.name).join(", ")),
      el("td", {}, bytes(sum("read_bytes"))),
      el("td", {}, bytes(sum("new_stored_bytes") || sum("stored_bytes"))));
  }));
  if (!runs.length) body.replaceChildren(el("tr", {}, el("td", { colspan: 7 }, "No runs match.")));
}

let restoring = null;

async function loadVms() {
  const [vms, dests] = await Promise.all([api("GET", "/api/vms"), api("GET", "/api/destinations")]);
  $("r-dest").replaceChildren(...dests.map((d) => el("option", { value: d }, d)));
  const list = $("vms-list");
  if (!vms.length) { list.replaceChildren(el("p", {}, "No versions in any store yet.")); return; }
  list.replaceChildren(...vms.map((g) => el("section", { class: "vm", "aria-label": g.vm },
    el("h3", {}, g.vm + " ", el("small", {}, "store " + g.store + ", " + g.versions.length + " version(s)")),
    el("table", {},
      el("thead", {}, el("tr", {}, ...["Time", "Version", "Disks", "Data", "Verified", ""].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...g.versions.map((v) => el("tr", { "data-version": v.id },
        el("td", {}, when(v.time_ms)),
        el("td", {}, el("code", {}, v.id.slice(0, 12))),
        el("td", {}, String(v.disks.length)),
        el("td", {}, bytes(v.disks.reduce((a, d) => a + d.data_bytes, 0))),
        el("td", { class: v.verification ? (v.verification.ok ? "ok" : "bad") : "" },
          v.verification ? (v.verification.ok ? "ok" : "damaged") + " (" + v.verification.depth + ")" : "not yet"),
        el("td", {}, el("button", { type: "button", "aria-label": "Restore " + g.vm + " version " + v.id.slice(0, 12), onclick: () => openRestore(g, v) }, "Restore…")))))))));
}

function openRestore(g, v) {
  restoring = { store: g.store, vm: g.vm, version: v.id };
  $("restore-what").textContent = g.vm + ", version " + v.id.slice(0, 12) + " of " + when(v.time_ms);
  $("r-disk").replaceChildren(...v.disks.map((d) => el("option", { value: d.position }, d.position + ": " + (d.label || "disk") + " (" + bytes(d.size) + ")")));
  $("r-file").value = g.vm.replace(/[^A-Za-z0-9._-]/g, "_") + "-" + v.id.slice(0, 8) + "-disk" + (v.disks[0] ? v.disks[0].position : 0) + ".img";
  $("restore-dialog").showModal();
}

async function doRestore(ev) {
  ev.preventDefault();
  if (!restoring) return;
  const fmt = $("r-format").value;
  const req = { store: restoring.store, version: restoring.version, disk: Number($("r-disk").value),
    destination: $("r-dest").value, file: $("r-file").value.trim(), format: fmt };
  $("restore-dialog").close();
  say("Restoring disk " + req.disk + " of " + restoring.vm + "…");
  try {
    const r = await api("POST", "/api/restore", req);
    say("Restored " + restoring.vm + " disk " + r.disk + " to " + r.destination + "/" + r.file + " (" + bytes(r.report.size) + ")");
  } catch (e) { say("Restore failed: " + e.message); }
}

async function loadStores() {
  stores = await api("GET", "/api/stores");
  const box = $("stores");
  box.replaceChildren(...stores.map((s) => el("section", { "aria-label": "Store " + s.name },
    el("h3", {}, s.name + " ", el("small", {}, s.location)),
    el("dl", { class: "figures" },
      ...[["Versions", s.versions], ["Logical", bytes(s.logical_bytes)], ["Unique", bytes(s.unique_bytes)], ["Stored", bytes(s.stored_bytes)],
        ["Dedup ratio", s.dedup_ratio.toFixed(2)], ["Compression", s.compression_ratio.toFixed(2)], ["Overall", s.total_ratio.toFixed(2)]]
        .map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", {}, String(v))))),
    chart(s))));
}

// Stored versus logical bytes over time, as inline SVG.
function chart(s) {
  const NS = "http://www.w3.org/2000/svg";
  const W = 640, H = 240, P = 48;
  const pts = s.series;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  const last = pts[pts.length - 1];
  svg.setAttribute("aria-label", `Cumulative logical and stored bytes of store ${s.name} over ${pts.length} versions` +
    (last ? `: ${bytes(last.logical_bytes)} logical, ${bytes(last.stored_bytes)} stored` : ""));
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text) e.textContent = text;
    svg.append(e); return e;
  };
  add("title", {}, "Stored versus logical bytes");
  if (!pts.length) { add("text", { x: P, y: H / 2 }, "No versions yet"); return svg; }
  const t0 = pts[0].time_ms, t1 = Math.max(pts[pts.length - 1].time_ms, t0 + 1);
  const ymax = Math.max(1, ...pts.map((p) => Math.max(p.logical_bytes, p.stored_bytes)));
  const x = (t) => P + (W - 2 * P) * (pts.length === 1 ? 0.5 : (t - t0) / (t1 - t0));
  const y = (b) => H - P + 8 - (H - 2 * P) * (b / ymax);
  add("line", { x1: P, y1: y(0), x2: W - P, y2: y(0), stroke: "currentColor", "stroke-opacity": "0.3" });
  add("text", { x: 4, y: y(ymax) + 4 }, bytes(ymax));
  add("text", { x: 4, y: y(0) + 4 }, "0");
  add("text", { x: P, y: H - 8 }, new Date(t0).toLocaleDateString());
  add("text", { x: W - P - 60, y: H - 8 }, new Date(t1).toLocaleDateString());
  const path = (k) => pts.map((p, i) => (i ? "L" : "M") + x(p.time_ms).toFixed(1) + " " + y(p[k]).toFixed(1)).join(" ");
  add("path", { d: path("logical_bytes"), class: "logical" });
  add("path", { d: path("stored_bytes"), class: "stored" });
  add("text", { x: W - P - 150, y: 16 }, "— logical   - - stored");
  return svg;
}

// The live view: per-disk progress bars from the event stream.
function onEvent(kind, ev) {
  const d = ev.data || {};
  const li = el("li", {}, new Date(ev.time_ms).toLocaleTimeString() + " " + kind + " " + (d.job || d.vm || "") + (d.error ? " — " + d.error : ""));
  const list = $("events");
  list.prepend(li);
  while (list.children.length > 50) list.lastChild.remove();
  if ("bytes_done" in d && "bytes_total" in d) {
    const key = [d.run || d.file || "", d.vm || "", d.disk ?? ""].join("|");
    let row = live.get(key);
    if (!row) {
      const title = (kind.startsWith("restore") ? "Restore " : "Backup ") + (d.vm || "") + " disk " + (d.disk ?? "");
      const bar = el("progress", { max: 100, value: 0, "aria-label": title });
      const txt = el("span");
      const box = el("div", { class: "disk" }, el("span", {}, title), bar, txt);
      let run = document.getElementById("run-" + (d.run || d.file || "x"));
      if (!run) {
        run = el("div", { class: "run", id: "run-" + (d.run || d.file || "x") }, el("h3", {}, d.job ? "Job " + d.job : (d.file ? "Restore to " + d.file : "Run")));
        $("live-runs").prepend(run);
      }
      run.append(box);
      row = { bar, txt };
      live.set(key, row);
    }
    const pct = d.bytes_total ? Math.floor(100 * d.bytes_done / d.bytes_total) : 100;
    row.bar.value = pct;
    row.txt.textContent = pct + "% of " + bytes(d.bytes_total);
    $("live-empty").hidden = true;
  }
  if (kind === "job.finished" || kind === "job.failed" || kind === "restore.finished" || kind === "restore.failed") {
    const id = "run-" + (d.run || d.file || "x");
    const run = document.getElementById(id);
    if (run) {
      const res = kind.endsWith("failed") ? "failed" : (d.result || "ok");
      run.append(el("p", { class: "result " + res, "data-result": res }, "Finished: " + res));
      for (const bar of run.querySelectorAll("progress")) if (res === "ok") bar.value = 100;
    }
    say((d.job ? "Job " + d.job : "Restore") + " " + (kind.endsWith("failed") ? "failed" : "finished"));
    if (!$("jobs").hidden) loadJobs().catch(() => {});
  }
}

function connectEvents() {
  if (events) return;
  events = new EventSource("/api/events");
  const kinds = ["job.started", "job.finished", "job.failed", "vm.started", "vm.done", "vm.failed", "disk.progress", "warning",
    "restore.started", "restore.progress", "restore.finished", "restore.failed", "lagged"];
  for (const k of kinds) events.addEventListener(k, (m) => { try { onEvent(k, JSON.parse(m.data)); } catch (_) { /* ignore */ } });
  events.onmessage = (m) => { try { const e = JSON.parse(m.data); onEvent(e.kind, e); } catch (_) { /* ignore */ } };
}

async function start() {
  try { await api("GET", "/api/session"); } catch (_) { return; }
  connectEvents();
  show(location.hash.slice(1));
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await api("POST", "/login", { user: $("login-user").value, password: $("login-password").value });
      $("login-password").value = "";
      say("Logged in");
      await start();
    } catch (e) { say("Login failed: " + e.message); }
  });
  $("logout").addEventListener("click", async () => { await fetch("/logout", { method: "POST" }); showLogin(); say("Logged out"); });
  $("job-form").addEventListener("submit", saveJob);
  $("history-filter").addEventListener("submit", loadHistory);
  $("restore-form").addEventListener("submit", doRestore);
  $("r-cancel").addEventListener("click", () => $("restore-dialog").close());
  window.addEventListener("hashchange", () => { if ($("login").hidden) show(location.hash.slice(1)); });
  start();
});
