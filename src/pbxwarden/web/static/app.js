// pbxwarden dashboard: plain JavaScript over the admin API (/api/v1), no build step.
//
// Safety rules of this file: text from the server (caller IDs, alert reasons, ban
// reasons: all chosen by attackers) reaches the page only through el() and textContent,
// never as HTML; the CSRF token lives in sessionStorage (this tab only) and goes with
// every change; the session cookie itself is HttpOnly and never seen here.
"use strict";

const CSRF_KEY = "pbxwarden.csrf";
const REFRESH_MS = 5000;
const EVENTS_RETRY_MS = 30000;
const FEED_MAX = 100;
const RANK = { "read-only": 0, operator: 1, admin: 2 };
const EVENT_TYPES = [
  "call.start", "call.end", "alert", "ban", "unban", "distributed-brute-force", "lost",
  "lock", "unlock",
];

const state = {
  me: null, timer: null, soon: null, events: null, eventsRetry: null, refreshing: null, next: null,
};

class ApiError extends Error {
  constructor(status, detail, retryAfter) {
    super(detail);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

// -- small helpers -------------------------------------------------------------------

/** An element with text (never HTML), attributes, listeners and children. */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null && child !== false) node.append(child);
  }
  return node;
}

const $ = (id) => document.getElementById(id);
const canAct = () => state.me !== null && RANK[state.me.role] >= RANK.operator;
const isAdmin = () => state.me !== null && state.me.role === "admin";

function when(ts) {
  if (ts === null || ts === undefined) return "";
  const date = new Date(ts * 1000);
  const seconds = Math.round(Date.now() / 1000 - ts);
  let ago;
  if (seconds < 60) ago = "just now";
  else if (seconds < 3600) ago = `${Math.floor(seconds / 60)} min ago`;
  else if (seconds < 86400) ago = `${Math.floor(seconds / 3600)} h ago`;
  else ago = `${Math.floor(seconds / 86400)} days ago`;
  return `${date.toLocaleString()} (${ago})`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function inFuture(seconds) {
  if (seconds > 86400) return `${Math.round(seconds / 86400)} days`;
  if (seconds > 3600) return `${Math.round(seconds / 3600)} hours`;
  return `${Math.max(1, Math.round(seconds / 60))} minutes`;
}

function small(text) {
  return el("small", { text });
}

function badge(text, kind) {
  return el("span", { class: `badge ${kind}`, text });
}

/** A table of rows, or a calm sentence when there are none. */
function table(columns, rows, empty, rowProps = () => ({})) {
  if (rows.length === 0) return el("p", { class: "empty", text: empty });
  const head = el("tr", {}, columns.map((c) => el("th", { scope: "col", text: c[0] })));
  const body = rows.map((row) =>
    el("tr", rowProps(row), columns.map(([label, cell]) =>
      el("td", { class: label ? null : "actions", "data-label": label || null }, cell(row)))));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, body));
}

function show(section, ...content) {
  $(section).querySelector(".body").replaceChildren(...content);
}

let drawn = {};

/** Draw a list only when its data changed (or a minute passed, for "5 min ago"), so that
 * refreshing every few seconds does not keep undoing a text selection. */
function render(section, data, draw) {
  const key = `${state.me.role}:${Math.floor(Date.now() / 60000)}:${JSON.stringify(data)}`;
  if (drawn[section] === key) return;
  drawn[section] = key;
  draw(data);
}

function unavailable(section, text) {
  drawn[section] = null;
  show(section, el("p", { class: "empty", text }));
}

// -- the API -------------------------------------------------------------------------

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = sessionStorage.getItem(CSRF_KEY) || "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const detail = data && typeof data.detail === "string" ? data.detail : `HTTP ${response.status}`;
    throw new ApiError(response.status, detail, response.headers.get("Retry-After"));
  }
  return data;
}

/** A session that ended (expired, logged out elsewhere) sends the user to the login form. */
function sessionEnded(error) {
  if (!(error instanceof ApiError) || error.status !== 401) return false;
  showLogin("Your session has ended. Please log in again.");
  return true;
}

/** A message above the lists; a sticky one (a password shown once) stays until dismissed. */
function notify(text, kind = "ok", sticky = false) {
  const box = $("notices");
  const note = el("div", { class: `notice ${kind}` }, el("span", { text }),
    el("button", { type: "button", class: "quiet", text: "Dismiss", onclick: () => note.remove() }));
  box.prepend(note);
  while (box.children.length > 5) box.lastChild.remove();
  if (!sticky) setTimeout(() => note.remove(), 8000);
}

