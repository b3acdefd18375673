// Sluice console: one page, a view per path under /console/. Everything it shows comes from
// the gateway's /api (the same role-checked API the CLI uses), with the browser's sign-in
// cookie; requests that change something carry the CSRF token, kept in memory only.
"use strict";

const state = { me: null, whoami: null, csrf: null, leave: [] };

// ---- Talking to the gateway ----------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = {};
  if (method !== "GET") headers["X-Sluice-CSRF"] = state.csrf || "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) {
    let message = text;
    try { message = JSON.parse(text).error || text; } catch (_) { /* plain text */ }
    if (response.status === 401 && state.me) { state.me = null; route(); }
    throw new ApiError(response.status, message);
  }
  return text;
}

const getJson = async (path) => JSON.parse(await api("GET", path));
const postJson = async (path, body) => JSON.parse(await api("POST", path, body));

// JSON lines (a session's events) as objects.
const lines = (text) => text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));

// ---- Building the page (text only: nothing recorded is ever parsed as HTML) -----------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const main = () => document.getElementById("main");
function show(...children) {
  for (const leave of state.leave.splice(0)) leave();
  main().replaceChildren(...children);
}
const failure = (e) => h("p", { class: "error", role: "alert" }, e.message || String(e));
const badge = (text, kind) => h("span", { class: `badge ${kind || text}` }, text);
const when = (ms) => (ms ? new Date(ms).toLocaleString() : "");
const link = (href, text) => h("a", { href, "data-link": true }, text);
const hex = (s) => new TextDecoder().decode(Uint8Array.from((s || "").match(/../g) || [], (b) => parseInt(b, 16)));
const stripAnsi = (s) => s.replace(/\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*(\x07|\x1b\\)|\x1b[()][0-9A-B]/g, "");

// The roles the signed-in person holds on `connection` (or on any, without one).
function holds(role, connection) {
  const roles = (state.whoami && state.whoami.roles) || {};
  if (connection) return (roles[connection] || []).includes(role);
  return Object.values(roles).some((held) => held.includes(role));
}

// ---- Navigation -----------------------------------------------------------------------------

function go(path) {
  history.pushState(null, "", path);
  route();
}

document.addEventListener("click", (event) => {
  // The console's own views; other links (sign-in at the provider, exports) load for real.
  const a = event.target.closest("a[data-link], #nav a, a.brand");
  if (!a || a.hasAttribute("download") || event.ctrlKey || event.metaKey) return;
  event.preventDefault();
  go(a.getAttribute("href"));
});
window.addEventListener("popstate", () => route());

async function route() {
  if (!state.me) {
    try {
      const me = await getJson("/console/me");
      if (!me.signed_in) return signIn(null);
      state.me = me;
      state.csrf = me.csrf;
      state.whoami = await getJson("/api/whoami");
    } catch (e) {
      state.me = null;
      return signIn(e.status === 401 ? null : e);
    }
  }
  chrome();
  const path = location.pathname.replace(/^\/console\/?/, "");
  const [view, id] = path.split("/").map(decodeURIComponent);
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("current", a.dataset.view === (view || "sessions"));
  }
  const views = { sessions: sessionsView, live: liveView, reviews: reviewsView,
    connections: connectionsView, sinks: sinksView, record: recordView };
  try {
    if (view === "sessions" && id) await sessionView(id);
    else if (view === "live" && id) await watchView(id);
    else await (views[view] || sessionsView)();
  } catch (e) {
    show(failure(e));
  }
}

function chrome() {
  const nav = document.getElementById("nav");
  nav.hidden = !state.me;
  for (const a of nav.querySelectorAll("a[data-needs]")) a.hidden = !holds(a.dataset.needs);
  document.getElementById("who").textContent = state.me ? (state.me.name || state.me.subject) : "";
  document.getElementById("sign-out").hidden = !state.me;
}

document.getElementById("sign-out").addEventListener("click", async () => {
  try { await api("POST", "/console/sign-out"); } catch (_) { /* signed out anyway */ }
  state.me = null; state.csrf = null; state.whoami = null;
  go("/console/");
});

