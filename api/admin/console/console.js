// mlx-troupe admin console: plain DOM, no framework, no build step.
// The admin key lives in sessionStorage (this tab only) and travels only in the
// Authorization header; nothing from the server is ever inserted as HTML.
"use strict";

const KEY_ITEM = "troupe-admin-key";
const POLL_MS = 2000;
const MAX_ROWS = 500;
const MAX_POINTS = 150;
const $ = (selector) => document.querySelector(selector);

const state = { view: "overview", timer: null, stream: null, history: [] };

function adminKey() { return sessionStorage.getItem(KEY_ITEM); }

class Refused extends Error {}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}), Authorization: "Bearer " + adminKey() };
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  if (response.status === 401) {
    logOut("The server refused the key; log in again.");
    throw new Refused("refused");
  }
  return response;
}

async function problemText(response) {
  try {
    const body = await response.json();
    return body.detail || body.title || "HTTP " + response.status;
  } catch (error) {
    return "HTTP " + response.status;
  }
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function showError(message) { $("#app-error").textContent = message || ""; }

// -- logging in and out ----------------------------------------------------------

async function logIn(event) {
  event.preventDefault();
  const key = $("#admin-key").value;
  const error = $("#login-error");
  error.textContent = "";
  const response = await fetch("/admin/settings", {
    headers: { Authorization: "Bearer " + key }, cache: "no-store",
  });
  if (response.ok) {
    sessionStorage.setItem(KEY_ITEM, key);
    $("#admin-key").value = "";
    enter();
  } else if (response.status === 401) {
    error.textContent = "That key was refused.";
  } else if (response.status === 403) {
    error.textContent = "This server has no admin key configured (--admin-key).";
  } else {
    error.textContent = await problemText(response);
  }
}

function logOut(message) {
  sessionStorage.removeItem(KEY_ITEM);
  stopView();
  $("#app-view").hidden = true;
  $("#logout").hidden = true;
  $("#login-view").hidden = false;
  $("#login-error").textContent = message || "";
  $("#admin-key").focus();
}

function enter() {
  $("#login-view").hidden = true;
  $("#app-view").hidden = false;
  $("#logout").hidden = false;
  const wanted = location.hash.slice(1);
  show(document.querySelector(`[data-view="${wanted}"]`) ? wanted : "overview");
}

// -- views -----------------------------------------------------------------------

function stopView() {
  clearInterval(state.timer);
  state.timer = null;
  if (state.stream) state.stream.abort();
  state.stream = null;
}

function show(view) {
  stopView();
  showError("");
  state.view = view;
  history.replaceState(null, "", "#" + view);
  for (const button of document.querySelectorAll("nav [data-view]")) {
    button.setAttribute("aria-pressed", String(button.dataset.view === view));
  }
  for (const panel of document.querySelectorAll("[data-view-panel]")) {
    panel.hidden = panel.dataset.viewPanel !== view;
  }
  const start = { overview: startOverview, audit: startAudit, charts: startCharts,
    settings: loadSettings }[view];
  start();
}

function every(task) {
  const run = () => task().catch((error) => {
    if (!(error instanceof Refused)) showError("Cannot reach the server: " + error.message);
  });
  run();
  state.timer = setInterval(run, POLL_MS);
}

// -- overview: the supervision tree ------------------------------------------------

function startOverview() { every(refreshTree); }

async function refreshTree() {
  const response = await api("/admin/supervisor");
  if (!response.ok) { showError(await problemText(response)); return; }
  const status = await response.json();
  showError("");
  $("#tree").replaceChildren(treeNode(status.root));
  const breaker = status.cache ? status.cache.breaker.state : "unknown";
  const badge = $("#breaker-state");
  badge.textContent = breaker;
  badge.dataset.state = breaker;
  const process = status.engine && status.engine.process;
  $("#engine-process").replaceChildren(...facts(process ? {
    pid: process.pid ?? "none (restarting)",
    uptime: seconds(process.uptime_seconds),
    heartbeat: process.heartbeat_age_seconds == null ? "-" : seconds(process.heartbeat_age_seconds) + " ago",
    restarts: process.restarts,
    steps: process.steps,
  } : { engine: status.engine ? "in the server's process" : "not answering" }));
  $("#intake-figures").replaceChildren(...facts(status.intake ? {
    "in flight": status.intake.in_flight,
    running: status.engine ? status.engine.running : "-",
    waiting: status.engine ? status.engine.waiting : "-",
  } : { intake: "not answering" }));
  $("#tree-updated").textContent = "Updated " + new Date().toLocaleTimeString();
  $("#tree").dataset.refreshes = String(Number($("#tree").dataset.refreshes || 0) + 1);
}

function facts(values) {
  const items = [];
  for (const [name, value] of Object.entries(values)) {
    items.push(el("dt", { text: name }), el("dd", { text: String(value) }));
  }
  return items;
}

function seconds(value) { return value == null ? "-" : value.toFixed(1) + " s"; }

// Nested lists, not an ARIA tree: a tree role promises arrow-key navigation.
function treeNode(node) {
  const item = el("li", { class: "node", "data-name": node.name, "data-state": node.state });
  item.append(el("div", { class: "node-line" },
    el("span", { class: "node-name", text: node.name }),
    el("span", { class: "badge", "data-state": node.state, text: node.state }),
    el("span", { class: "muted", text: describe(node) })));
  if (node.last_failure) {
    item.append(el("div", { class: "failure", text: "last failure: " + node.last_failure.reason }));
  }
  if (node.children && node.children.length) {
    item.append(el("ul", { class: "children" }, ...node.children.map(treeNode)));
  }
  return item;
}

function describe(node) {
  const parts = [];
  if (node.strategy) parts.push(node.strategy);
  parts.push(`restarts ${node.restarts_total}`, `incarnation ${node.incarnation}`);
  if (node.mailbox_capacity !== undefined) parts.push(`mailbox ${node.mailbox_depth}/${node.mailbox_capacity}`);
  if (node.uptime_seconds != null) parts.push(`up ${seconds(node.uptime_seconds)}`);
  return parts.join(" · ");
}

// -- the audit log, with live rows ---------------------------------------------------

function auditFilters() {
  const form = new FormData($("#audit-filters"));
  const filters = {};
  for (const name of ["model", "endpoint", "status"]) {
    const value = String(form.get(name) || "").trim();
    if (value) filters[name] = value;
  }
  for (const name of ["since", "until"]) {
    const value = String(form.get(name) || "");
    if (value) filters[name] = String(new Date(value).getTime() / 1000);
  }
  return filters;
}

async function startAudit() {
  const filters = auditFilters();
  const response = await api("/admin/audit-logs?" + new URLSearchParams({ ...filters, limit: "200" }));
  if (!response.ok) { showError(await problemText(response)); return; }
  const body = await response.json();
  const rows = $("#audit-table tbody");
  rows.replaceChildren(...body.data.map(auditRow));
  countRows();
  follow(filters, 0);
}

function countRows() {
  $("#audit-count").textContent = $("#audit-table tbody").children.length + " rows shown";
}

function auditRow(row) {
  const cells = [
    new Date(row.ts * 1000).toLocaleString(), row.request_id, row.model, row.endpoint,
    row.status, row.finish_reason ?? "", ms(row.duration_ms), ms(row.ttft_ms),
    row.prompt_tokens, row.completion_tokens, row.error_type ?? "",
  ];
  const tr = el("tr", { "data-request-id": row.request_id });
  if (row.status >= 400) tr.className = "failed";
  for (const cell of cells) tr.append(el("td", { text: String(cell) }));
  return tr;
}

function ms(value) { return value == null ? "" : value.toFixed(1); }

function setLive(on, text) {
  const badge = $("#live-state");
  badge.dataset.state = on ? "on" : "off";
  badge.textContent = "live: " + text;
}

// EventSource cannot send an Authorization header, so the stream is read with fetch.
async function follow(filters, attempt) {
  const controller = new AbortController();
  state.stream = controller;
  const query = {};
  for (const name of ["model", "endpoint", "status"]) if (filters[name]) query[name] = filters[name];
  let ended = "disconnected";
  try {
    const response = await api("/admin/audit-logs/stream?" + new URLSearchParams(query),
      { signal: controller.signal });
    if (!response.ok) { setLive(false, await problemText(response)); return; }
    ended = await readEvents(response, filters);
    attempt = 0;
  } catch (error) {
    if (controller.signal.aborted || error instanceof Refused) return;
  }
  if (state.stream !== controller) return;
  setLive(false, ended === "shutdown" ? "server stopping" : "reconnecting");
  const delay = Math.min(30000, 1000 * 2 ** attempt);
  setTimeout(() => { if (state.stream === controller) (ended === "lagged" ? startAudit() : follow(filters, attempt + 1)); }, delay);
}

async function readEvents(response, filters) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return "disconnected";
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      if (block.startsWith(": subscribed")) setLive(true, "on");
      const event = parseEvent(block);
      if (event.name === "audit") addLiveRow(JSON.parse(event.data), filters);
      if (event.name === "end") return event.data;
    }
  }
}