/** A button that calls the API, says what happened (`done` gives a message, or
 * {text, sticky} for one that stays until dismissed), and refreshes the lists. */
function action(label, kind, method, path, done) {
  return el("button", {
    type: "button",
    class: `action ${kind}`,
    text: label,
    onclick: async (event) => {
      const button = event.currentTarget;
      button.disabled = true;
      try {
        const message = done(await api(method, path));
        await refresh();  // the lists show the change before the message says it is done
        if (typeof message === "string") notify(message);
        else if (message) notify(message.text, "ok", message.sticky);
      } catch (error) {
        if (!sessionEnded(error)) notify(`That did not work: ${error.message}.`, "error");
        refresh();
      } finally {
        button.disabled = false;
      }
    },
  });
}

// -- alerts ----------------------------------------------------------------------------

const SEVERITY_KIND = { critical: "bad", warning: "warn" };
const STATUS_ORDER = { open: 0, acknowledged: 1, resolved: 2 };

/** What an alert means for someone who is not a SIP expert, and what to do about it. */
function advice(alert) {
  const ext = alert.extension ? `extension ${alert.extension}` : "the extension";
  if (alert.status === "resolved") return "Resolved: nothing left to do.";
  if (alert.rule === "extension-locked") {
    return `Someone is guessing the SIP password of ${ext} from many addresses. It is locked: ` +
      "even the right password is refused from networks it never registered from, while its " +
      "own phones keep working. Give it a new SIP password (Extensions, below) and enter " +
      "that in the phone: the lock lifts then.";
  }
  if (alert.rule.startsWith("firewall-")) {
    return "The SIP firewall blocked this address by itself: nothing to do. If the address is " +
      "your own office or your SIP provider, remove the block below and add its network to " +
      "firewall.allow.";
  }
  const suspended = /suspended/i.test(alert.summary)
    ? ` ${ext[0].toUpperCase()}${ext.slice(1)} is suspended: it cannot make costly calls. ` +
      "Resume it only after giving it a new SIP password (and entering that in the phone), " +
      "or the fraud can start again."
    : "";
  if (alert.rule.startsWith("report-only:")) {
    const rule = alert.rule.slice("report-only:".length);
    return `Nothing was stopped: the ${rule} rule only reports for this tenant (it is new and ` +
      "still learning, or the rule is set to report-only). The reasons say what it would have " +
      "refused. If that was real traffic, nothing needs doing; if it should have been " +
      "refused, enforce the rule.";
  }
  if (alert.rule === "destination" || alert.rule === "forwarding-destination") {
    return "A call to a number your policy does not allow was stopped. If nobody at your site " +
      `made it, the SIP password of ${ext} is probably known to someone else: give it a new ` +
      "one. If the call was wanted, allow that country or number in the tenant's policy." + suspended;
  }
  if (alert.rule === "spend-cap" || alert.rule === "limit") {
    return `${ext[0].toUpperCase()}${ext.slice(1)} reached a call or spending limit, so more ` +
      "calls were stopped. Ask its user whether the calls were expected; if not, give it a " +
      "new SIP password." + suspended;
  }
  if (alert.rule === "anomaly" || alert.rule === "recon") {
    return `The calls of ${ext} look unusual compared with its normal use. Ask its user; if ` +
      "they did not make them, give the extension a new SIP password." + suspended;
  }
  if (alert.severity === "critical") {
    return "This may be toll fraud. Check the calls of " + ext + " under Recent calls and ask " +
      "its user; if they did not make them, give it a new SIP password." + suspended;
  }
  return "Read the reasons, check with the extension's user, then acknowledge." + suspended;
}

function alertStatus(alert) {
  if (alert.status === "open") return badge("Open", "bad");
  if (alert.status === "acknowledged") {
    return el("span", {}, badge("Acknowledged", "warn"), small(` by ${alert.acked_by || "?"}`));
  }
  return el("span", {}, badge("Resolved", "good"), small(` by ${alert.resolved_by || "?"}`));
}