// ---- Sign-in ----------------------------------------------------------------------------------

async function signIn(problem) {
  chrome();
  let oidc = null;
  try { oidc = (await getJson("/api/auth")).oidc; } catch (_) { /* token sign-in still works */ }
  const message = h("p", { class: "error", role: "alert" }, problem ? problem.message : "");
  const token = h("textarea", { id: "token", name: "token", autocomplete: "off", spellcheck: "false" });
  const form = h("form", { class: "stacked", id: "token-sign-in" },
    h("label", {}, "Token (a development or service token)", token),
    h("button", { class: "primary", type: "submit" }, "Sign in with a token"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await postJson("/console/sign-in", { token: token.value });
      token.value = "";
      await route();
    } catch (e) {
      message.textContent = e.message;
    }
  });
  show(h("section", { class: "signin" },
    h("h1", {}, "Sign in to Sluice"),
    oidc ? h("p", {}, h("a", { id: "oidc-sign-in", href: "/console/oidc/start" }, `Sign in at ${oidc.issuer}`)) : null,
    form, message));
}

// ---- Sessions -----------------------------------------------------------------------------------

const PAGE = 25;

async function sessionsView() {
  const params = new URLSearchParams(location.search);
  const field = (name, label, type) => h("label", {}, label,
    h("input", { name, type: type || "text", value: params.get(name) || "" }));
  const status = h("select", { name: "status" },
    ["", "live", "ended", "refused", "held"].map((s) =>
      h("option", { value: s, selected: params.get("status") === s }, s || "any")));
  const filters = h("form", { class: "filters", id: "session-filters" },
    field("user", "User"), field("connection", "Connection"),
    field("since", "From", "datetime-local"), field("until", "To", "datetime-local"),
    h("label", {}, "Status", status), field("text", "Text in the recording"),
    h("button", { class: "primary", type: "submit" }, "Filter"));
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [key, value] of new FormData(filters)) if (value) next.set(key, value);
    go(`/console/sessions?${next}`);
  });
  const query = new URLSearchParams();
  for (const key of ["user", "connection", "status", "text"]) if (params.get(key)) query.set(key, params.get(key));
  for (const key of ["since", "until"]) if (params.get(key)) query.set(key, String(new Date(params.get(key)).getTime()));
  const offset = Number(params.get("offset") || 0);
  query.set("offset", String(offset));
  query.set("limit", String(PAGE));
  show(h("h1", {}, "Sessions"), filters, h("p", { class: "quiet" }, "Searching…"));
  const page = await getJson(`/api/sessions/search?${query}`);
  const rows = page.sessions.map((s) => h("tr", { "data-session": s.id },
    h("td", {}, link(`/console/sessions/${encodeURIComponent(s.id)}`, s.id)),
    h("td", {}, s.subject), h("td", {}, s.connection), h("td", {}, when(s.started_ms)),
    h("td", {}, s.ended_ms ? `${((s.ended_ms - s.started_ms) / 1000).toFixed(1)} s` : ""),
    h("td", {}, badge(s.status)),
    h("td", { class: "code" }, s.first_input || "")));
  const pageLink = (to, text) => {
    const next = new URLSearchParams(params);
    next.set("offset", String(to));
    return link(`/console/sessions?${next}`, text);
  };
  show(h("h1", {}, "Sessions"), filters,
    rows.length ? h("table", { id: "sessions" },
      h("thead", {}, h("tr", {}, ["Session", "User", "Connection", "Started", "Length", "Status", "First input"].map((t) => h("th", {}, t)))),
      h("tbody", {}, rows)) : h("p", { class: "quiet" }, "No sessions match."),
    h("div", { class: "pager" },
      offset > 0 ? pageLink(Math.max(0, offset - PAGE), "← Newer") : null,
      h("span", { class: "quiet" }, `${page.total ? offset + 1 : 0}–${offset + rows.length} of ${page.total}`),
      offset + PAGE < page.total ? pageLink(offset + PAGE, "Older →") : null));
}

