// clipsearch's page: search by text or image, browse thumbnails, find similar ones.
// Plain JavaScript, no build step; every request goes to the server that sent this page.
"use strict";

const K_CHOICES = [12, 24, 48, 96, 200];
const DEFAULT_K = 24;

const $ = (selector) => document.querySelector(selector);
const els = {
  form: $("#search-form"),
  q: $("#q"),
  k: $("#k"),
  style: $("#style"),
  from: $("#from"),
  to: $("#to"),
  refine: $("#refine"),
  plus: $("#plus"),
  minus: $("#minus"),
  pick: $("#pick"),
  dups: $("#dups"),
  file: $("#file"),
  shoot: $("#shoot"),
  camera: $("#camera"),
  status: $("#status"),
  grid: $("#results"),
  hint: $("#hint"),
  info: $("#info"),
  drop: $("#drop"),
  viewer: $("#viewer"),
  viewerImg: $("#viewer-img"),
  viewerVideo: $("#viewer-video"),
  viewerPath: $("#viewer-path"),
  viewerMeta: $("#viewer-meta"),
  viewerOpen: $("#viewer-open"),
  prev: $("#viewer-prev"),
  next: $("#viewer-next"),
  similar: $("#find-similar"),
  close: $("#viewer-close"),
};

const state = {
  results: [],
  current: -1, // index in results of the image in the viewer
  last: null, // the last search, to run again when the style or k changes
  maxUpload: 20 * 1024 * 1024,
  searchId: 0, // answers to older searches are dropped
};

// --- talking to the API -------------------------------------------------------------------

async function api(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch {
    throw new Error("the clipsearch server cannot be reached; is `clipsearch serve` running?");
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) throw new Error(problem(response.status, body));
  return body;
}

function problem(status, body) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) {
    return body.detail
      .map((d) => `${(d.loc || []).slice(-1)[0] || "request"}: ${d.msg}`)
      .join("; ");
  }
  return `the server answered ${status}`;
}

function filters() {
  const params = new URLSearchParams();
  params.set("k", els.k.value);
  if (els.style.value) params.append("style", els.style.value);
  if (els.from.value) params.set("after", els.from.value);
  if (els.to.value) params.set("before", shiftDay(els.to.value, 1)); // "To" keeps its whole day
  return params;
}