function alertActions(alert) {
  if (!canAct()) return "";
  const base = `/api/v1/alerts/${alert.id}`;
  const reportOnly = alert.rule.startsWith("report-only:") && alert.status !== "resolved";
  const rule = alert.rule.slice("report-only:".length);
  return el("div", { class: "buttons" },
    reportOnly
      ? action("Enforce this rule", "secondary", "POST",
        `/api/v1/tenants/${encodeURIComponent(alert.tenant)}/policy/enforce/${rule}`,
        () => `The ${rule} rule now refuses for tenant ${alert.tenant}.`)
      : null,
    alert.status === "open"
      ? action("Acknowledge", "secondary", "POST", `${base}/ack`,
        () => `Alert ${alert.id} acknowledged.`)
      : null,
    alert.status !== "resolved"
      ? action("Resolve", "primary", "POST", `${base}/resolve`,
        () => `Alert ${alert.id} resolved.`)
      : null);
}

function renderAlerts(alerts) {
  const rows = [...alerts].sort((a, b) =>
    STATUS_ORDER[a.status] - STATUS_ORDER[b.status] || b.last_at - a.last_at).slice(0, 100);
  show("alerts", table([
    ["Severity", (a) => a.rule.startsWith("report-only:")
      ? badge("would have refused", "info")
      : badge(a.severity, SEVERITY_KIND[a.severity] || "info")],
    ["When", (a) => el("span", {}, when(a.last_at), a.count > 1 ? small(` · ${a.count} times`) : null)],
    ["Where", (a) => [a.tenant, a.extension ? ` / ${a.extension}` : ""].join("")],
    ["What happened", (a) => el("div", {},
      el("p", { class: "summary", text: a.summary }),
      a.reasons.length
        ? el("ul", { class: "reasons" }, a.reasons.map((r) => el("li", { text: r })))
        : null,
      el("p", { class: "advice", text: advice(a) }))],
    ["Status", alertStatus],
    ["", alertActions],
  ], rows, "No alerts. The fraud guard has not seen anything worrying.",
  (a) => ({ "data-alert-id": a.id, class: `status-${a.status}` })));
}

// -- calls, extensions, call records, bans -------------------------------------------------

function renderCalls(calls) {
  show("calls", table([
    ["From", (c) => c.caller || ""],
    ["To", (c) => c.callee || ""],
    ["Tenant", (c) => c.tenant],
    ["State", (c) => badge(c.state || "?", c.state === "answered" ? "good" : "info")],
    ["Time", (c) => duration(c.seconds)],
    ["", (c) => canAct()
      ? action("Hang up", "danger", "DELETE", `/api/v1/calls/${encodeURIComponent(c.call_id)}`,
        () => `The call from ${c.caller || "?"} to ${c.callee || "?"} was ended.`)
      : ""],
  ], calls, "No calls right now.", (c) => ({ "data-call-id": c.call_id })));
}

function extensionActions(ext) {
  if (!canAct() || !(ext.suspended || ext.locked_until)) return "";
  const path = `/api/v1/tenants/${encodeURIComponent(ext.tenant)}/extensions/` +
    encodeURIComponent(ext.number);
  return el("div", { class: "buttons" },
    isAdmin()
      ? action("New SIP password", "secondary", "POST", `${path}/password`, (r) => ({
        text: `New SIP password of extension ${r.number}: ${r.password} (shown only this ` +
          "once). Enter it in the phone" + (ext.suspended ? ", then resume the extension." : "."),
        sticky: true,
      }))
      : null,
    ext.locked_until
      ? action("Unlock", "secondary", "POST", `${path}/unlock`,
        () => `Extension ${ext.number} is no longer locked.`)
      : null,
    ext.suspended ? resumeButton(ext, path) : null);
}

function extensionState(e) {
  const parts = [];
  if (e.suspended) {
    parts.push(badge("Suspended", "bad"), el("small", { class: "block", text: e.suspended }));
  }
  if (e.locked_until) {
    parts.push(badge("Locked", "bad"), el("small", {
      class: "block",
      text: `Password guessing (${e.lock_reason || "many failed logins"}): refused from ` +
        `unknown networks until ${new Date(e.locked_until * 1000).toLocaleString()}. ` +
        "A new SIP password lifts the lock.",
    }));
  }
  if (!parts.length) parts.push(badge(e.enabled ? "Active" : "Disabled", e.enabled ? "good" : "info"));
  return el("div", {}, ...parts);
}

/** Resume; an extension the guard suspended for fraud whose password has not changed is
 * refused by the API (409): say why, and only on an explicit confirm with a reason resume
 * it all the same (recorded in the audit log). */
