// The es-orders dashboard: plain JavaScript over the query service's own API. URLs are
// relative, so the page works behind a proxy that serves the service under a prefix.
"use strict";

const PAGE = 200; // orders loaded at first
const MAX_ROWS = 500; // rows kept; the least recently changed go first
const FIGURES_EVERY_MS = 2000;
const HISTORY_PAGE = 50;
const FIELDS = ["id", "user_id", "product_id", "quantity", "price", "status", "version", "updated_at"];

const orders = new Map(); // id -> {state, row}
const tbody = document.querySelector("#orders tbody");
let selected = null; // the id whose history is shown

function text(value) {
  return value === null || value === undefined ? "–" : String(value);
}

function instant(value) {
  // RFC 3339 in UTC: shown to the second, without the T and Z.
  return value ? value.replace("T", " ").replace(/(\.\d+)?Z$/, "") : "–";
}

function setBadge(state, label) {
  const badge = document.getElementById("live");
  badge.dataset.state = state;
  badge.textContent = label;
}

// ---- orders table -------------------------------------------------------------------

function fillRow(row, state) {
  for (const field of FIELDS) {
    let cell = row.querySelector(`td[data-field="${field}"]`);
    if (!cell) {
      cell = document.createElement("td");
      cell.dataset.field = field;
      row.append(cell);
    }
    const value = field === "updated_at" ? instant(state[field]) : text(state[field]);
    cell.textContent = value;
    cell.dataset.value = value;
    cell.title = value;
  }
}

// Keeps the newer of what it has and ``state``: the first page and the live changes
// arrive in any order, and the version says which is later.
function apply(state, live) {
  const known = orders.get(state.id);
  if (known && known.state.version >= state.version) return;
  let row = known ? known.row : null;
  if (!row) {
    row = document.createElement("tr");
    row.dataset.id = state.id;
    row.addEventListener("click", () => showHistory(state.id));
  }
  fillRow(row, state);
  orders.set(state.id, { state, row });
  if (live) {
    tbody.prepend(row);
    row.classList.remove("changed");
    void row.offsetWidth; // restarts the highlight on a row changed again
    row.classList.add("changed");
    if (state.id === selected) showHistory(state.id);
  } else if (!known) {
    tbody.append(row);
  }
  while (tbody.rows.length > MAX_ROWS) {
    const last = tbody.rows[tbody.rows.length - 1];
    orders.delete(last.dataset.id);
    last.remove();
  }
  document.getElementById("order-count").textContent = `(${orders.size} shown)`;
}

async function loadOrders() {
  const response = await fetch(`orders?limit=${PAGE}`);
  if (!response.ok) throw new Error(`GET /orders: ${response.status}`);
  const page = await response.json();
  page.sort((a, b) => (b.updated_at || "").localeCompare(a.updated_at || ""));
  for (const state of page) apply(state, false);
}

// ---- live changes -------------------------------------------------------------------

function showLoadError(error) {
  document.getElementById("order-count").textContent = `(${error.message})`;
}

// A stream starts at the changelog's end once it is open: the orders are read again then,
// so that no change falls between the page and the stream. The browser resumes a broken
// stream by itself (Last-Event-ID) and misses nothing then.
function connectChanges() {
  const changes = new EventSource("changes");
  let opened = false;
  changes.addEventListener("open", () => {
    setBadge("live", "live");
    if (!opened) {
      opened = true;
      loadOrders().catch(showLoadError);
    }
  });
  changes.addEventListener("change", (message) => apply(JSON.parse(message.data).state, true));
  changes.addEventListener("overflow", () => setBadge("reconnecting", "fell behind; resuming"));
  changes.addEventListener("error", () => {
    setBadge("reconnecting", "reconnecting…");
    if (changes.readyState === EventSource.CLOSED) {
      // Refused (a 503: too many streams, or the broker away): no retry by itself.
      setTimeout(connectChanges, 5000);
    }
  });
}

// ---- history --------------------------------------------------------------------------

function nextLink(response) {
  const link = response.headers.get("Link") || "";
  const match = /<([^>]*)>\s*;\s*rel="next"/.exec(link);
  return match ? match[1] : null;
}