// A YYYY-MM-DD date moved by some days (no time zone involved: the server reads dates as its
// local days).
function shiftDay(day, days) {
  const d = new Date(`${day}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + days);
  return d.toISOString().slice(0, 10);
}

const DAY = /^\d{4}-\d{2}-\d{2}$/;

function refineTerms(params) {
  const plus = els.plus.value.trim();
  const minus = els.minus.value.trim();
  if (plus) params.append("plus", plus);
  if (minus) params.append("minus", minus);
  return { plus, minus };
}

// --- the searches -------------------------------------------------------------------------

async function searchText({ push = true } = {}) {
  const q = els.q.value.trim();
  const params = filters();
  const { plus, minus } = refineTerms(params);
  if (!q && !plus) {
    setStatus("Type something to search for.");
    els.q.focus();
    return;
  }
  if (q) params.set("q", q);
  state.last = { kind: "text" };
  remember(params, push);
  let label = q ? `“${q}”` : `“${plus}”`;
  if (q && plus) label += ` + “${plus}”`;
  if (minus) label += ` − “${minus}”`;
  await run(api(`api/search?${params}`), `for ${label}`);
}

async function searchSimilar(id, { push = true, label = null } = {}) {
  const params = filters();
  const shown = new URLSearchParams(params);
  shown.set("similar", id);
  const { plus, minus } = refineTerms(shown);
  state.last = { kind: "similar", id, label };
  els.q.value = "";
  remember(shown, push);
  let text = `like ${label || `image ${id}`}`;
  if (plus) text += ` + “${plus}”`;
  if (minus) text += ` − “${minus}”`;
  let request;
  if (plus || minus) {
    // A combined query in which the image is the term @ID.
    const combined = new URLSearchParams(params);
    combined.set("q", `@${id}`);
    refineTerms(combined);
    request = api(`api/search?${combined}`);
  } else {
    request = api(`api/images/${id}/similar?${params}`);
  }
  await run(request, text, { thumb: `api/images/${id}/thumb` });
}

async function searchUpload(file) {
  if (!file) return;
  if (file.size > state.maxUpload) {
    setStatus(`${file.name} is larger than ${state.maxUpload / 1048576} MB; pick a smaller image.`, true);
    return;
  }
  const params = filters();
  refineTerms(params);
  const body = new FormData();
  body.append("image", file, file.name);
  state.last = { kind: "upload", file };
  els.q.value = "";
  if (state.preview) URL.revokeObjectURL(state.preview);
  state.preview = URL.createObjectURL(file);
  await run(api(`api/search/image?${params}`, { method: "POST", body }), `like ${file.name}`, {
    thumb: state.preview,
  });
}

async function showDuplicates({ push = true } = {}) {
  state.last = { kind: "duplicates" };
  els.q.value = "";
  remember(new URLSearchParams({ duplicates: "1" }), push);
  const id = ++state.searchId;
  setStatus("Looking for near-duplicates…");
  els.grid.setAttribute("aria-busy", "true");
  try {
    const data = await api("api/duplicates");
    if (id !== state.searchId) return;
    renderGroups(data.groups);
    const n = data.count;
    let text = n ? `${n} group${n === 1 ? "" : "s"} of near-duplicates` : "No near-duplicates";
    if (n > data.groups.length) text += `, the ${data.groups.length} largest shown`;
    setStatus(`${text}; the image to keep comes first in each group. Nothing is deleted.`);
  } catch (error) {
    if (id !== state.searchId) return;
    setStatus(error.message, true);
  } finally {
    if (id === state.searchId) els.grid.removeAttribute("aria-busy");
  }
}

function again() {
  const last = state.last;
  if (!last) return;
  if (last.kind === "text") searchText({ push: false });
  else if (last.kind === "similar") searchSimilar(last.id, { push: false, label: last.label });
  else if (last.kind === "upload") searchUpload(last.file);
  else if (last.kind === "duplicates") showDuplicates({ push: false });
}

async function run(request, label, { thumb = null } = {}) {
  const id = ++state.searchId;
  setStatus("Searching…");
  els.grid.setAttribute("aria-busy", "true");
  try {
    const data = await request;
    if (id !== state.searchId) return;
    render(data.results);
    const n = data.count;
    const text = n ? `${n} image${n === 1 ? "" : "s"} ${label}` : `No images ${label}`;
    setStatus(text, false, thumb);
  } catch (error) {
    if (id !== state.searchId) return;
    setStatus(error.message, true);
  } finally {
    if (id === state.searchId) els.grid.removeAttribute("aria-busy");
  }
}

function remember(params, push) {
  const url = `?${params}`;
  if (url === location.search) return;
  if (push) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
}

function fromLocation() {
  const params = new URLSearchParams(location.search);
  const k = params.get("k");
  if (k && [...els.k.options].some((o) => o.value === k)) els.k.value = k;
  const style = params.get("style");
  els.style.value = style && [...els.style.options].some((o) => o.value === style) ? style : "";
  const after = params.get("after") || "";
  const before = params.get("before") || "";
  els.from.value = DAY.test(after) ? after : "";
  els.to.value = DAY.test(before) ? shiftDay(before, -1) : "";
  els.q.value = params.get("q") || "";
  els.plus.value = params.get("plus") || "";
  els.minus.value = params.get("minus") || "";
  if (els.plus.value || els.minus.value) els.refine.open = true;
  const similar = params.get("similar");
  if (params.get("duplicates")) showDuplicates({ push: false });
  else if (similar && /^\d+$/.test(similar)) searchSimilar(similar, { push: false });
  else if (els.q.value || els.plus.value) searchText({ push: false });
}

// --- showing results ----------------------------------------------------------------------

function setStatus(text, isError = false, thumb = null) {
  els.status.replaceChildren();
  els.status.classList.toggle("error", isError);
  if (thumb) {
    const img = document.createElement("img");
    img.src = thumb;
    img.alt = "";
    els.status.append(img);
  }
  const span = document.createElement("span");
  span.textContent = text;
  els.status.append(span);
}

function basename(path) {
  return path.split(/[\\/]/).pop();
}

function clock(seconds) {
  // 83.4 -> "1:23", 3725 -> "1:02:05": a time in a video, as players show it
  const s = Math.floor(seconds);
  const two = (n) => String(n).padStart(2, "0");
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h}:${two(m)}:${two(s % 60)}` : `${m}:${two(s % 60)}`;
}

function styleText(hit) {
  return hit.style || "";
}

function card(hit, i, scoreText) {
  const li = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "thumb";
  button.dataset.index = String(i);
  const name = basename(hit.path) + (hit.frame_time != null ? ` @ ${clock(hit.frame_time)}` : "");
  const parts = [name, scoreText];
  if (hit.style) parts.push(`style ${hit.style}`);
  button.setAttribute("aria-label", parts.join(", "));
  button.title = hit.path;

  const frame = document.createElement("span");
  frame.className = "frame";
  const img = document.createElement("img");
  img.src = hit.thumb_url;
  img.alt = name;
  img.loading = "lazy";
  img.decoding = "async";
  frame.append(img);

  const meta = document.createElement("span");
  meta.className = "meta";
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = scoreText.replace(/^score /, "");
  meta.append(score);
  if (hit.frame_time != null) {
    const at = document.createElement("span");
    at.className = "tag";
    at.textContent = `▶ ${clock(hit.frame_time)}`;
    meta.append(at);
  }
  if (hit.style) {
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = styleText(hit);
    meta.append(tag);
  }
  button.append(frame, meta);
  li.append(button);
  return li;
}

function render(results) {
  state.results = results;
  els.hint.hidden = true;
  const items = results.map((hit, i) => card(hit, i, `score ${hit.score.toFixed(3)}`));
  els.grid.replaceChildren(...items);
}

// Groups of near-duplicates: a heading row per group, then its images, the one to keep first.
function renderGroups(groups) {
  state.results = [];
  els.hint.hidden = true;
  const items = [];
  groups.forEach((group, g) => {
    const head = document.createElement("li");
    head.className = "group-head";
    head.textContent = `Group ${g + 1} · ${group.members.length} images · ${group.reason}`;
    items.push(head);
    group.members.forEach((m, j) => {
      const hit = { ...m, score: m.similarity, style: null };
      const label = j === 0 ? "keep" : m.same_content ? "same file" : `similarity ${m.similarity.toFixed(3)}`;
      items.push(card(hit, state.results.length, label));
      state.results.push(hit);
    });
  });
  els.grid.replaceChildren(...items);
}

function thumbs() {
  return [...els.grid.querySelectorAll("button.thumb")];
}

function columns(buttons) {
  const top = buttons[0].getBoundingClientRect().top;
  const n = buttons.findIndex((b) => b.getBoundingClientRect().top > top + 1);
  return n === -1 ? buttons.length : Math.max(1, n);
}

// --- the large view -----------------------------------------------------------------------

function openViewer(i) {
  const hit = state.results[i];
  if (!hit) return;
  state.current = i;
  const video = hit.frame_time != null;
  els.viewerImg.hidden = video;
  els.viewerVideo.hidden = !video;
  if (video) {
    // The file route answers Range requests, so the browser seeks without the whole file.
    els.viewerVideo.poster = hit.thumb_url;
    els.viewerVideo.src = `${hit.image_url}#t=${hit.frame_time}`;
  } else {
    els.viewerVideo.pause();
    els.viewerVideo.removeAttribute("src");
    els.viewerImg.src = hit.thumb_url; // shown at once, replaced by the full image when loaded
    els.viewerImg.alt = basename(hit.path);
    const full = new Image();
    full.onload = () => {
      if (state.current === i && els.viewer.open) els.viewerImg.src = full.src;
    };
    full.src = hit.image_url;
  }
  els.viewerPath.textContent = hit.path + (video ? ` @ ${clock(hit.frame_time)}` : "");
  const meta = [`score ${hit.score.toFixed(3)}`];
  if (hit.style) meta.push(`style ${hit.style}`);
  if (hit.width && hit.height) meta.push(`${hit.width} × ${hit.height}`);
  if (hit.taken) meta.push(`taken ${hit.taken.slice(0, 16).replace("T", " ")}${hit.taken_source === "mtime" ? " (file date)" : ""}`);
  if (hit.camera) meta.push(hit.camera);
  if (hit.lat != null && hit.lon != null) meta.push(`${hit.lat.toFixed(5)}, ${hit.lon.toFixed(5)}`);
  meta.push(`id ${hit.id}`);
  els.viewerMeta.textContent = meta.join(" · ");
  els.viewerOpen.href = hit.image_url;
  els.prev.disabled = i === 0;
  els.next.disabled = i === state.results.length - 1;
  if (!els.viewer.open) {
    els.viewer.showModal();
    els.similar.focus();
  }
}

function closeViewer() {
  if (els.viewer.open) els.viewer.close();
}

els.viewer.addEventListener("close", () => {
  els.viewerVideo.pause();
  const button = thumbs()[state.current];
  if (button) button.focus();
});

els.viewer.addEventListener("keydown", (event) => {
  if (event.key === "ArrowLeft" && state.current > 0) {
    event.preventDefault();
    openViewer(state.current - 1);
  } else if (event.key === "ArrowRight" && state.current < state.results.length - 1) {
    event.preventDefault();
    openViewer(state.current + 1);
  }
});

// A click on the dim backdrop (the dialog element itself, outside its content) closes it.
els.viewer.addEventListener("click", (event) => {
  if (event.target === els.viewer) closeViewer();
});

// A swipe on the large image: to the left shows the next result, to the right the previous.
// Pointer events cover touch and pen; the image's touch-action leaves sideways moves to us.
let swipe = null;
els.viewerImg.addEventListener("pointerdown", (event) => {
  if (event.pointerType === "mouse") return;
  swipe = { x: event.clientX, y: event.clientY, id: event.pointerId };
});
els.viewerImg.addEventListener("pointercancel", () => {
  swipe = null;
});
els.viewerImg.addEventListener("pointerup", (event) => {
  if (!swipe || swipe.id !== event.pointerId) return;
  const dx = event.clientX - swipe.x;
  const dy = event.clientY - swipe.y;
  swipe = null;
  if (Math.abs(dx) < 40 || Math.abs(dx) < 1.5 * Math.abs(dy)) return;
  const i = state.current + (dx < 0 ? 1 : -1);
  if (i >= 0 && i < state.results.length) openViewer(i);
});

els.prev.addEventListener("click", () => openViewer(state.current - 1));
els.next.addEventListener("click", () => openViewer(state.current + 1));
els.close.addEventListener("click", closeViewer);
els.similar.addEventListener("click", async () => {
  const hit = state.results[state.current];
  if (!hit) return;
  state.current = -1;
  closeViewer();
  await searchSimilar(hit.id, { label: basename(hit.path) });
  const first = thumbs()[0];
  if (first) first.focus();
});

// --- events -------------------------------------------------------------------------------

els.form.addEventListener("submit", (event) => {
  event.preventDefault();
  searchText();
});
els.k.addEventListener("change", again);
els.style.addEventListener("change", again);
els.from.addEventListener("change", again);
els.to.addEventListener("change", again);
els.pick.addEventListener("click", () => els.file.click());
els.dups.addEventListener("click", () => showDuplicates());
els.shoot.addEventListener("click", () => els.camera.click());
for (const input of [els.file, els.camera]) {
  input.addEventListener("change", () => {
    if (input.files[0]) searchUpload(input.files[0]);
    input.value = "";
  });
}

els.grid.addEventListener("click", (event) => {
  const button = event.target.closest("button.thumb");
  if (button) openViewer(Number(button.dataset.index));
});

els.grid.addEventListener("keydown", (event) => {
  const buttons = thumbs();
  const i = buttons.indexOf(document.activeElement);
  if (i < 0) return;
  const cols = columns(buttons);
  const step = {
    ArrowRight: 1,
    ArrowLeft: -1,
    ArrowDown: cols,
    ArrowUp: -cols,
    Home: -i,
    End: buttons.length - 1 - i,
  }[event.key];
  if (step === undefined) return;
  event.preventDefault();
  buttons[Math.max(0, Math.min(buttons.length - 1, i + step))].focus();
});

document.addEventListener("keydown", (event) => {
  // "/" jumps to the search box, as on many sites.
  if (event.key === "/" && !els.viewer.open && !/^(INPUT|SELECT|TEXTAREA)$/.test(event.target.tagName)) {
    event.preventDefault();
    els.q.focus();
    els.q.select();
  }
});

window.addEventListener("popstate", fromLocation);

// Drag and drop: a file from elsewhere searches by that file; a thumbnail from this page
// finds images similar to it.
let dragDepth = 0;
const dragsFile = (event) => [...event.dataTransfer.types].includes("Files");
document.addEventListener("dragenter", (event) => {
  if (!dragsFile(event)) return;
  dragDepth += 1;
  els.drop.hidden = false;
});
document.addEventListener("dragleave", (event) => {
  if (!dragsFile(event)) return;
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) els.drop.hidden = true;
});
document.addEventListener("dragover", (event) => event.preventDefault());
document.addEventListener("drop", (event) => {
  event.preventDefault();
  dragDepth = 0;
  els.drop.hidden = true;
  const file = event.dataTransfer.files[0];
  if (file) {
    searchUpload(file);
    return;
  }
  const url = event.dataTransfer.getData("text/uri-list") || event.dataTransfer.getData("text/plain");
  const match = /\/api\/images\/(\d+)\/thumb/.exec(url || "");
  if (match) searchSimilar(match[1]);
});

// --- start --------------------------------------------------------------------------------

async function start() {
  let info = null;
  try {
    info = await api("api/info");
  } catch (error) {
    setStatus(error.message, true);
  }
  const maxK = info ? info.limits.max_k : 200;
  const choices = K_CHOICES.filter((n) => n < maxK).concat([maxK]);
  const chosen = Math.min(DEFAULT_K, maxK);
  for (const k of choices) {
    els.k.append(new Option(String(k), String(k), k === chosen, k === chosen));
  }
  if (info) {
    state.maxUpload = info.limits.max_upload_bytes;
    for (const [style, n] of Object.entries(info.styles)) {
      els.style.append(new Option(`${style} (${n})`, style));
    }
    els.style.disabled = Object.keys(info.styles).length === 0;
    const parts = [`${info.count} image${info.count === 1 ? "" : "s"}`];
    parts.push(`model ${info.model}${info.pretrained ? ` (${info.pretrained})` : ""}`);
    if (info.errors) parts.push(`${info.errors} file${info.errors === 1 ? "" : "s"} could not be read`);
    els.info.textContent = parts.join(" · ");
  }
  fromLocation();
}

start();