// A frame's verdict, from its recorded meta.
function verdict(e, reviews) {
  const m = e.meta || {};
  if (m.outcome === "deny") return { text: `refused: ${m.reason || ""}`, kind: "refused" };
  if (m.outcome === "hold") return { text: `held: ${m.reason || ""}`, kind: "held" };
  const replaced = (m.calls || []).some((c) => String(c[1]).startsWith("replace"));
  const review = reviews.get(e.index);
  if (review) return { text: review, kind: "approved" };
  return replaced ? { text: "masked", kind: "masked" } : { text: "passed", kind: "pass" };
}

async function sessionView(id) {
  show(h("p", { class: "quiet" }, "Loading…"));
  const events = lines(await api("GET", `/api/sessions/${encodeURIComponent(id)}/events?form=console`));
  const open = events.find((e) => e.kind === "session-open") || { meta: {} };
  const close = events.find((e) => e.kind === "session-close");
  const m = open.meta;
  // Who approved a held input: the review events just before the frame they released.
  const reviews = new Map();
  let lastReview = null;
  for (const e of events) {
    if (e.kind === "review") lastReview = e.meta;
    else if (e.kind === "frame" && e.meta.dir === "in" && lastReview) {
      if (lastReview.status === "approved") reviews.set(e.index, `approved by ${lastReview.by || "?"}`);
      lastReview = null;
    }
  }
  const facts = h("dl", { class: "facts", id: "session-facts" },
    h("dt", {}, "Who"), h("dd", {}, `${m.name || m.subject || "?"} (${m.subject || "?"})${(m.groups || []).length ? ", groups " + m.groups.join(", ") : ""}`),
    h("dt", {}, "From"), h("dd", {}, m.client || ""),
    h("dt", {}, "When"), h("dd", {}, `${when(open.time_ms)} – ${close ? when(close.time_ms) : "live"}`),
    h("dt", {}, "Connection"), h("dd", {}, `${m.connection || ""} (${m.protocol || ""}${m.mode ? ", " + m.mode : ""})`),
    h("dt", {}, "Ended"), h("dd", {}, close ? `exit ${close.meta.exit_status ?? "-"}${close.meta.reason ? ": " + close.meta.reason : ""}` : "still live"),
    h("dt", {}, "Plugins"), h("dd", { class: "code" }, (m.plugins || []).map((p) => `${p.name} sha256:${p.sha256}`).join("\n") || "none"),
    h("dt", {}, "Policy"), h("dd", { class: "code" }, (m.policy || []).map((p) => `${p.file} sha256:${p.sha256}`).join("\n")));
  const base = `/api/sessions/${encodeURIComponent(id)}/events`;
  const exports = h("p", { class: "actions" },
    h("a", { href: `${base}?form=asciicast`, download: `${id}.cast` }, "Export asciicast"),
    h("a", { href: `${base}?form=export-jsonl`, download: `${id}.jsonl` }, "Export JSON lines"));
  const parts = [h("h1", {}, `Session ${id}`), facts, exports];
  if (m.protocol === "exec" || m.mode) {
    const player = h("div", { class: "player", id: "player" });
    parts.push(h("h2", {}, "Replay"), player);
    setTimeout(() => mountPlayer(player, `/api/sessions/${encodeURIComponent(id)}/replay`, m), 0);
  }
  parts.push(h("h2", {}, "Transcript"), transcript(events, reviews));
  parts.push(h("h2", {}, "Record"), verifyLine(events));
  show(...parts);
}

// The player's own segmented driver: it loads the replay's index, then only the segment it
// plays or seeks into (each opens on a keyframe the gateway made) and the next one ahead, so
// a long session starts and seeks at once and is never loaded whole.
function mountPlayer(el, url, meta) {
  if (!window.AsciinemaPlayer) { el.append(failure(new Error("the player did not load"))); return; }
  const player = window.AsciinemaPlayer.create({ url, format: "segmented" }, el, {
    cols: meta.cols || 80, rows: meta.rows || 24, fit: "width", controls: true, preload: true,
  });
  state.player = player;
  state.leave.push(() => { try { player.dispose(); } catch (_) { /* gone */ } state.player = null; });
}

