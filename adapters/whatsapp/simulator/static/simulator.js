// The WhatsApp simulator page. Everything the chat shows arrives as server-sent events from
// /api/events (the user's own messages included), so two tabs on one number stay in step and a
// reload replays the conversation. User actions go to /api/say, which posts them to the bot's
// webhook as Meta would (an attached file is first kept by /api/upload, then sent by its media
// id). No framework, no external asset; files show from /api/media/ on this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { user: null, contacts: [], events: null, chosenRow: null, sheetFor: null, refresh: null, ttlAt: null, window: null, attached: null };
const MEDIA_KINDS = ["image", "document", "audio", "video", "sticker"];
// The largest file the page attaches (the simulator's limit: /api/upload answers 413 above it).
const MAX_ATTACH = 32 * 1024 * 1024;
// The place "Demo place" fills in.
const DEMO_PLACE = { latitude: -17.8292, longitude: 31.0522, name: "Africa Unity Square", address: "Harare, Zimbabwe" };
// A map pin (inline: the page loads no asset from elsewhere, and needs no emoji font).
const PIN = '<svg viewBox="0 0 24 24" width="22" height="22" aria-hidden="true"><path fill="currentColor" d="M12 2a7 7 0 0 0-7 7c0 5.25 7 13 7 13s7-7.75 7-13a7 7 0 0 0-7-7zm0 9.5a2.5 2.5 0 1 1 0-5 2.5 2.5 0 0 1 0 5z"/></svg>';

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
  let html = format(event.text);
  if (event.media) html = mediaHtml(event.media.kind, { caption: event.text, filename: event.media.filename }, event.media);
  else if (event.location) html = placeHtml(event.location);
  const msg = bubble("user", event.id, html, event.at);
  if (event.media && event.media.kind === "sticker") msg.classList.add("sticker-msg");
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
  } else if (MEDIA_KINDS.includes(p.type)) {
    const msg = bubble("bot", event.id, mediaHtml(p.type, p[p.type] || {}, event.media), event.at);
    if (p.type === "sticker") msg.classList.add("sticker-msg");
  } else if (p.type === "location") {
    bubble("bot", event.id, placeHtml(p.location || {}), event.at);
  } else if (p.type === "reaction") {
    react(p.reaction || {});
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
  } else if (it.type === "location_request_message") {
    const ask = document.createElement("button");
    ask.type = "button";
    ask.className = "list-open location-request";
    ask.innerHTML = `${PIN} Send location`;
    ask.addEventListener("click", () => openAttach(true));
    msg.appendChild(ask);
  }
}

// --- files, places and reactions, as WhatsApp shows them ------------------------------------------
// A file the simulator holds (`held`: sent by its media id) shows from /api/media/: an image or a
// sticker as an image, audio and video as a player, a document as a chip that downloads it. A
// file sent by link shows as a chip; its link is followed only when clicked.
function humanSize(size) {
  if (size < 1024) return `${size} B`;
  if (size < 1024 * 1024) return `${Math.round(size / 1024)} KB`;
  return `${(size / (1024 * 1024)).toFixed(1)} MB`;
}

function mediaHtml(kind, content, held) {
  const caption = content.caption ? `<div class="caption">${format(content.caption)}</div>` : "";
  const src = held ? escapeHtml(held.url) : "";
  if (held && kind === "image") return `<img class="photo" src="${src}" alt="image">${caption}`;
  if (held && kind === "sticker") return `<img class="sticker" src="${src}" alt="sticker">`;
  if (held && kind === "video") return `<video class="player" controls preload="metadata" src="${src}"></video>${caption}`;
  const player = held && kind === "audio" ? `<audio class="player" controls preload="metadata" src="${src}"></audio>` : "";
  return `${player}${fileChip(kind, content, held)}${caption}`;
}