function parseEvent(block) {
  const event = { name: "message", data: "" };
  for (const line of block.split("\n")) {
    if (line.startsWith("event: ")) event.name = line.slice(7);
    else if (line.startsWith("data: ")) event.data += line.slice(6);
  }
  return event;
}

function addLiveRow(row, filters) {
  if (filters.since && row.ts < Number(filters.since)) return;
  if (filters.until && row.ts > Number(filters.until)) return;
  const rows = $("#audit-table tbody");
  const tr = auditRow(row);
  tr.classList.add("new");
  rows.prepend(tr);
  while (rows.children.length > MAX_ROWS) rows.lastElementChild.remove();
  countRows();
}

// -- charts from the metrics actor's windows -------------------------------------------

function startCharts() { every(refreshCharts); }

async function refreshCharts() {
  const response = await api("/admin/metrics?category=throughput,latency,memory");
  if (!response.ok) { showError(await problemText(response)); return; }
  const m = await response.json();
  state.history.push({
    t: m.timestamp,
    tokens: m.throughput.tokens_per_second, requests: m.throughput.requests_per_second,
    ttft50: m.latency.time_to_first_token.p50_ms, ttft95: m.latency.time_to_first_token.p95_ms,
    e2e95: m.latency.end_to_end.p95_ms,
    rss: m.memory.current_mb, engine: m.memory.engine_current_mb, mlx: m.memory.mlx_active_mb,
  });
  if (state.history.length > MAX_POINTS) state.history.shift();
  $("#view-charts").dataset.points = String(state.history.length);
  draw($("#chart-throughput"), [["tokens", "tokens/s"], ["requests", "requests/s"]]);
  draw($("#chart-latency"), [["ttft50", "TTFT p50"], ["ttft95", "TTFT p95"], ["e2e95", "e2e p95"]]);
  draw($("#chart-memory"), [["rss", "server RSS"], ["engine", "engine RSS"], ["mlx", "MLX active"]]);
}