// Inputs (typed lines, scripts, statements) and outputs, each with its time and verdict; SQL
// results as tables.
function transcript(events, reviews) {
  const start = events.length ? events[0].time_ms : 0;
  const rows = [];
  let output = null;
  const t = (e) => `+${((e.time_ms - start) / 1000).toFixed(3)} s`;
  for (const e of events) {
    const m = e.meta || {};
    if (e.kind === "review") {
      output = null;
      const by = m.by ? ` by ${m.by}` : "";
      const why = m.decision_reason || "";
      rows.push(h("tr", { class: "review" }, h("td", {}, t(e)), h("td", { class: "dir" }, "review"),
        h("td", { class: "code" }, `review ${m.review} ${m.status}${by}${m.required > 1 ? ` (${m.approvals} of ${m.required})` : ""}${why ? ": " + why : ""}`),
        h("td", {}, badge(m.status))));
      continue;
    }
    if (e.kind !== "frame") continue;
    if (m.dir === "in") {
      if (m.content === "bytes") continue; // keystrokes: their line follows, and the screen shows them
      output = null;
      const v = verdict(e, reviews);
      rows.push(h("tr", { class: "in" }, h("td", {}, t(e)), h("td", { class: "dir" }, m.content === "statement" ? "sent" : "typed"),
        h("td", { class: "code" }, hex(e.payload_hex)), h("td", {}, badge(v.text, v.kind))));
    } else if (m.content === "rows") {
      output = null;
      rows.push(h("tr", { class: "out" }, h("td", {}, t(e)), h("td", { class: "dir" }, "result"),
        h("td", {}, resultTable(e)), h("td", {}, badge(`${m.count} row${m.count === 1 ? "" : "s"}`, "pass"))));
    } else {
      const v = verdict(e, reviews);
      const text = stripAnsi(hex(e.payload_hex));
      if (output && v.kind === "pass") { output.textContent += text; continue; }
      const cell = h("td", { class: "code" }, text);
      rows.push(h("tr", { class: "out" }, h("td", {}, t(e)), h("td", { class: "dir" }, "output"), cell, h("td", {}, badge(v.text, v.kind))));
      output = v.kind === "pass" ? cell : null;
    }
  }
  if (!rows.length) return h("p", { class: "quiet" }, "Nothing was sent or shown.");
  return h("table", { class: "transcript", id: "transcript" },
    h("thead", {}, h("tr", {}, ["Time", "", "Content", "Verdict"].map((x) => h("th", {}, x)))), h("tbody", {}, rows));
}

function resultTable(e) {
  const cells = hex(e.payload_hex).split("\n").filter((l) => l).map((l) => { try { return JSON.parse(l); } catch (_) { return [l]; } });
  const show = (c) => (c === null ? "NULL" : typeof c === "object" ? JSON.stringify(c) : String(c));
  return h("table", { class: "result" },
    e.meta.columns ? h("thead", {}, h("tr", {}, e.meta.columns.map((c) => h("th", {}, c)))) : null,
    h("tbody", {}, cells.map((row) => h("tr", {}, (Array.isArray(row) ? row : [row]).map((c) => h("td", { class: "code" }, show(c)))))));
}

// Whether the record (and with it this session's entries) verifies; auditors only.
function verifyLine(events) {
  const out = h("p", { id: "verify-status", class: "quiet" });
  if (!holds("audit")) { out.textContent = "Verifying the record needs the audit role."; return out; }
  out.textContent = "Verifying…";
  const first = events.length ? events[0].index : 0;
  const last = events.length ? events[events.length - 1].index : 0;
  getJson("/api/verify").then((report) => {
    out.className = report.holds ? "" : "error";
    out.textContent = report.holds
      ? `Verified: this session's entries ${first}–${last} are part of a record of ${report.entries} entries that holds (signed head at entry ${report.head ? report.head.index : "?"}).`
      : `The record does NOT verify: ${report.problem}`;
  }, (e) => { out.className = "error"; out.textContent = e.message; });
  return out;
}

// ---- Live ---------------------------------------------------------------------------------------