function fileChip(kind, content, held) {
  const linked = content.link ? decodeURIComponent(String(content.link).split(/[?#]/)[0].split("/").pop() || "") : "";
  const name = content.filename || (held && held.filename) || linked || kind;
  const type = name.includes(".") ? name.split(".").pop().toUpperCase() : (held ? held.mime_type : "");
  let about = held ? humanSize(held.size) : content.link ? "by link" : `id ${content.id || "?"}, not held here`;
  if (type) about += ` · ${type}`;
  const label = /^[A-Z0-9]{1,4}$/.test(type) ? type : kind.slice(0, 3).toUpperCase();
  const inner = `<span class="file-icon" data-kind="${escapeHtml(kind)}">${escapeHtml(label)}</span><span class="file-info">`
    + `<span class="file-name">${escapeHtml(name)}</span><span class="file-size">${escapeHtml(about)}</span></span>`;
  const attrs = `class="file-chip" data-kind="${escapeHtml(kind)}"`;
  if (held) return `<a ${attrs} href="${escapeHtml(held.url)}?download=1" download="${escapeHtml(name)}">${inner}</a>`;
  if (/^https?:\/\//.test(content.link || "")) {
    return `<a ${attrs} href="${escapeHtml(content.link)}" target="_blank" rel="noopener noreferrer">${inner}</a>`;
  }
  return `<div ${attrs}>${inner}</div>`;
}

function placeHtml(place) {
  const lat = Number(place.latitude), lon = Number(place.longitude);
  const at = `${lat.toFixed(5)}, ${lon.toFixed(5)}`;
  const map = `https://www.openstreetmap.org/?mlat=${lat}&mlon=${lon}#map=16/${lat}/${lon}`;
  return `<div class="place"><div class="place-pin">${PIN}</div><div class="place-info">`
    + (place.name ? `<div class="place-name">${escapeHtml(place.name)}</div>` : "")
    + (place.address ? `<div class="place-address">${escapeHtml(place.address)}</div>` : "")
    + `<div class="place-coords">${at}</div>`
    + `<a class="place-link" href="${escapeHtml(map)}" target="_blank" rel="noopener noreferrer">Open in a map</a></div></div>`;
}

function react(reaction) {
  // The bot's emoji on the message it reacts to; "" takes it off. A message not in this chat
  // gets a small line instead.
  const emoji = String(reaction.emoji || "");
  const target = document.querySelector(`.msg[data-id="${CSS.escape(String(reaction.message_id || ""))}"] .bubble`);
  if (!target) {
    const n = document.createElement("div");
    n.className = "note reaction-note";
    n.textContent = emoji ? `The bot reacted ${emoji} to a message not in this chat` : "The bot took back a reaction";
    $("chat").appendChild(n);
    return;
  }
  let badge = target.querySelector(".reaction");
  if (!emoji) {
    if (badge) badge.remove();
    return;
  }
  if (!badge) {
    badge = document.createElement("span");
    badge.className = "reaction";
    badge.title = "the bot's reaction";
    target.appendChild(badge);
  }
  badge.textContent = emoji;
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
  } else if (event.kind === "refused" && event.code === 131047) {
    note(`The Graph API refused a free-form ${event.type || ""} message: the 24-hour window is closed (${event.code}).`, true);
  } else if (event.kind === "refused") {
    note(`The Graph API refused a ${event.type || ""} message: ${event.error || "invalid"} (${event.code}).`, true);
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

// --- attaching: a photo, a document or a place ----------------------------------------------------
function openAttach(place) {
  $("attach-error").textContent = "";
  $("attach-backdrop").hidden = false;
  if (place) {
    if (!$("attach-latitude").value.trim()) fillDemoPlace();
    $("attach-latitude").focus();
  }
}

function closeAttach() {
  $("attach-backdrop").hidden = true;
}

function fillDemoPlace() {
  $("attach-latitude").value = String(DEMO_PLACE.latitude);
  $("attach-longitude").value = String(DEMO_PLACE.longitude);
  $("attach-place-name").value = DEMO_PLACE.name;
  $("attach-place-address").value = DEMO_PLACE.address;
}

function chooseFile(kind, input, other) {
  const file = input.files && input.files[0];
  other.value = ""; // one file at a time: the last chosen
  state.attached = file ? { kind, file } : null;
  $("attach-send").disabled = !file;
  $("attach-error").textContent = "";
}

function base64(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

async function sendFile() {
  const chosen = state.attached;
  if (!chosen) return;
  if (chosen.file.size > MAX_ATTACH) {
    $("attach-error").textContent = `A file is at most ${MAX_ATTACH / (1024 * 1024)} MB here.`;
    return;
  }
  $("attach-send").disabled = true;
  const data = base64(await chosen.file.arrayBuffer());
  const kept = await post("/api/upload", { data, mime_type: chosen.file.type || "application/octet-stream", filename: chosen.file.name });
  if (!kept.id) {
    $("attach-error").textContent = kept.error || "The upload failed.";
    $("attach-send").disabled = false;
    return;
  }
  const caption = $("attach-caption").value.trim();
  closeAttach();
  $("attach-photo").value = $("attach-document").value = $("attach-caption").value = "";
  state.attached = null;
  await say({ media: { id: kept.id, kind: chosen.kind, ...(caption ? { caption } : {}) } });
}

async function sendLocation() {
  const [lat, lon] = [$("attach-latitude").value.trim(), $("attach-longitude").value.trim()];
  const latitude = Number(lat), longitude = Number(lon);
  if (!lat || !lon || !(Math.abs(latitude) <= 90) || !(Math.abs(longitude) <= 180)) {
    $("attach-error").textContent = "A place needs a latitude within ±90 and a longitude within ±180.";
    return;
  }
  const place = { latitude, longitude };
  const name = $("attach-place-name").value.trim(), address = $("attach-place-address").value.trim();
  if (name) place.name = name;
  if (address) place.address = address;
  closeAttach();
  await say({ location: place });
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
  $("attach").addEventListener("click", () => openAttach(false));
  $("attach-close").addEventListener("click", closeAttach);
  $("attach-photo").addEventListener("change", () => chooseFile("image", $("attach-photo"), $("attach-document")));
  $("attach-document").addEventListener("change", () => chooseFile("document", $("attach-document"), $("attach-photo")));
  $("attach-send").addEventListener("click", sendFile);
  $("attach-demo").addEventListener("click", fillDemoPlace);
  $("attach-send-location").addEventListener("click", sendLocation);
  $("redeliver").addEventListener("click", () => post("/api/redeliver", { user: state.user }));
  $("window-back").addEventListener("click", moveBack);
  setInterval(showTtl, 1000);
  useNumber(state.contacts[0].number);
}

start();
