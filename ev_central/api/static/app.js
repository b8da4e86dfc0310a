// EV_Front: Central's monitoring panel in a browser (docs/front.md).
//
// On load it reads the API (docs/api.md): the CPs, the ongoing requests, the messages, the
// health, the weather, the newest sessions (tickets) and the drivers; then it follows
// /api/events (Server-Sent Events) and applies each event to the page, without reloading.
// When the stream drops (Central restarting) it says it is reconnecting; the browser
// reconnects with the last event's id, and Central answers with the missed events or a new
// snapshot. Everything is written with textContent: nothing from the API is parsed as HTML.
//
// The operator's token lives in this tab's sessionStorage only (never localStorage, a cookie
// or the URL) and goes in the Authorization header of the commands.

const TOKEN_KEY = "evFront.operatorToken";
const MAX_MESSAGES = 200;
const MAX_ALERTS = 50;
const TICKETS_SHOWN = 20;
const DRIVERS_PAGE = 100;
const RECONNECT_MS = 3000;
// a supply began or ended: read the tickets and drivers again this long after the last such event
// (the ticket is written a moment after the event, and /api/drivers' pages are kept 2 s)
const DATABASE_DELAY_MS = 2500; // when the browser gives up (an HTTP error): open a new stream after this
const STATES = ["ACTIVADO", "SUMINISTRANDO", "PARADO", "AVERIADO", "DESCONECTADO"];
const PARTS = { kafka: "Kafka", database: "Database", audit: "Audit log", registry: "EV_Registry", ev_w: "EV_W" };

const model = {
  cps: new Map(), // cp_id -> the CP as /api/cps gives it
  seqs: new Map(), // session_id -> the last telemetry seq applied
  requests: [],
  weather: null,
  health: null,
  mode: null,
};

const $ = (id) => document.getElementById(id);

// -- small helpers ----------------------------------------------------------------------------------

/** An element with attributes (`class`, `text`, data-*, aria-*...) and children. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "text") el.textContent = value;
    else if (name === "hidden") el.hidden = true;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function setText(el, text) {
  const value = text ?? "";
  if (el.textContent !== value) el.textContent = value;
}

const pad = (n) => String(n).padStart(2, "0");

function when(iso) {
  if (!iso) return null;
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? null : date;
}

/** "14:03:07", local time. */
function clock(iso) {
  const d = when(iso);
  return d ? `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}` : "";
}

/** "2026-03-01", local date. */
function day(iso) {
  const d = when(iso);
  return d ? `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}` : "";
}

/** "14:03:07" today, else "2026-03-01 14:03:07". */
function stamp(iso) {
  const d = when(iso);
  if (!d) return "";
  return day(iso) === day(new Date().toISOString()) ? clock(iso) : `${day(iso)} ${clock(iso)}`;
}

function timeElement(iso, text = stamp(iso)) {
  return h("time", { datetime: iso || null, text });
}

/** An exact decimal string rounded half up to `places` (the API sends amounts as strings). */
function decimal(value, places) {
  if (value === null || value === undefined || value === "") return "";
  const match = /^(-?)(\d*)(?:\.(\d*))?$/.exec(String(value).trim());
  if (!match) return String(value);
  const [, sign, whole = "", frac = ""] = match;
  const digits = BigInt((whole || "0") + frac.padEnd(places + 1, "0").slice(0, places + 1));
  let rounded = digits / 10n + (digits % 10n >= 5n ? 1n : 0n);
  let text = rounded.toString().padStart(places + 1, "0");
  text = places ? `${text.slice(0, -places)}.${text.slice(-places)}` : text;
  return (sign && /[1-9]/.test(text) ? "-" : "") + text;
}

/** A price with at least two decimals, never rounded away (as the panel shows it). */
function price(value) {
  if (value === null || value === undefined) return "";
  const [whole, frac = ""] = String(value).split(".");
  const kept = frac.replace(/0+$/, "");
  return `${whole}.${kept.padEnd(2, "0")}`;
}

// -- the API -------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, { method = "GET", token = null } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, { method, headers, cache: "no-store", credentials: "same-origin",
                                   referrerPolicy: "no-referrer" });
  } catch (error) {
    throw new ApiError(0, "Central cannot be reached");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const message = body && body.message ? body.message : response.statusText || "error";
    throw new ApiError(response.status, message);
  }
  return body;
}