async function liveView() {
  const live = await getJson("/api/sessions?active=1");
  const rows = live.map((s) => h("tr", { "data-session": s.id },
    h("td", {}, link(`/console/live/${encodeURIComponent(s.id)}`, s.id)), h("td", {}, s.subject),
    h("td", {}, s.connection), h("td", {}, when(s.started_ms)),
    h("td", {}, holds("admin", s.connection) ? endButton(s.id) : null)));
  show(h("h1", {}, "Live sessions"),
    rows.length ? h("table", { id: "live" }, h("thead", {}, h("tr", {}, ["Session", "User", "Connection", "Started", ""].map((t) => h("th", {}, t)))), h("tbody", {}, rows))
      : h("p", { class: "quiet" }, "No session is live."));
}

function endButton(id) {
  return h("button", { class: "danger", type: "button", "data-end": id, onclick: async (event) => {
    const button = event.currentTarget;
    button.disabled = true;
    try {
      await postJson(`/api/sessions/${encodeURIComponent(id)}/kill`);
      button.replaceWith(badge("ended", "refused"));
    } catch (e) { button.disabled = false; button.after(failure(e)); }
  } }, "End session");
}

async function watchView(id) {
  const screen = h("pre", { class: "live", id: "live-output" });
  const status = h("p", { class: "quiet", id: "live-status" }, "Following…");
  const live = (await getJson("/api/sessions?active=1")).find((s) => s.id === id);
  show(h("h1", {}, `Watching ${id}`), status,
    live && holds("admin", live.connection) ? h("p", {}, endButton(id)) : null, screen);
  const source = new EventSource(`/api/sessions/${encodeURIComponent(id)}/follow`);
  state.leave.push(() => source.close());
  source.addEventListener("entry", (message) => {
    const e = JSON.parse(message.data);
    if (e.kind === "frame" && e.meta.dir === "out" && e.meta.outcome === "pass") {
      screen.textContent += stripAnsi(hex(e.payload_hex));
      screen.scrollTop = screen.scrollHeight;
    } else if (e.kind === "session-close") {
      status.textContent = `Ended: ${e.meta.reason || "exit " + (e.meta.exit_status ?? "-")}`;
    }
  });
  source.addEventListener("end", () => source.close());
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) status.textContent += " (stream closed)";
  });
}

// ---- Reviews ------------------------------------------------------------------------------------

async function reviewsView() {
  const body = h("tbody", {});
  const table = h("table", { id: "reviews" },
    h("thead", {}, h("tr", {}, ["Review", "Status", "Kind", "Connection", "Requester", "What", "Why", "Approvals", "Decided", ""].map((t) => h("th", {}, t)))), body);
  const rows = new Map();
  const put = (r) => {
    const seen = JSON.stringify(r);
    const old = rows.get(r.id);
    if (old && old.seen === seen) return; // the stream repeats what the list showed
    const row = reviewRow(r);
    if (old) old.row.replaceWith(row); else body.prepend(row);
    rows.set(r.id, { row, seen });
  };
  const all = await getJson("/api/reviews");
  for (const r of all.slice().reverse()) put(r);
  const status = h("p", { class: "quiet", id: "reviews-status" }, "Live: new requests and decisions appear as they happen.");
  show(h("h1", {}, "Reviews"), status, table);
  const source = new EventSource("/api/reviews/events");
  state.leave.push(() => source.close());
  source.addEventListener("review", (message) => put(JSON.parse(message.data)));
}