function resumeButton(ext, path) {
  return el("button", {
    type: "button",
    class: "action primary",
    text: "Resume",
    onclick: async (event) => {
      const button = event.currentTarget;
      button.disabled = true;
      try {
        try {
          await api("POST", `${path}/resume`);
        } catch (error) {
          if (!(error instanceof ApiError) || error.status !== 409 || !/password/.test(error.message)) {
            throw error;
          }
          const reason = window.prompt(
            `${error.message}.\n\nTo resume it anyway, say why (this goes into the audit log):`);
          if (!reason) {
            notify(`Extension ${ext.number} stays suspended: give it a new SIP password first.`,
              "error", true);
            return;
          }
          await api("POST", `${path}/resume`, { force: true, reason });
        }
        await refresh();
        notify(`Extension ${ext.number} can make calls again.`);
      } catch (error) {
        if (!sessionEnded(error)) notify(`That did not work: ${error.message}.`, "error");
        refresh();
      } finally {
        button.disabled = false;
      }
    },
  });
}

function renderRegistrations(rows) {
  show("registrations", table([
    ["Extension", (r) => el("span", {}, el("strong", { text: r.number }),
      r.tenant !== "default" ? small(` ${r.tenant}`) : null)],
    ["From", (r) => el("code", { text: `${r.transport || "?"} ${r.address}` })],
    ["Phone", (r) => r.user_agent || ""],
    ["Since", (r) => r.registered_at ? when(r.registered_at) : ""],
    ["Until", (r) => inFuture(r.expires_in)],
    ["", (r) => canAct()
      ? action("Remove", "danger", "DELETE",
        `/api/v1/tenants/${encodeURIComponent(r.tenant)}/extensions/${encodeURIComponent(r.number)}` +
        `/registrations/${encodeURIComponent(r.id)}`,
        () => `The phone at ${r.address} no longer gets calls for ${r.number}.`)
      : ""],
  ], rows, "No phone is registered.", (r) => ({ "data-registration": r.id })));
}

function renderExtensions(extensions) {
  const trouble = (e) => (e.suspended ? 1 : 0) + (e.locked_until ? 1 : 0);
  const rows = [...extensions].sort((a, b) => trouble(b) - trouble(a));
  show("extensions", table([
    ["Extension", (e) => el("span", {}, el("strong", { text: e.number }), 
      e.display_name ? ` ${e.display_name}` : "")],
    ["Tenant", (e) => e.tenant],
    ["Phones", (e) => e.registrations ? `${e.registrations} registered` : "none registered"],
    ["State", extensionState],
    ["", extensionActions],
  ], rows, "No extensions yet.", (e) => ({ "data-extension": `${e.tenant}/${e.number}` })));
}

function renderCdrs(cdrs) {
  show("cdrs", table([
    ["When", (c) => when(c.start_ts)],
    ["Tenant", (c) => c.tenant],
    ["From", (c) => c.caller],
    ["To", (c) => el("span", {}, c.callee, c.dest_country ? small(` (${c.dest_country})`) : null)],
    ["Result", (c) => el("span", {}, c.disposition,
      c.duration ? small(` · ${duration(c.duration)}`) : null)],
    ["Guard", (c) => c.decision === "allow" ? badge("allowed", "good") : badge(c.decision, "bad")],
    ["Why", (c) => el("span", { class: "why", text: c.reasons })],
  ], cdrs, "No calls recorded yet."));
}

function renderBans(bans) {
  show("bans", table([
    ["Address", (b) => el("code", { text: b.address })],
    ["Why", (b) => b.reason],
    ["Ends in", (b) => inFuture(b.expires_in)],
    ["", (b) => canAct()
      ? action("Remove", "secondary", "DELETE", `/api/v1/bans/${encodeURIComponent(b.address)}`,
        () => `${b.address} is no longer blocked.`)
      : ""],
  ], bans, "No address is blocked.", (b) => ({ "data-address": b.address })));
}

function stat(id, value, sub, kind) {
  const box = $(id);
  box.querySelector(".value").textContent = String(value);
  box.querySelector(".sub").textContent = sub;
  box.className = `stat ${kind}`;
}

// -- refreshing ------------------------------------------------------------------------