// -- the CP tiles ----------------------------------------------------------------------------------

const tiles = new Map(); // cp_id -> {root, parts...}

function makeTile(cpId) {
  const idEl = h("span", { class: "cp-id", text: cpId });
  const priceEl = h("span", { class: "price" });
  const title = h("h3", { id: `cp-title-${cpId}` }, idEl, priceEl);
  const parts = {
    price: priceEl,
    location: h("div", { class: "location" }),
    state: h("div", { class: "state" }),
    reason: h("div", { class: "reason" }),
    supply: h("div", { class: "supply", hidden: true }),
    who: h("div", { class: "who" }),
    kwh: h("span", { class: "kwh" }),
    eur: h("span", { class: "eur" }),
    weather: h("div", { class: "weather", hidden: true }),
    registration: h("dd", { class: "registration" }),
    activation: h("dd", { class: "activation" }),
    key: h("dd", { class: "key" }),
    stop: h("button", { type: "button", class: "command stop", "data-command": "stop", "aria-label": `Stop ${cpId}`,
                        text: "Stop", disabled: true }),
    resume: h("button", { type: "button", class: "command resume", "data-command": "resume",
                          "aria-label": `Resume ${cpId}`, text: "Resume", disabled: true }),
    revoke: h("button", { type: "button", class: "command revoke", "data-command": "revoke",
                          "aria-label": `Revoke the keys of ${cpId}`, text: "Revoke keys", disabled: true }),
  };
  parts.supply.append(parts.who, h("div", { class: "figures" }, parts.kwh, parts.eur));
  const details = h("dl", {},
    h("dt", { text: "Registry" }), parts.registration,
    h("dt", { text: "Service" }), parts.activation,
    h("dt", { text: "Key" }), parts.key);
  const root = h("article", { class: "tile", id: `cp-${cpId}`, "data-cp-id": cpId,
                              "aria-labelledby": `cp-title-${cpId}` },
    title, parts.location, parts.state, parts.reason, parts.supply, parts.weather, details,
    h("div", { class: "actions" }, parts.stop, parts.resume, parts.revoke));
  parts.stop.addEventListener("click", () => command("stop", cpId));
  parts.resume.addEventListener("click", () => command("resume", cpId));
  parts.revoke.addEventListener("click", () => command("revoke", cpId));
  return { root, ...parts };
}

function registrationText(reg) {
  if (!reg) return "unknown";
  if (reg.state === "registered") return reg.since ? `registered since ${stamp(reg.since)}` : "registered";
  if (reg.state === "deregistered") return reg.since ? `deregistered at ${stamp(reg.since)}` : "deregistered";
  return reg.state; // "not registered", "unknown"
}

function activationText(cp) {
  const held = [];
  if (cp.stopped) held.push("stopped by the operator");
  if (cp.weather_hold) held.push("held by a weather alert");
  if (held.length) return held.join("; ");
  if (cp.state === "ACTIVADO" || cp.state === "SUMINISTRANDO") return "activated";
  return "out of service";
}

function keyText(key) {
  if (!key) return "open mode (no keys)";
  if (key.revoked) return "revoked by the operator";
  if (key.version === null || key.version === undefined) return "none issued yet";
  return `v${key.version} ${key.fingerprint || ""}`.trim();
}

function supplyWho(supply) {
  if (supply.tag) return supply.account_id ? `Account ${supply.account_id} (tag ${supply.tag})` : `Tag ${supply.tag}`;
  if (supply.driver_id) return `Driver ${supply.driver_id}`;
  return supply.account_id ? `Account ${supply.account_id}` : "";
}

function weatherOf(cpId) {
  const cities = (model.weather && model.weather.cities) || [];
  return cities.find((city) => (city.cp_ids || []).includes(cpId)) || null;
}