function reviewRow(r) {
  const decided = r.rejection ? `rejected by ${r.rejection.by}${r.rejection.reason ? ": " + r.rejection.reason : ""}`
    : r.approvals.map((v) => `approved by ${v.by}${v.reason ? ": " + v.reason : ""}`).join("; ");
  const mayDecide = r.status === "pending" && holds("review", r.connection) && r.requester !== state.me.subject;
  let actions = null;
  if (mayDecide) {
    const reason = h("input", { name: "reason", placeholder: "reason", "aria-label": "reason" });
    const decide = (verb) => async (event) => {
      event.currentTarget.disabled = true;
      try {
        const q = reason.value ? `?reason=${encodeURIComponent(reason.value)}` : "";
        await postJson(`/api/reviews/${encodeURIComponent(r.id)}/${verb}${q}`);
      } catch (e) { actions.append(failure(e)); event.target.disabled = false; }
    };
    actions = h("div", { class: "actions" }, reason,
      h("button", { class: "primary", type: "button", "data-approve": r.id, onclick: decide("approve") }, "Approve"),
      h("button", { class: "danger", type: "button", "data-reject": r.id, onclick: decide("reject") }, "Reject"));
  }
  return h("tr", { "data-review": r.id, "data-status": r.status },
    h("td", {}, r.session ? link(`/console/sessions/${encodeURIComponent(r.session)}`, r.id) : r.id),
    h("td", {}, badge(r.status)), h("td", {}, r.kind), h("td", {}, r.connection),
    h("td", {}, r.requester_name || r.requester), h("td", { class: "code" }, r.text), h("td", {}, r.reason),
    h("td", {}, `${r.approvals.length} of ${r.required}`), h("td", {}, decided), h("td", {}, actions));
}

// ---- Connections, sinks, record ----------------------------------------------------------------