async function load() {
  const [calls, alerts, extensions, cdrs, bans, registrations] = await Promise.allSettled([
    api("GET", "/api/v1/calls"),
    api("GET", "/api/v1/alerts?limit=500"),
    api("GET", "/api/v1/extensions"),
    api("GET", "/api/v1/cdrs?limit=50"),
    api("GET", "/api/v1/bans"),
    api("GET", "/api/v1/registrations"),
  ]);
  const all = [calls, alerts, extensions, cdrs, bans, registrations];
  if (all.some((r) => r.status === "rejected" && sessionEnded(r.reason))) return;
  if (state.me === null) return;  // logged out while loading

  if (calls.status === "fulfilled") {
    render("calls", calls.value, renderCalls);
    stat("stat-calls", calls.value.length, "", "neutral");
  } else {
    unavailable("calls", calls.reason.status === 503
      ? "Live calls need the running PBX (pbxwarden serve); only stored data is shown."
      : `Calls cannot be shown: ${calls.reason.message}.`);
    stat("stat-calls", "–", "PBX not running", "neutral");
  }
  if (alerts.status === "fulfilled") {
    render("alerts", alerts.value, renderAlerts);
    const open = alerts.value.filter((a) => a.status !== "resolved");
    const by = (s) => open.filter((a) => a.severity === s).length;
    const parts = ["critical", "warning", "info"].filter((s) => by(s)).map((s) => `${by(s)} ${s}`);
    const acked = open.filter((a) => a.status === "acknowledged").length;
    if (acked) parts.push(`${acked} being handled`);
    stat("stat-alerts", open.length, parts.join(", ") || "all clear",
      by("critical") ? "bad" : open.length ? "warn" : "good");
  } else {
    unavailable("alerts", `Alerts cannot be shown: ${alerts.reason.message}.`);
  }
  if (extensions.status === "fulfilled") {
    render("extensions", extensions.value, renderExtensions);
    const suspended = extensions.value.filter((e) => e.suspended).length;
    stat("stat-suspended", suspended, `of ${extensions.value.length}`, suspended ? "bad" : "good");
  } else {
    unavailable("extensions", `Extensions cannot be shown: ${extensions.reason.message}.`);
  }
  if (registrations.status === "fulfilled") {
    render("registrations", registrations.value, renderRegistrations);
  } else {
    unavailable("registrations", registrations.reason.status === 503
      ? "Registered phones are known to the running PBX (pbxwarden serve) only."
      : `Registered phones cannot be shown: ${registrations.reason.message}.`);
  }
  if (cdrs.status === "fulfilled") render("cdrs", cdrs.value.items, renderCdrs);
  else unavailable("cdrs", `Call records cannot be shown: ${cdrs.reason.message}.`);
  if (bans.status === "fulfilled") {
    render("bans", bans.value, renderBans);
    stat("stat-bans", bans.value.length, "by the SIP firewall", "neutral");
  } else {
    unavailable("bans", bans.reason.status === 403
      ? "The SIP firewall is shared by every tenant: only server-wide accounts see its blocks."
      : `Blocked addresses cannot be shown: ${bans.reason.message}.`);
    stat("stat-bans", "–", "server-wide only", "neutral");
  }
  $("updated").textContent =
    `Updated ${new Date().toLocaleTimeString()}; refreshed every ${REFRESH_MS / 1000} seconds.`;
}

/** Load everything. A refresh asked for while one runs (whose answers may predate a
 * change just made) runs once more after it; the promise settles when that one has. */
function refresh() {
  if (state.me === null) return Promise.resolve();
  if (!state.refreshing) {
    state.refreshing = load().catch((error) => {
      notify(`Could not load the dashboard: ${error.message}.`, "error");
    }).finally(() => {
      state.refreshing = null;
    });
    return state.refreshing;
  }
  if (!state.next) {
    state.next = state.refreshing.then(() => {
      state.next = null;
      return refresh();
    });
  }
  return state.next;
}

// -- live events -----------------------------------------------------------------------

function describe(type, e) {
  const reasons = Array.isArray(e.reasons) ? e.reasons.join("; ") : e.reasons || "";
  switch (type) {
    case "call.start":
      return `Call from ${e.caller || "?"} to ${e.callee || "?"}: ` +
        (e.decision === "allow" ? "allowed" : e.decision) + (reasons ? ` (${reasons})` : "");
    case "call.end":
      return `Call ended: ${e.disposition || "?"}${e.duration ? `, ${duration(e.duration)}` : ""}`;
    case "alert":
      return `${e.severity} alert: ${e.summary}`;
    case "ban":
      return `Blocked ${e.address}: ${e.reason}`;
    case "unban":
      return `No longer blocked: ${e.address}`;
    case "distributed-brute-force":
      return "Password guessing from many addresses" +
        (e.extension ? ` on extension ${e.extension}` : "") + `: ${e.reason}`;
    case "lock":
      return `Extension ${e.extension} locked (password guessing from ` +
        `${(e.sources || []).length} addresses): ${e.reason}`;
    case "unlock":
      return `Extension ${e.extension} unlocked`;
    case "lost":
      return `${e.events} events were skipped (too many at once); the lists below are complete.`;
    default:
      return type;
  }
}