function renderTile(cp) {
  let tile = tiles.get(cp.cp_id);
  if (!tile) {
    tile = makeTile(cp.cp_id);
    tiles.set(cp.cp_id, tile);
  }
  const { root } = tile;
  const state = STATES.includes(cp.state) ? cp.state : "DESCONECTADO";
  if (root.dataset.state !== cp.state) {
    for (const name of STATES) root.classList.toggle(`state-${name}`, name === state);
    root.dataset.state = cp.state;
  }
  setText(tile.price, `${price(cp.price_eur_kwh)} EUR/kWh`);
  setText(tile.location, cp.location);
  setText(tile.state, cp.meaning ? `${cp.state} · ${cp.meaning}` : cp.state);
  const reason = cp.state === "PARADO" && cp.reason ? cp.reason.replace(/^Out of Order:\s*/, "") : cp.reason;
  setText(tile.reason, reason || "");
  tile.reason.hidden = !reason;
  const supply = cp.supply;
  tile.supply.hidden = !supply;
  if (supply) {
    setText(tile.who, supplyWho(supply));
    setText(tile.kwh, `${decimal(supply.kwh, 3)} kWh`);
    setText(tile.eur, `${decimal(supply.amount_eur, 2)} EUR`);
  }
  const city = weatherOf(cp.cp_id);
  tile.weather.hidden = !city;
  if (city) {
    const temperature = city.temperature !== null && city.temperature !== undefined ? `${city.temperature} °C` :
      `no reading${city.error ? ` (${city.error})` : ""}`;
    setText(tile.weather, `${city.city}: ${temperature}${city.alert ? " · weather alert" : ""}`);
  }
  setText(tile.registration, registrationText(cp.registration));
  setText(tile.activation, activationText(cp));
  setText(tile.key, keyText(cp.key));
  tile.revoke.hidden = !cp.key; // open mode: CPs have no keys
  const label = `${cp.cp_id}: ${cp.state}${cp.meaning ? ` (${cp.meaning})` : ""}`;
  if (root.getAttribute("aria-description") !== label) root.setAttribute("aria-description", label);
  updateCommandButtons(tile);
  return tile;
}

function renderCps() {
  const grid = $("cp-grid");
  const ids = [...model.cps.keys()].sort();
  for (const [cpId, tile] of tiles) {
    if (!model.cps.has(cpId)) {
      tile.root.remove();
      tiles.delete(cpId);
    }
  }
  let previous = null;
  for (const cpId of ids) {
    const tile = renderTile(model.cps.get(cpId));
    const wanted = previous ? previous.nextSibling : grid.firstChild;
    if (wanted !== tile.root) grid.insertBefore(tile.root, wanted);
    previous = tile.root;
  }
  $("cps-empty").hidden = ids.length > 0;
  renderCounts();
  renderProblems();
}

function renderCounts() {
  const counts = {};
  for (const cp of model.cps.values()) counts[cp.state] = (counts[cp.state] || 0) + 1;
  const shown = STATES.filter((s) => counts[s]).map((s) => `${counts[s]} ${s}`);
  setText($("cp-counts"), model.cps.size ? `(${model.cps.size}: ${shown.join(", ")})` : "");
}

function putCp(cp) {
  const before = model.cps.get(cp.cp_id);
  model.cps.set(cp.cp_id, cp);
  renderTile(cp);
  if (!before) renderCps();
  else {
    renderCounts();
    renderProblems();
  }
  const sessionBefore = before && before.supply ? before.supply.session_id : null;
  const sessionNow = cp.supply ? cp.supply.session_id : null;
  if (sessionBefore !== sessionNow) {
    if (sessionBefore) model.seqs.delete(sessionBefore);
    later("database", refreshDatabase, DATABASE_DELAY_MS);
  }
}

function applyTelemetry(t) {
  const cp = model.cps.get(t.cp_id);
  if (!cp || !cp.supply || cp.supply.session_id !== t.session_id) return;
  const seen = model.seqs.get(t.session_id);
  if (seen !== undefined && t.seq <= seen) return;
  model.seqs.set(t.session_id, t.seq);
  cp.supply = { ...cp.supply, kwh: t.kwh, amount_eur: t.amount_eur };
  renderTile(cp);
  if (seen === undefined) later("requests", refreshRequests, 300); // its request is "supplying" now
  const row = document.querySelector(`#tickets tr[data-session-id="${CSS.escape(t.session_id)}"]`);
  if (row && row.dataset.open === "yes") {
    setText(row.cells[4], "SUPPLYING");
    setText(row.cells[6], decimal(t.kwh, 3));
    setText(row.cells[7], decimal(t.amount_eur, 2));
  }
}

