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
  const d = typeof ms === "string" ? new Date(ms) : new Date(Number(ms));
  return isNaN(d) ? String(ms) : d.toLocaleString();
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
      el("td", {}, j.schedule ? j.schedule + " " + (j.timezone || "UTC") + (j.schedule_text ? " (" + j.schedule_text + ")" : "") : "on demand"),
      el("td", {}, when(j.next_run)),
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
  const tz = $("job-tz").value.trim();
  if (tz) def.timezone = tz;
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
      el("td", {}, when(r.started ?? r.start_ms)),
      el("td", {}, when(r.ended ?? r.end_ms)),
      el("td", { class: res }, res),
      el("td", {}, vms.map((v) => v.vm ?? v.name).join(", ")),
      el("td", {}, bytes(sum("read_bytes"))),
      el("td", {}, bytes(sum("stored_bytes") || sum("new_stored_bytes"))));
  }));
  if (!runs.length) body.replaceChildren(el("tr", {}, el("td", { colspan: 7 }, "No runs match.")));
}

let restoring = null;

async function loadVms() {
  const [vms, dests, pools] = await Promise.all([api("GET", "/api/vms"), api("GET", "/api/destinations"), api("GET", "/api/pools")]);
  $("r-dest").replaceChildren(...dests.map((d) => el("option", { value: d }, d)));
  $("v-pool").replaceChildren(...pools.map((p) => el("option", { value: p }, p)));
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
        el("td", {},
          el("button", { type: "button", "aria-label": "Restore a disk of " + g.vm + " version " + v.id.slice(0, 12), onclick: () => openRestore(g, v) }, "Restore disk…"), " ",
          el("button", { type: "button", class: "secondary", "aria-label": "Restore VM " + g.vm + " version " + v.id.slice(0, 12), onclick: () => openVmRestore(g, v) }, "Restore VM…")))))))));
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

function openVmRestore(g, v) {
  restoring = { store: g.store, vm: g.vm, version: v.id };
  $("vm-what").textContent = g.vm + ", version " + v.id.slice(0, 12) + " of " + when(v.time_ms);
  $("v-name").value = g.vm + "-restored";
  $("vm-dialog").showModal();
}

async function doVmRestore(ev) {
  ev.preventDefault();
  if (!restoring) return;
  const req = { store: restoring.store, version: restoring.version, pool: $("v-pool").value, storage: $("v-storage").value.trim() };
  const name = $("v-name").value.trim();
  if (name) req.name = name;
  $("vm-dialog").close();
  say("Restoring VM " + restoring.vm + "…");
  try {
    const r = await api("POST", "/api/restore-vm", req);
    say("Restored VM " + r.vm + " to pool " + r.pool + (r.report && r.report.vm_uuid ? " as " + r.report.vm_uuid : ""));
  } catch (e) { say("VM restore failed: " + e.message); }
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
  for (const p of pts) {
    add("circle", { cx: x(p.time_ms).toFixed(1), cy: y(p.logical_bytes).toFixed(1), r: 3, class: "logical" });
    add("circle", { cx: x(p.time_ms).toFixed(1), cy: y(p.stored_bytes).toFixed(1), r: 3, class: "stored" });
  }
  add("text", { x: W - P - 150, y: 16 }, "— logical   - - stored");
  return svg;
}

// The live view: per-disk progress bars from the event stream.
function runBox(d) {
  const id = d.run !== undefined ? "run-" + d.run : "restore-" + String(d.file || "x").replace(/[^A-Za-z0-9_-]/g, "_");
  let run = document.getElementById(id);
  if (!run) {
    const title = d.job ? "Job " + d.job + " (run " + d.run + ")" : "Restore to " + (d.file || "");
    run = el("div", { class: "run", id, "data-run": d.run ?? "" }, el("h3", {}, title));
    $("live-runs").prepend(run);
    $("live-empty").hidden = true;
  }
  return run;
}

function onEvent(kind, ev) {
  const d = ev.data || {};
  const what = [d.job, d.vm, d.result && (d.result.result || d.result), d.message, d.error].filter((x) => x && typeof x === "string");
  const list = $("events");
  list.prepend(el("li", {}, new Date(ev.time_ms).toLocaleTimeString() + " " + kind + " " + what.join(" — ")));
  while (list.children.length > 50) list.lastChild.remove();
  if (kind === "job_started" || kind === "job_queued" || kind === "restore_started") runBox(d);
  if ("done" in d && "total" in d) {
    const run = runBox(d);
    const key = (run.id + "|" + (d.vm || "") + "|" + (d.disk ?? "")).replace(/[^A-Za-z0-9_|-]/g, "_");
    let row = live.get(key);
    if (!row) {
      const title = (d.vm || "") + " disk " + (d.disk ?? "");
      const bar = el("progress", { max: 100, value: 0, "aria-label": title });
      const txt = el("span");
      const label = el("span", {}, title);
      run.append(el("div", { class: "disk" }, label, bar, txt));
      row = { bar, txt, label, title };
      live.set(key, row);
    }
    // One bar per disk; its label says the stage it is in.
    row.label.textContent = row.title + (d.phase ? " (" + d.phase + ")" : "");
    const pct = d.total ? Math.floor(100 * d.done / d.total) : 100;
    row.bar.value = pct;
    row.txt.textContent = pct + "% of " + bytes(d.total);
  }
  if (kind === "vm_done") runBox(d).append(el("p", { class: d.result }, "VM " + d.vm + ": " + d.result));
  if (kind === "finished" || kind === "restore_finished" || kind === "restore_failed") {
    const run = runBox(d);
    const res = kind === "restore_failed" ? "failed" : (kind === "restore_finished" ? "success" : String(d.result));
    run.append(el("p", { class: "result " + res, "data-result": res }, "Finished: " + res));
    if (res === "success") for (const bar of run.querySelectorAll("progress")) bar.value = 100;
    say((d.job ? "Job " + d.job : "Restore") + " finished: " + res);
    if (!$("jobs").hidden) loadJobs().catch(() => {});
    if (!$("history").hidden) loadHistory().catch(() => {});
  }
}

function connectEvents() {
  if (events) return;
  events = new EventSource("/api/events");
  const kinds = ["job_queued", "job_started", "vm_started", "progress", "vm_done", "warning", "step_done", "failed", "finished",
    "restore_started", "restore_progress", "restore_finished", "restore_failed", "lagged"];
  for (const k of kinds) events.addEventListener(k, (m) => { try { onEvent(k, JSON.parse(m.data)); } catch (_) { /* not ours */ } });
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
  $("vm-form").addEventListener("submit", doVmRestore);
  $("v-cancel").addEventListener("click", () => $("vm-dialog").close());
  window.addEventListener("hashchange", () => { if ($("login").hidden) show(location.hash.slice(1)); });
  start();
});