const COLOURS = ["#1b6ac9", "#c9501b", "#2e8b57"];

function draw(canvas, series) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  const pad = { left: 56, right: 12, top: 22, bottom: 18 };
  ctx.clearRect(0, 0, width, height);
  const points = state.history;
  const values = points.flatMap((p) => series.map(([key]) => p[key])).filter((v) => v != null);
  const top = Math.max(1, ...values) * 1.1;
  ctx.strokeStyle = "#ccc";
  ctx.fillStyle = "#555";
  ctx.font = "12px sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = pad.top + (height - pad.top - pad.bottom) * (1 - i / 4);
    ctx.beginPath(); ctx.moveTo(pad.left, y); ctx.lineTo(width - pad.right, y); ctx.stroke();
    ctx.fillText((top * i / 4).toFixed(top < 10 ? 2 : 0), 4, y + 4);
  }
  const x = (i) => pad.left + (width - pad.left - pad.right) * (points.length < 2 ? 1 : i / (points.length - 1));
  const y = (v) => pad.top + (height - pad.top - pad.bottom) * (1 - v / top);
  series.forEach(([key, label], n) => {
    ctx.strokeStyle = ctx.fillStyle = COLOURS[n];
    ctx.lineWidth = 2;
    ctx.beginPath();
    let drawing = false;
    points.forEach((p, i) => {
      if (p[key] == null) { drawing = false; return; }
      if (drawing) ctx.lineTo(x(i), y(p[key])); else ctx.moveTo(x(i), y(p[key]));
      drawing = true;
    });
    ctx.stroke();
    const last = points.length ? points[points.length - 1][key] : null;
    ctx.fillText(`${label}: ${last == null ? "-" : last.toFixed(1)}`, pad.left + n * 190, 14);
  });
}

// -- settings ---------------------------------------------------------------------------

async function loadSettings() {
  const response = await api("/admin/settings");
  if (!response.ok) { showError(await problemText(response)); return; }
  renderSettings(await response.json());
  await loadTenants();
}