// -- the status line and the banner of what fails -------------------------------------------------------------

function renderHealth() {
  const health = model.health;
  const line = $("status-line");
  if (!health) return;
  line.className = `status-line level-${["ok", "warning", "error"].includes(health.level) ? health.level : "unknown"}`;
  setText(line, health.text);
  if (health.mode && health.mode !== model.mode) {
    model.mode = health.mode;
    setText($("mode"), `Central runs in ${health.mode} mode.`);
  }
  renderProblems();
  renderWeatherStatus();
}

function since(iso) {
  return iso ? ` since ${stamp(iso)}` : "";
}

function problems() {
  const list = [];
  const health = model.health;
  if (health) {
    for (const part of health.failing || []) {
      if (part.part === "monitors") continue;
      const name = PARTS[part.part] || part.part;
      const text = part.text || `${name} failing`;
      list.push({ key: part.part, text: `${text.startsWith(name) ? "" : `${name}: `}${text}${since(part.since)}` });
    }
    const monitors = health.monitors || {};
    for (const missing of monitors.missing || []) {
      list.push({ key: `monitor-${missing.cp_id}`,
                  text: `${missing.cp_id}'s Monitor: not connected${since(missing.since)}` });
    }
    const more = (monitors.missing_count || 0) - (monitors.missing || []).length;
    if (more > 0) list.push({ key: "monitor-more", text: `and ${more} more CPs without their Monitor` });
  }
  for (const cp of [...model.cps.values()].sort((a, b) => a.cp_id.localeCompare(b.cp_id))) {
    if (cp.state === "AVERIADO") {
      list.push({ key: `engine-${cp.cp_id}`, text: `${cp.cp_id}'s Engine: ${cp.fault || "faulty"}${since(cp.updated_at)}` });
    }
  }
  return list;
}

function renderProblems() {
  const banner = $("problems");
  const list = problems();
  const ul = $("problem-list");
  const text = list.map((p) => p.text).join("\n");
  if (ul.dataset.shown !== text) {
    ul.replaceChildren(...list.map((p) => h("li", { "data-part": p.key, text: p.text })));
    ul.dataset.shown = text;
  }
  banner.hidden = list.length === 0;
}

// -- requests, messages, alerts -----------------------------------------------------------------------------

function renderRequests() {
  const body = $("requests").tBodies[0];
  body.replaceChildren(...model.requests.map((r) => h("tr", { "data-cp-id": r.cp_id },
    h("td", {}, timeElement(r.started_at, day(r.started_at))),
    h("td", {}, timeElement(r.started_at, clock(r.started_at))),
    h("td", { text: r.who }),
    h("td", { text: r.cp_id }),
    h("td", { text: r.status }),
    h("td", { text: r.via }))));
  $("requests-empty").hidden = model.requests.length > 0;
}

function messageItem(message) {
  const level = String(message.level || "info").toLowerCase();
  return h("li", { class: `level-${level}` }, timeElement(message.at, clock(message.at)),
    h("span", { class: "level", text: level.toUpperCase() }), h("span", { class: "text", text: message.text }));
}

function atBottom(el) {
  return el.scrollHeight - el.scrollTop - el.clientHeight < 24;
}

function showMessages(messages, replace) {
  const list = $("messages");
  const follow = replace || atBottom(list);
  const items = messages.map(messageItem);
  if (replace) list.replaceChildren(...items);
  else list.append(...items);
  while (list.childElementCount > MAX_MESSAGES) list.firstElementChild.remove();
  if (follow) list.scrollTop = list.scrollHeight;
}

function showAlert(alert) {
  const list = $("alerts");
  const follow = atBottom(list);
  list.append(messageItem({ at: alert.at, level: alert.level, text: alert.text || alert.kind }));
  list.lastElementChild.dataset.kind = alert.kind || "";
  while (list.childElementCount > MAX_ALERTS) list.firstElementChild.remove();
  $("alerts-empty").hidden = true;
  if (follow) list.scrollTop = list.scrollHeight;
}

// -- the weather ------------------------------------------------------------------------------------------------