async function problemDetail(response) {
  try {
    const problem = await response.json();
    return problem.detail || problem.title || `${response.status}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

function historyItem(entry) {
  const event = entry.event || {};
  const item = document.createElement("li");
  const head = document.createElement("div");
  const type = document.createElement("span");
  type.className = "type";
  type.textContent = `v${entry.version} ${event.type || "event"}`;
  const when = document.createElement("span");
  when.className = "when";
  when.textContent = ` ${instant(entry.timestamp)}`;
  head.append(type, when);
  const fields = document.createElement("div");
  fields.className = "fields";
  fields.textContent = Object.entries(event.data || {})
    .map(([name, value]) => `${name}: ${text(value)}`)
    .join(", ");
  const where = document.createElement("div");
  where.className = "where";
  where.textContent = `partition ${entry.partition}, offset ${entry.offset}`;
  item.append(head, fields, where);
  return item;
}

async function showHistory(orderId, url) {
  const list = document.getElementById("history");
  const note = document.getElementById("history-note");
  const more = document.getElementById("history-more");
  if (!url) {
    selected = orderId;
    for (const row of tbody.querySelectorAll("tr.selected")) row.classList.remove("selected");
    orders.get(orderId)?.row.classList.add("selected");
    document.getElementById("history-order").textContent = orderId;
    list.replaceChildren();
  }
  more.hidden = true;
  note.textContent = "loading…";
  const response = await fetch(
    url || `orders/${encodeURIComponent(orderId)}/events?limit=${HISTORY_PAGE}`,
  );
  if (selected !== orderId) return; // another order was clicked meanwhile
  if (response.status === 503) {
    const wait = Number(response.headers.get("Retry-After")) || 2;
    note.textContent = `${await problemDetail(response)} — retrying in ${wait} s`;
    setTimeout(() => selected === orderId && showHistory(orderId, url), wait * 1000);
    return;
  }
  if (!response.ok) {
    note.textContent = await problemDetail(response); // 501: history is off here
    return;
  }
  const entries = await response.json();
  list.append(...entries.map(historyItem));
  note.textContent = list.children.length ? "" : "no events";
  const next = nextLink(response);
  if (next) {
    more.hidden = false;
    more.onclick = () => showHistory(orderId, next);
  }
}

// ---- figures --------------------------------------------------------------------------

let previous = null; // {consumed, at}

function renderCluster(cluster) {
  const members = document.getElementById("members");
  const rows = document.querySelector("#partitions tbody");
  members.replaceChildren();
  rows.replaceChildren();
  let lag = 0;
  const owned = [];
  for (const member of cluster.members) {
    const item = document.createElement("li");
    item.textContent = `${member.url}${member.self ? " (this one)" : ""}` +
      (member.ready ? "" : ` — waiting for ${member.waiting_for.join(", ")}`);
    if (member.self) item.classList.add("self");
    if (!member.ready) item.classList.add("not-ready");
    members.append(item);
    for (const partition of member.partitions) owned.push([partition, member]);
  }
  owned.sort((a, b) => a[0].partition - b[0].partition);
  for (const [partition, member] of owned) {
    const row = document.createElement("tr");
    for (const value of [partition.partition, member.url, partition.phase, text(partition.lag)]) {
      const cell = document.createElement("td");
      cell.textContent = value;
      row.append(cell);
    }
    rows.append(row);
    lag += partition.lag || 0;
  }
  document.getElementById("member-count").textContent = cluster.members.length;
  document.getElementById("total-lag").textContent = lag;
}

async function refreshFigures() {
  try {
    const [stats, cluster] = await Promise.all([
      fetch("stats").then((r) => r.json()),
      fetch("cluster").then((r) => r.json()),
    ]);
    const now = performance.now();
    if (previous) {
      const rate = (stats.consumed - previous.consumed) / ((now - previous.at) / 1000);
      document.getElementById("rate").textContent = Math.max(0, Math.round(rate));
    }
    previous = { consumed: stats.consumed, at: now };
    document.getElementById("dead-letters").textContent = stats.dead_letters;
    renderCluster(cluster);
  } catch {
    // The service is away for a moment: the figures stay as they were.
  }
}

loadOrders().catch(showLoadError); // at once, and again when the stream opens
connectChanges();
refreshFigures();
setInterval(refreshFigures, FIGURES_EVERY_MS);