function renderSettings(view) {
  state.editable = view.editable;
  $("#server-model").textContent = view.model;
  const fields = Object.entries(view.editable).map(([name, field]) => el("div", { class: "field" },
    el("label", { for: "setting-" + name, text: name }),
    el("input", { id: "setting-" + name, name, type: "number", step: "any", required: "",
      value: String(field.value), "aria-describedby": "help-" + name }),
    el("small", { id: "help-" + name, class: "muted", text: field.description })));
  $("#editable-settings").replaceChildren(...fields);
  $("#persist").disabled = !view.can_persist;
  $("#persist").checked = false;
  $("#settings-history").replaceChildren(...view.changes.map((change) => el("li", {
    text: `${new Date(change.ts * 1000).toLocaleString()}: ` + Object.entries(change.changes)
      .map(([name, [old, now]]) => `${name} ${old} → ${now}`).join(", ") +
      (change.persisted ? " (saved)" : ""),
  })));
  $("#effective-settings tbody").replaceChildren(...Object.entries(view.effective).map(
    ([name, value]) => el("tr", {}, el("th", { scope: "row", text: name }), el("td", { text: value }))));
}

async function saveSettings(event) {
  event.preventDefault();
  const message = $("#settings-message");
  message.className = "";
  message.textContent = "Saving…";
  const form = new FormData($("#settings-form"));
  const persist = form.get("persist") === "on";
  const change = {};
  for (const input of document.querySelectorAll("#editable-settings input")) {
    const value = input.name === "rate_limit_burst" ? parseInt(input.value, 10) : Number(input.value);
    // Only what was edited (all of it when saving): the audit shows what changed.
    if (persist || value !== state.editable[input.name].value) change[input.name] = value;
  }
  if (!Object.keys(change).length) { message.textContent = "Nothing to change."; return; }
  if (persist) change.persist = true;
  const response = await api("/admin/settings", {
    method: "PATCH", headers: { "Content-Type": "application/json" }, body: JSON.stringify(change),
  });
  if (!response.ok) {
    message.className = "error";
    message.textContent = "Not changed: " + await problemText(response);
    return;
  }
  const view = await response.json();
  renderSettings(view);
  message.textContent = ["Applied.", ...view.warnings].join(" ");
}

// -- tenants ----------------------------------------------------------------------------

async function loadTenants() {
  const response = await api("/admin/tenants");
  if (!response.ok) { $("#tenants-message").textContent = await problemText(response); return; }
  renderTenants(await response.json());
}

function renderTenants(view) {
  const limit = (value) => (value == null ? "-" : String(value));
  const row = (name, keys, limits) => el("tr", { "data-tenant": name },
    el("th", { scope: "row", text: name }), el("td", { text: keys }),
    el("td", { text: String(limits.weight) }), el("td", { text: limit(limits.max_concurrent) }),
    el("td", { text: limit(limits.tokens_per_minute) }));
  $("#tenant-teams tbody").replaceChildren(
    ...Object.entries(view.named).map(([name, team]) => row(name, String(team.keys), team)),
    row("[default]", "-", view.default));
}

async function saveTenants(event) {
  event.preventDefault();
  const message = $("#tenants-message");
  message.className = "";
  message.textContent = "Replacing…";
  const response = await api("/admin/tenants", {
    method: "PUT", headers: { "Content-Type": "application/toml" }, body: $("#tenants-file").value,
  });
  if (!response.ok) {
    message.className = "error";
    message.textContent = "Not changed: " + await problemText(response);
    return;
  }
  const view = await response.json();
  renderTenants(view);
  $("#tenants-file").value = "";  // it may hold keys: do not leave them on screen
  message.textContent = view.saved ? "Applied and saved to the tenants file."
    : "Applied (no --tenants file: a restart goes back to the start-up tenants).";
}

// -- start -------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", logIn);
  $("#logout").addEventListener("click", () => logOut(""));
  $("#audit-filters").addEventListener("submit", (event) => { event.preventDefault(); show("audit"); });
  $("#settings-form").addEventListener("submit", saveSettings);
  $("#tenants-form").addEventListener("submit", saveTenants);
  for (const button of document.querySelectorAll("nav [data-view]")) {
    button.addEventListener("click", () => show(button.dataset.view));
  }
  if (adminKey()) enter(); else logOut("");
});