function renderWeatherStatus() {
  const el = $("ev-w-status");
  const weather = model.weather;
  const evw = model.health ? model.health.ev_w : null;
  let text = "EV_W: …";
  let kind = "unknown";
  if (weather && !weather.available) {
    text = "EV_W: this Central runs no weather office";
  } else if (weather) {
    const seen = weather.ev_w || {};
    if (seen.silent) {
      text = `EV_W silent${seen.last_seen ? ` since ${stamp(seen.last_seen)}` : ""}: no report for 3 cycles`;
      kind = "problem";
    } else if (seen.last_seen) {
      text = `EV_W OK: last report at ${stamp(seen.last_seen)}`;
      kind = "ok";
    } else {
      text = evw && evw.configured === false ? "EV_W: not configured" : "EV_W: not heard from yet";
    }
  }
  el.className = `ev-w-status ${kind}`;
  setText(el, text);
}

function renderWeather() {
  const cities = (model.weather && model.weather.cities) || [];
  const body = $("weather").tBodies[0];
  body.replaceChildren(...cities.map((city) => {
    const temperature = city.temperature !== null && city.temperature !== undefined ? `${city.temperature} °C` :
      `no reading${city.error ? `: ${city.error}` : ""}`;
    return h("tr", { class: city.alert ? "alert" : null, "data-city": city.city },
      h("td", { text: city.city + (city.simulated ? " (simulated)" : "") }),
      h("td", { text: temperature }),
      h("td", { text: city.alert ? `ALERT${since(city.alert_since)}` : "none" }),
      h("td", { text: (city.cp_ids || []).join(", ") }),
      h("td", {}, timeElement(city.last_report_at)));
  }));
  $("weather-empty").hidden = cities.length > 0;
  renderWeatherStatus();
  for (const cp of model.cps.values()) renderTile(cp);
}

// -- tickets and drivers (from the database: they may be unavailable) ---------------------------------------

let driversNext = null;

function showDbError(id, error) {
  const el = $(id);
  el.hidden = !error;
  setText(el, error ? `Cannot read them now: ${error.message}${error.status ? ` (${error.status})` : ""}` : "");
}

function ticketRow(s) {
  const who = s.driver_id ? s.driver_id : s.account_id ? `${s.account_id}${s.tag ? ` (tag ${s.tag})` : ""}` : s.tag || "";
  return h("tr", { "data-session-id": s.session_id, "data-cp-id": s.cp_id, "data-open": s.ended_at ? "no" : "yes" },
    h("td", {}, timeElement(s.started_at)),
    h("td", {}, s.ended_at ? timeElement(s.ended_at) : "in course"),
    h("td", { text: s.cp_id }),
    h("td", { text: who }),
    h("td", { text: s.status }),
    h("td", { text: s.end_reason || "" }),
    h("td", { class: "num", text: decimal(s.kwh, 3) }),
    h("td", { class: "num", text: decimal(s.amount_eur, 2) }));
}

async function refreshTickets() {
  try {
    const page = await api(`/api/sessions?limit=${TICKETS_SHOWN}`);
    $("tickets").tBodies[0].replaceChildren(...page.sessions.map(ticketRow));
    $("tickets-empty").hidden = page.sessions.length > 0;
    showDbError("tickets-error", null);
  } catch (error) {
    showDbError("tickets-error", error);
  }
}

function driverRow(d) {
  return h("tr", { "data-driver-id": d.driver_id },
    h("td", { text: d.driver_id }),
    h("td", { text: d.account_id || "" }),
    h("td", {}, timeElement(d.registered_at)),
    h("td", { text: d.supplying_at || "" }));
}

async function refreshDrivers(more = false) {
  try {
    const after = more && driversNext ? `&after=${encodeURIComponent(driversNext)}` : "";
    const page = await api(`/api/drivers?limit=${DRIVERS_PAGE}${after}`);
    const body = $("drivers").tBodies[0];
    const rows = page.drivers.map(driverRow);
    if (more) body.append(...rows);
    else body.replaceChildren(...rows);
    driversNext = page.next;
    $("drivers-more").hidden = !page.next;
    $("drivers-empty").hidden = body.childElementCount > 0;
    showDbError("drivers-error", null);
  } catch (error) {
    showDbError("drivers-error", error);
  }
}

function refreshDatabase() {
  return Promise.all([refreshTickets(), refreshDrivers()]);
}

async function refreshRequests() {
  try {
    model.requests = (await api("/api/requests")).requests;
    renderRequests();
  } catch (error) {
    // the stream's state says why (Central unreachable); the table keeps what it showed
  }
}

