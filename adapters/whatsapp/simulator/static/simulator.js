// The WhatsApp simulator page. Everything the chat shows arrives as server-sent events from
// /api/events (the user's own messages included), so two tabs on one number stay in step and a
// reload replays the conversation. User actions go to /api/say, which posts them to the bot's
// webhook as Meta would. No framework, no external asset.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { user: null, contacts: [], events: null, chosenRow: null, sheetFor: null, refresh: null, ttlAt: null, window: null };

// --- WhatsApp formatting: *bold*, _italic_, ~strike~, ```mono```, after HTML escaping ------------
function escapeHtml(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function inline(html, mark, tag) {
  const m = mark.replace(/[*~]/g, "\\$&");
  const re = new RegExp(`(^|[\\s(>])${m}([^\\s${m}](?:[^${m}\\n]*[^\\s${m}])?)${m}(?=$|[\\s).,!?:;<])`, "g");
  return html.replace(re, `$1<${tag}>$2</${tag}>`);
}

function format(text) {
  let html = escapeHtml(text);
  html = html.replace(/```([\s\S]+?)```/g, "<code>$1</code>");
  html = inline(html, "*", "b");
  html = inline(html, "_", "i");
  html = inline(html, "~", "s");
  return html.replace(/\n/g, "<br>");
}

// --- the chat ---------------------------------------------------------------------------------
function clock(seconds) {
  const d = seconds ? new Date(seconds * 1000) : new Date();
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function scrollDown() {
  const chat = $("chat");
  chat.scrollTop = chat.scrollHeight;
}

function bubble(kind, id, html, at) {
  const msg = document.createElement("div");
  msg.className = `msg ${kind}`;
  msg.dataset.id = id || "";
  const b = document.createElement("div");
  b.className = "bubble";
  b.innerHTML = `<div class="text">${html}</div><span class="meta">${clock(at)}</span>`;
  msg.appendChild(b);
  $("chat").appendChild(msg);
  return msg;
}

function note(text, bad) {
  const n = document.createElement("div");
  n.className = bad ? "note bad" : "note";
  n.textContent = text;
  $("chat").appendChild(n);
}

function showUser(event) {
  const msg = bubble("user", event.id, format(event.text), event.at);
  msg.querySelector(".meta").insertAdjacentHTML("beforeend", '<span class="ticks">&#10003;</span>');
}

function showBot(event) {
  const p = event.payload || {};
  if (p.type === "text") {
    bubble("bot", event.id, format((p.text || {}).body), event.at);
  } else if (p.type === "interactive") {
    showInteractive(event, p.interactive || {});
  } else if (p.type === "template") {
    showTemplate(event, p.template || {});
  } else {
    bubble("bot", event.id, `<i>[${escapeHtml(String(p.type))} message]</i>`, event.at);
  }
}

function showInteractive(event, it) {
  let html = "";
  if (it.header && it.header.text) html += `<div class="header">${format(it.header.text)}</div>`;
  html += format((it.body || {}).text);
  if (it.footer && it.footer.text) html += `<div class="footer">${format(it.footer.text)}</div>`;
  const msg = bubble("bot", event.id, html, event.at);
  const action = it.action || {};
  if (it.type === "button") {
    const box = document.createElement("div");
    box.className = "buttons";
    for (const b of action.buttons || []) {
      const reply = b.reply || {};
      const btn = document.createElement("button");
      btn.type = "button";
      btn.dataset.id = reply.id;
      btn.textContent = reply.title;
      btn.addEventListener("click", () => say({ reply: { kind: "button_reply", id: reply.id, title: reply.title } }));
      box.appendChild(btn);
    }
    msg.appendChild(box);
  } else if (it.type === "list") {
    const open = document.createElement("button");
    open.type = "button";
    open.className = "list-open";
    open.innerHTML = `&#9776; ${escapeHtml(action.button || "Choose")}`;
    open.addEventListener("click", () => openSheet(action));
    msg.appendChild(open);
  }
}

// --- message templates ---------------------------------------------------------------------------
// The simulator does not know the approved template's text: it shows the template's name and
// language, its header's parameter and its body's parameters in order, and its quick-reply
// buttons by payload. A tap is sent as WhatsApp sends it: a "button" message with the payload.
function parameterText(prm) {
  if (!prm || typeof prm !== "object") return "?";
  if (prm.type === "text") return String(prm.text ?? "");
  if (prm.type === "currency") return String((prm.currency || {}).fallback_value ?? "");
  if (prm.type === "date_time") return String((prm.date_time || {}).fallback_value ?? "");
  const media = prm[prm.type];
  if (media && typeof media === "object") {
    const where = media.link ? String(media.link).split("/").pop() : media.id ? `id ${media.id}` : "";
    return `[${prm.type}${where ? `: ${where}` : ""}]`;
  }
  return `[${prm.type}]`;
}

function showTemplate(event, tpl) {
  const parts = tpl.components || [];
  const header = parts.find((c) => c.type === "header");
  const body = parts.find((c) => c.type === "body");
  const language = (tpl.language || {}).code || "?";
  let html = '<div class="template-tag">template</div>';
  if (header) {
    const prm = (header.parameters || [])[0] || {};
    html += prm.type === "text"
      ? `<div class="header">${escapeHtml(prm.text)}</div>`
      : `<div class="media">${escapeHtml(parameterText(prm))}</div>`;
  }
  const params = ((body || {}).parameters || []).map(parameterText);
  html += `<div class="template-body"><span class="template-name">${escapeHtml(tpl.name)}</span> (${escapeHtml(language)})`;
  html += params.length ? `: ${params.map(escapeHtml).join(" · ")}</div>` : "</div>";
  const msg = bubble("bot", event.id, html, event.at);
  msg.classList.add("template");
  const quick = parts.filter((c) => c.type === "button" && c.sub_type === "quick_reply");
  if (!quick.length) return;
  const box = document.createElement("div");
  box.className = "buttons";
  for (const c of quick) {
    const payload = String(((c.parameters || [])[0] || {}).payload ?? "");
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "quick-reply";
    btn.dataset.payload = payload;
    btn.title = `quick reply ${c.index}: the approved template gives its label; its payload is ${payload}`;
    btn.textContent = payload;
    btn.addEventListener("click", () => say({ reply: { kind: "button", payload, text: payload, context: event.id } }));
    box.appendChild(btn);
  }
  msg.appendChild(box);
}

function mark(event) {
  const ticks = document.querySelector(`.msg.user[data-id="${CSS.escape(String(event.id))}"] .ticks`);
  if (!ticks) return;
  if (event.kind === "read") ticks.classList.add("read");
  ticks.innerHTML = "&#10003;&#10003;";
}

function showDelivery(event) {
  if (event.status === 200) {
    mark({ id: event.id, kind: "delivered" });
    $("delivery-note").textContent = `webhook answered 200 for ${shortId(event.id)}`;
    return;
  }
  const what = event.status === 0 ? "did not answer" : `answered ${event.status}`;
  note(`The webhook ${what}: Meta would deliver this message again.`, true);
  $("delivery-note").textContent = `webhook ${what} for ${shortId(event.id)}`;
}

function shortId(id) {
  return id && id.length > 14 ? `…${id.slice(-8)}` : id;
}

function onEvent(event) {
  if (event.kind === "user") showUser(event);
  else if (event.kind === "bot") showBot(event);
  else if (event.kind === "read") mark(event);
  else if (event.kind === "delivery") showDelivery(event);
  else if (event.kind === "redelivered") {
    note(`Re-delivered ${shortId(event.id)} (the same wamid)`);
    $("delivery-note").textContent = "";
  } else if (event.kind === "moved") {
    const closed = (event.window || {}).state === "closed";
    note(`Last message moved back ${event.hours} h (v${event.version}): the 24-hour window is ${closed ? "closed" : "still open"}.`);
  } else if (event.kind === "refused") {
    note(`The Graph API refused a free-form ${event.type || ""} message: the 24-hour window is closed (${event.code}).`, true);
  }
  scrollDown();
  if (event.kind !== "user") refreshSoon();
}

// --- the list sheet -----------------------------------------------------------------------------
function openSheet(action) {
  state.chosenRow = null;
  $("sheet-heading").textContent = action.button || "Choose";
  const rows = $("sheet-rows");
  rows.innerHTML = "";
  for (const section of action.sections || []) {
    if (section.title) rows.insertAdjacentHTML("beforeend", `<h4>${escapeHtml(section.title)}</h4>`);
    for (const row of section.rows || []) {
      const el = document.createElement("div");
      el.className = "row-option";
      el.dataset.id = row.id;
      el.innerHTML = `<div><div class="title">${escapeHtml(row.title)}</div>${row.description ? `<div class="desc">${escapeHtml(row.description)}</div>` : ""}</div><span class="radio"></span>`;
      el.addEventListener("click", () => {
        rows.querySelectorAll(".row-option").forEach((r) => r.classList.remove("chosen"));
        el.classList.add("chosen");
        state.chosenRow = { id: row.id, title: row.title };
        $("sheet-send").disabled = false;
      });
      rows.appendChild(el);
    }
  }
  $("sheet-send").disabled = true;
  $("sheet-backdrop").hidden = false;
}

function closeSheet() {
  $("sheet-backdrop").hidden = true;
}

// --- actions ------------------------------------------------------------------------------------
async function post(path, body) {
  const answer = await fetch(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  const data = await answer.json().catch(() => ({}));
  if (!answer.ok && data.error) note(data.error, true);
  return data;
}

function say(what) {
  return post("/api/say", { user: state.user, ...what });
}

// --- the session panel --------------------------------------------------------------------------
function refreshSoon() {
  clearTimeout(state.refresh);
  state.refresh = setTimeout(refreshSession, 120);
}

function where(stage, step) {
  return step ? `${stage}.${step}` : stage;
}

async function refreshSession() {
  const user = state.user;
  const answer = await fetch(`/api/session?user=${encodeURIComponent(user)}`);
  if (!answer.ok || user !== state.user) return;
  const { session, history, window: win } = await answer.json();
  if (user !== state.user) return; // the number changed while this was on its way
  const s = session || {};
  $("session-stage").textContent = s.stage || "-";
  $("session-step").textContent = s.step || "-";
  $("session-version").textContent = session ? String(s.version) : "-";
  $("session-flow").textContent = s.flow ? `${s.flow} v${s.flow_version}` : "-";
  $("session-valid").textContent = session ? (s.valid ? "yes" : `no: ${s.problem && s.problem.reason}`) : "-";
  const auth = s.auth;
  $("session-token").textContent = auth
    ? `<hidden> sub ${auth.subject}, ${auth.expired ? "expired" : `expires in ${Math.round(auth.expires_in)} s`}`
    : "none";
  $("session-data").textContent = session
    ? Object.entries(s.data || {}).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join("\n") || "{}"
    : "-";
  state.ttlAt = session && s.ttl != null ? Date.now() / 1000 + s.ttl : null;
  showTtl();
  showWindow(win);
  const list = $("session-history");
  list.innerHTML = "";
  for (const h of history || []) {
    const li = document.createElement("li");
    li.textContent = `v${h.version} ${where(h.from_stage, h.from_step)} → ${where(h.to_stage, h.to_step)} (${h.event || "stay"}) ${clock(h.at)}`;
    list.appendChild(li);
  }
  document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
}

function showTtl() {
  $("session-ttl").textContent = state.ttlAt == null ? "-" : `${Math.max(0, Math.round(state.ttlAt - Date.now() / 1000))} s`;
  showWindowTime();
}

// --- the 24-hour window: open (time left), closed (since when) or unknown -------------------------
function span(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
}

function when(seconds) {
  const d = new Date(seconds * 1000);
  const today = d.toDateString() === new Date().toDateString();
  return today ? clock(seconds) : d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

function showWindow(w) {
  // Seconds are the server's (the engine's clock); the page only counts them down.
  const seen = Date.now() / 1000;
  state.window = w ? { ...w, seen } : null;
  const dd = $("session-window");
  dd.dataset.state = w ? w.state : "";
  $("window-back").disabled = !w || w.state === "unknown";
  showWindowTime();
}

function showWindowTime() {
  const w = state.window;
  const dd = $("session-window");
  if (!w) { dd.textContent = "-"; return; }
  const passed = Date.now() / 1000 - w.seen;
  const refusing = w.refusing ? "; the fake Graph API refuses free-form messages" : "";
  if (w.state === "open") {
    const left = w.left - passed;
    dd.textContent = left > 0 ? `open: ${span(left)} left` : "closed just now (refresh)";
  } else if (w.state === "closed") {
    dd.textContent = `closed since ${when(w.closed_at)} (${span(w.closed_for + passed)} ago)${refusing}`;
  } else {
    dd.textContent = "unknown: no message of the user's recorded";
  }
}

async function moveBack() {
  const answer = await post("/api/move-back", { user: state.user });
  if (answer && answer.window) showWindow(answer.window);
}

// --- the phone number ---------------------------------------------------------------------------
function useNumber(number) {
  state.user = number;
  const known = state.contacts.find((c) => c.number === number);
  $("chat").innerHTML = "";
  $("delivery-note").textContent = "";
  $("bot-status").textContent = `you are ${known ? known.name : "+" + number} (+${number})`;
  if (state.events) state.events.close();
  state.events = new EventSource(`/api/events?user=${encodeURIComponent(number)}`);
  // Each connect replays the whole chat, so a reconnect starts from an empty one.
  state.events.onopen = () => { $("chat").innerHTML = ""; };
  state.events.onmessage = (m) => onEvent(JSON.parse(m.data));
  refreshSession();
  $("composer-text").focus();
}

function fillContacts() {
  const select = $("contact");
  for (const c of state.contacts) {
    const opt = document.createElement("option");
    opt.value = c.number;
    opt.textContent = `${c.name} (+${c.number})${c.note ? ` - ${c.note}` : ""}`;
    select.appendChild(opt);
  }
  select.insertAdjacentHTML("beforeend", '<option value="other">Another number…</option>');
  select.addEventListener("change", () => {
    const other = select.value === "other";
    $("other-row").hidden = !other;
    if (!other) useNumber(select.value);
  });
  $("other-use").addEventListener("click", () => {
    const number = $("other-number").value.replace(/[\s+()-]/g, "");
    if (/^[1-9][0-9]{5,14}$/.test(number)) useNumber(number);
    else note("A number is 6 to 15 digits in international form, such as 263771234567.", true);
  });
}

async function start() {
  const config = await (await fetch("/api/config")).json();
  state.contacts = config.contacts;
  config.title = (config.title || "Bot").replace(/^./, (c) => c.toUpperCase());
  $("bot-name").textContent = config.title;
  $("bot-avatar").textContent = (config.title || "B").slice(0, 1).toUpperCase();
  document.title = `${config.title} - WhatsApp simulator`;
  fillContacts();
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("composer-text");
    const text = input.value;
    if (!text.trim()) return;
    input.value = "";
    say({ text });
  });
  $("sheet-close").addEventListener("click", closeSheet);
  $("sheet-send").addEventListener("click", () => {
    if (!state.chosenRow) return;
    closeSheet();
    say({ reply: { kind: "list_reply", ...state.chosenRow } });
  });
  $("redeliver").addEventListener("click", () => post("/api/redeliver", { user: state.user }));
  $("window-back").addEventListener("click", moveBack);
  setInterval(showTtl, 1000);
  useNumber(state.contacts[0].number);
}

start();