function addEvent(type, raw) {
  let data;
  try {
    data = JSON.parse(raw);
  } catch {
    return;
  }
  const worrying = ["alert", "ban", "distributed-brute-force"].includes(type) ||
    (type === "call.start" && data.decision !== "allow");
  const time = new Date((data.at || Date.now() / 1000) * 1000).toLocaleTimeString();
  const feed = $("feed");
  feed.prepend(el("li", { class: worrying ? "worrying" : null },
    el("time", { text: time }), el("span", { text: describe(type, data) })));
  while (feed.children.length > FEED_MAX) feed.lastChild.remove();
  // the lists follow soon, once for a burst of events
  if (!state.soon) state.soon = setTimeout(() => { state.soon = null; refresh(); }, 500);
}

function startEvents() {
  stopEvents();
  if (typeof EventSource === "undefined") {
    $("events-status").textContent = "This browser cannot show live events.";
    return;
  }
  const source = new EventSource("/api/v1/events");
  state.events = source;
  source.onopen = () => {
    $("events-status").textContent = "Connected: what the PBX does appears here as it happens.";
  };
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      $("events-status").textContent =
        "Live events need the running PBX (pbxwarden serve); the lists still refresh every few seconds.";
      state.eventsRetry = setTimeout(startEvents, EVENTS_RETRY_MS);
    } else {
      $("events-status").textContent = "Connection to the PBX lost; reconnecting…";
    }
  };
  for (const type of EVENT_TYPES) source.addEventListener(type, (m) => addEvent(type, m.data));
}

function stopEvents() {
  clearTimeout(state.eventsRetry);
  if (state.events) state.events.close();
  state.events = null;
}

// -- logging in and out ------------------------------------------------------------------

function showLogin(info) {
  state.me = null;
  drawn = {};
  sessionStorage.removeItem(CSRF_KEY);
  clearInterval(state.timer);
  stopEvents();
  $("dash-view").hidden = true;
  $("notices").replaceChildren();
  $("who").hidden = true;
  $("login-view").hidden = false;
  $("login-error").hidden = true;
  $("login-info").hidden = !info;
  $("login-info").textContent = info || "";
  $("password").value = "";
  $("totp").value = "";
  $("username").focus();
}

function showDashboard(me) {
  state.me = me;
  const role = me.role === "read-only" ? "read-only (can look, not change)" : me.role;
  $("who-text").textContent = `${me.name} · ${role}${me.tenant ? ` · tenant ${me.tenant}` : ""}`;
  $("who").hidden = false;
  $("login-view").hidden = true;
  $("dash-view").hidden = false;
  refresh();
  clearInterval(state.timer);
  state.timer = setInterval(refresh, REFRESH_MS);
  startEvents();
}

async function logIn(event) {
  event.preventDefault();
  const error = $("login-error");
  const button = event.submitter || $("login-form").querySelector("button");
  error.hidden = true;
  button.disabled = true;
  const body = { username: $("username").value.trim(), password: $("password").value };
  if ($("totp").value.trim()) body.totp = $("totp").value.trim();
  try {
    const answer = await api("POST", "/api/v1/auth/login", body);
    sessionStorage.setItem(CSRF_KEY, answer.csrf_token);
    $("password").value = "";
    showDashboard({ name: answer.username, role: answer.role, tenant: answer.tenant });
  } catch (e) {
    let text = `Could not log in: ${e.message}.`;
    if (e.retryAfter) text += ` Wait about ${inFuture(Number(e.retryAfter))} before trying again.`;
    error.textContent = text;
    error.hidden = false;
  } finally {
    button.disabled = false;
  }
}

async function logOut() {
  try {
    await api("POST", "/api/v1/auth/logout");
  } catch {
    // the session may be gone already; this tab forgets it either way
  }
  showLogin("You are logged out.");
}

async function start() {
  $("login-form").addEventListener("submit", logIn);
  $("logout").addEventListener("click", logOut);
  if (sessionStorage.getItem(CSRF_KEY)) {
    try {
      showDashboard(await api("GET", "/api/v1/auth/me"));
      return;
    } catch {
      // expired or logged out: log in again
    }
  }
  showLogin();
}

document.addEventListener("DOMContentLoaded", start);