// -- work done a little later, once for a burst of events -------------------------------------------------------

const timers = new Map(); // name -> {timer, first}

/** Run `work` `ms` after the last of a burst of calls, and at most `4 * ms` after the first. */
function later(name, work, ms) {
  const now = Date.now();
  const pending = timers.get(name);
  const first = pending ? pending.first : now;
  if (pending) clearTimeout(pending.timer);
  const wait = Math.max(0, Math.min(ms, first + 4 * ms - now));
  timers.set(name, { first, timer: setTimeout(() => {
    timers.delete(name);
    work();
  }, wait) });
}

// -- the whole state, read at once -----------------------------------------------------------------------------

function applySnapshot(snapshot) {
  model.cps = new Map(snapshot.cps.map((cp) => [cp.cp_id, cp]));
  model.requests = snapshot.requests;
  model.weather = snapshot.weather;
  model.health = snapshot.health;
  renderCps();
  renderRequests();
  showMessages(snapshot.messages, true);
  renderWeather();
  renderHealth();
}

async function loadAll() {
  const reads = await Promise.allSettled([
    api("/api/cps"), api("/api/requests"), api("/api/messages?limit=100"), api("/api/health"), api("/api/weather"),
  ]);
  const [cps, requests, messages, health, weather] = reads.map((r) => (r.status === "fulfilled" ? r.value : null));
  if (cps && requests && messages && health && weather) {
    applySnapshot({ cps: cps.cps, requests: requests.requests, messages: messages.messages, health, weather });
  } else {
    const failed = reads.find((r) => r.status === "rejected");
    setText($("status-line"), `Cannot read Central's state: ${failed ? failed.reason.message : "unknown"}`);
  }
  await refreshDatabase();
}

// -- the live events ---------------------------------------------------------------------------------------------

const stream = { source: null, lastId: null, down: null, retry: null };

function setConnection(down, text) {
  const banner = $("connection");
  banner.hidden = !down;
  document.body.dataset.connection = down ? "reconnecting" : "live";
  if (down) setText(banner, text);
}

function handler(kind, apply) {
  return (event) => {
    if (event.lastEventId) stream.lastId = event.lastEventId;
    let data;
    try {
      data = JSON.parse(event.data);
    } catch (error) {
      return;
    }
    apply(data, kind);
  };
}

function connect() {
  clearTimeout(stream.retry);
  const url = stream.lastId ? `/api/events?last_event_id=${encodeURIComponent(stream.lastId)}` : "/api/events";
  const source = new EventSource(url);
  stream.source = source;
  source.addEventListener("open", () => {
    const wasDown = stream.down !== null;
    stream.down = null;
    setConnection(false);
    if (wasDown) {
      // the snapshot (or the missed events) comes on the stream; the database's parts do not
      refreshDatabase();
      refreshRequests();
    }
  });
  source.addEventListener("error", () => {
    if (stream.source !== source) return;
    if (stream.down === null) stream.down = new Date();
    const at = clock(stream.down.toISOString());
    setConnection(true, `Connection to Central lost at ${at}: reconnecting… (the page shows Central's state as of ` +
                        `then; it updates by itself when Central answers again)`);
    if (source.readyState === EventSource.CLOSED) {
      // an HTTP error (too many readers, Central stopping): the browser gives up; try again
      stream.retry = setTimeout(connect, RECONNECT_MS);
    }
  });
  source.addEventListener("snapshot", handler("snapshot", (data) => {
    model.seqs.clear();
    applySnapshot(data);
  }));
  source.addEventListener("cp", handler("cp", (cp) => {
    putCp(cp);
    later("requests", refreshRequests, 300);
  }));
  source.addEventListener("telemetry", handler("telemetry", applyTelemetry));
  source.addEventListener("message", handler("message", (message) => {
    showMessages([message], false);
    later("requests", refreshRequests, 300);
  }));
  source.addEventListener("alert", handler("alert", showAlert));
  source.addEventListener("health", handler("health", (health) => {
    model.health = health;
    renderHealth();
  }));
  source.addEventListener("weather", handler("weather", (weather) => {
    model.weather = weather;
    renderWeather();
  }));
  source.addEventListener("overflow", handler("overflow", () => {
    // Central ends this stream (it is stopping, or this page fell behind): the browser reconnects
  }));
}