async function connectionsView() {
  const list = await getJson("/api/connections");
  const admin = holds("admin");
  const form = admin ? connectionForm() : null;
  const rows = list.map((c) => h("tr", { "data-connection": c.name },
    h("td", {}, c.name), h("td", {}, c.kind), h("td", {}, (c.agents || []).join(", ")),
    h("td", {}, c.listen || ""), h("td", {}, (c.roles || []).join(", ")), h("td", {}, c.source),
    h("td", {}, admin && c.source === "runtime" ? h("div", { class: "actions" },
      h("button", { type: "button", "data-edit": c.name, onclick: () => form.fill(c) }, "Edit"),
      removeButton(c.name)) : null)));
  show(h("h1", {}, "Connections"),
    h("table", { id: "connections" },
      h("thead", {}, h("tr", {}, ["Name", "Kind", "Agent", "Listens", "Your roles", "Defined in", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, rows)),
    ...(form ? [h("h2", {}, "Add or change a connection"), form.element] : []));
}

function removeButton(name) {
  const button = h("button", { class: "danger", type: "button", "data-remove": name }, "Remove");
  button.addEventListener("click", async () => {
    // Two steps: the first click asks, the second removes.
    if (!button.dataset.armed) { button.dataset.armed = "1"; button.textContent = "Really remove"; return; }
    button.disabled = true;
    try { await api("DELETE", `/api/connections/${encodeURIComponent(name)}`); await connectionsView(); }
    catch (e) { button.after(failure(e)); button.disabled = false; }
  });
  return button;
}

// The form for a runtime connection: the fields of its kind, as in sluice.toml. Secrets are
// write-only: never filled in from the gateway; left empty on an edit, they are kept.
function connectionForm() {
  const input = (name, label, type) => h("label", { "data-for": name }, label, h("input", { name, type: type || "text", autocomplete: "off" }));
  const kind = h("select", { name: "kind" }, ["exec", "postgres", "tcp"].map((k) => h("option", { value: k }, k)));
  const env = h("textarea", { name: "env", placeholder: "NAME=value, a line each (write-only)", autocomplete: "off" });
  const fields = {
    exec: [input("interactive", "Interactive program (words)"), input("script", "Script program (words)"), h("label", { "data-for": "env" }, "Environment (secret)", env)],
    postgres: [input("listen", "Listen on (host:port)"), input("upstream", "Server (host:port)"), input("database", "Database"), input("user", "User"), input("password", "Password (secret)", "password")],
    tcp: [input("upstream", "Service (host:port)")],
  };
  const name = h("input", { name: "name", autocomplete: "off" });
  const agent = h("input", { name: "agent", autocomplete: "off" });
  const message = h("p", { role: "status", id: "connection-result" });
  const kindFields = h("div", { class: "stacked" });
  const showKind = () => kindFields.replaceChildren(...fields[kind.value]);
  kind.addEventListener("change", showKind);
  showKind();
  let editing = null;
  const element = h("form", { class: "stacked", id: "connection-form" },
    h("label", {}, "Name", name), h("label", {}, "Kind", kind), kindFields,
    h("label", {}, "Agent (optional)", agent),
    h("button", { class: "primary", type: "submit" }, "Save"), message);
  const value = (field) => { const el = element.querySelector(`[name=${field}]`); return el ? el.value.trim() : ""; };
  element.addEventListener("submit", async (event) => {
    event.preventDefault();
    const table = { kind: kind.value };
    const words = (text) => text.split(/\s+/).filter((w) => w);
    if (kind.value === "exec") {
      table.interactive = words(value("interactive"));
      table.script = words(value("script"));
      const vars = value("env").split("\n").map((l) => l.trim()).filter((l) => l.includes("="));
      if (vars.length) table.env = Object.fromEntries(vars.map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));
    } else {
      table.upstream = value("upstream");
      if (kind.value === "postgres") {
        Object.assign(table, { listen: value("listen"), database: value("database"), user: value("user") });
        if (value("password")) table.password = value("password");
      }
    }
    if (agent.value.trim()) table.agent = agent.value.trim();
    try {
      if (editing) await api("PUT", `/api/connections/${encodeURIComponent(editing)}`, { table });
      else await postJson("/api/connections", { name: name.value.trim(), table });
      const saved = editing || name.value.trim();
      await connectionsView();
      document.getElementById("connection-result").textContent = `Saved ${saved}.`;
    } catch (e) {
      message.textContent = e.message;
      message.className = "error";
    }
  });
  return {
    element,
    // An edit: the table as the gateway shows it (never its secrets).
    fill(c) {
      editing = c.name;
      name.value = c.name; name.disabled = true;
      kind.value = c.kind; showKind();
      const t = c.table || {};
      for (const field of ["listen", "upstream", "database", "user"]) {
        const el = element.querySelector(`[name=${field}]`);
        if (el) el.value = t[field] || "";
      }
      for (const field of ["interactive", "script"]) {
        const el = element.querySelector(`[name=${field}]`);
        if (el) el.value = (t[field] || []).join(" ");
      }
      agent.value = Array.isArray(t.agent) ? t.agent.join(" ") : (t.agent || "");
      message.textContent = "Secrets left empty are kept.";
      message.className = "quiet";
    },
  };
}

async function sinksView() {
  const sinks = await getJson("/api/sinks");
  const list = Array.isArray(sinks) ? sinks : Object.entries(sinks).map(([name, s]) => ({ name, ...s }));
  show(h("h1", {}, "Sinks"),
    list.length ? h("table", { id: "sinks" },
      h("thead", {}, h("tr", {}, ["Sink", "State", "Next entry", "Lag", "Last error"].map((t) => h("th", {}, t)))),
      h("tbody", {}, list.map((s) => h("tr", {}, h("td", {}, s.name), h("td", {}, s.state), h("td", {}, s.cursor ?? s.next ?? ""),
        h("td", {}, s.lag ?? ""), h("td", { class: "code" }, s.error || s.last_error || "")))))
      : h("p", { class: "quiet" }, "No sinks: the record stays in the gateway's store."));
}

async function recordView() {
  const out = h("div", { id: "record" });
  const button = h("button", { class: "primary", type: "button", id: "verify" }, "Verify the whole record");
  button.addEventListener("click", async () => {
    button.disabled = true;
    out.replaceChildren(h("p", { class: "quiet" }, "Verifying…"));
    try {
      const r = await getJson("/api/verify");
      out.replaceChildren(
        h("p", { class: r.holds ? "" : "error", id: "verify-result" }, r.holds ? `Record verified: ${r.entries} entries hold.` : `Record does NOT verify: ${r.problem}`),
        r.head ? h("div", {}, h("h2", {}, "Signed head"), h("pre", { class: "code", id: "signed-head" }, JSON.stringify(r.head, null, 2))) : null,
        (r.notes || []).length ? h("ul", {}, r.notes.map((n) => h("li", {}, n))) : null);
    } catch (e) { out.replaceChildren(failure(e)); }
    button.disabled = false;
  });
  show(h("h1", {}, "Record"), h("p", {}, button), out);
}

route();