// -- the operator's token and commands ------------------------------------------------------------------------

function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch (error) {
    return "";
  }
}

function updateCommandButtons(tile) {
  const off = !token();
  for (const button of [tile.stop, tile.resume, tile.revoke]) button.disabled = off;
}

function renderToken() {
  const has = Boolean(token());
  const state = $("token-state");
  state.classList.toggle("has-token", has);
  setText(state, has ? "Token entered: the commands are on (the token is kept in this tab only, until it closes)." :
    "No token entered: the commands are off. The token is kept in this tab only.");
  $("stop-all").disabled = !has;
  $("resume-all").disabled = !has;
  $("token-forget").disabled = !has;
  for (const tile of tiles.values()) updateCommandButtons(tile);
}

function say(text, ok) {
  const el = $("command-result");
  el.className = `command-result ${ok ? "ok" : "refused"}`;
  setText(el, text);
}

const VERBS = { stop: "Stop", resume: "Resume", revoke: "Revoke keys", "stop-all": "Stop all",
                "resume-all": "Resume all" };

function refusal(error) {
  switch (error.status) {
    case 0: return `Central cannot be reached: nothing done (${error.message})`;
    case 401: return `refused (401): the token is wrong. ${error.message}`;
    case 403: return `refused (403): ${error.message}`;
    case 404: return `refused (404): ${error.message}`;
    case 409: return `refused (409): ${error.message}`;
    case 429: return `refused (429): ${error.message}`;
    case 503: return `not done (503): ${error.message}`;
    default: return `failed (${error.status}): ${error.message}`;
  }
}

async function command(verb, cpId = null) {
  const secret = token();
  if (!secret) {
    say("Enter the operator's token first.", false);
    return;
  }
  const what = cpId ? `${VERBS[verb]} ${cpId}` : VERBS[verb];
  if ((verb === "revoke" || verb === "stop-all")
      && !window.confirm(verb === "revoke" ? `Revoke the keys of ${cpId}? It stays out of service until its Monitor ` +
                                             "authenticates again." : "Stop every CP? Supplies in course end now.")) {
    return;
  }
  const path = cpId ? `/api/cps/${encodeURIComponent(cpId)}/${verb === "revoke" ? "keys/revoke" : verb}`
    : `/api/cps/${verb}`;
  say(`${what}: sending…`, true);
  try {
    const answer = await api(path, { method: "POST", token: secret });
    const cps = answer.cps || [answer];
    for (const cp of cps) {
      const current = model.cps.get(cp.cp_id); // the stream may have brought a newer state already
      if (!current || (cp.updated_at || "") >= (current.updated_at || "")) putCp(cp);
    }
    const shown = cps.slice(0, 8).map((cp) => `${cp.cp_id} ${cp.state}${cp.meaning ? ` (${cp.meaning})` : ""}`);
    say(`${what}: done: ${shown.join(", ")}${cps.length > 8 ? ` and ${cps.length - 8} more` : ""}` +
        `${cps.length ? "" : "no CPs"}.`, true);
  } catch (error) {
    say(`${what}: ${refusal(error)}`, false);
  }
}

function setupOperator() {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("token");
    const value = input.value.trim();
    input.value = "";
    input.blur();
    if (!value) {
      say("The token field is empty.", false);
      return;
    }
    try {
      sessionStorage.setItem(TOKEN_KEY, value);
    } catch (error) {
      say("This browser keeps nothing for this tab (sessionStorage is off): the commands cannot be used.", false);
      return;
    }
    renderToken();
    say("Token entered. Central checks it at the first command.", true);
  });
  $("token-forget").addEventListener("click", () => {
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch (error) {
      // nothing kept
    }
    renderToken();
    say("Token forgotten: the commands are off.", true);
  });
  $("stop-all").addEventListener("click", () => command("stop-all"));
  $("resume-all").addEventListener("click", () => command("resume-all"));
  $("drivers-more").addEventListener("click", () => refreshDrivers(true));
  renderToken();
}

// -- start ------------------------------------------------------------------------------------------------

async function start() {
  document.body.dataset.connection = "loading";
  setupOperator();
  await loadAll();
  connect();
}

start();
