// grounded serve: the page. Plain JavaScript (no build step), the /v1 API of the same server.
"use strict";

const $ = (id) => document.getElementById(id);
const PALETTE = [[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180],
  [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128]];

const state = {
  health: null, token: localStorage.getItem("grounded-token") || "",
  imageId: null, image: null, width: 0, height: 0, name: "image",
  dets: [], selected: -1, mode: "point", drag: null, nextId: 1, busy: 0,
};
window.groundedState = state; // read by the browser test and handy in the console

// ---------------------------------------------------------------- COCO RLE (compressed counts string)
function rleCounts(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = 1;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      p++; k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

function decodeRle(rle) { // -> Uint8Array, row-major h*w (COCO runs go down the columns)
  const [h, w] = rle.size;
  const out = new Uint8Array(h * w);
  const counts = typeof rle.counts === "string" ? rleCounts(rle.counts) : rle.counts;
  let idx = 0, value = 0;
  for (const run of counts) {
    if (value) {
      for (let i = idx; i < idx + run; i++) out[(i % h) * w + ((i / h) | 0)] = 1;
    }
    idx += run; value ^= 1;
  }
  return out;
}

// ---------------------------------------------------------------- API
function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (state.token) h.Authorization = "Bearer " + state.token;
  return h;
}

async function api(path, options) {
  options = options || {};
  state.busy++; setStatus("working…");
  try {
    const r = await fetch(path, Object.assign({}, options, { headers: headers(options.headers) }));
    if (r.status === 401) $("token-box").hidden = false;
    if (!r.ok) {
      let msg = r.status + " " + r.statusText;
      try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
      throw new Error(msg);
    }
    return r;
  } finally { state.busy--; }
}

const postJson = (path, body) => api(path, {
  method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });

function setStatus(text, error) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", !!error);
}

function fail(e) { setStatus(e.message || String(e), true); }

// ---------------------------------------------------------------- image
async function openImage(file) {
  if (!file) return;
  const url = URL.createObjectURL(file);
  const img = new Image();
  await new Promise((ok, bad) => { img.onload = ok; img.onerror = () => bad(new Error("the browser cannot show this image")); img.src = url; });
  const form = new FormData();
  form.append("image", file, file.name);
  const info = await (await api("/v1/images", { method: "POST", body: form })).json();
  Object.assign(state, { imageId: info.image_id, image: img, width: info.width, height: info.height,
    name: info.file_name, dets: [], selected: -1 });
  for (const c of [$("image-canvas"), $("overlay-canvas")]) { c.width = info.width; c.height = info.height; }
  $("image-canvas").getContext("2d").drawImage(img, 0, 0, info.width, info.height);
  $("drop-hint").hidden = true;
  $("edited").hidden = true;
  render();
  setStatus(`${info.file_name}: ${info.width}×${info.height}, encoded (${info.created ? "new" : "cached"})`);
}

// ---------------------------------------------------------------- detections
function addDet(fields) {
  const det = Object.assign({ id: state.nextId++, visible: true, levels: null, level: 0, prompt: null,
    logitsId: null, score: 1, category: "object", phrase: "object" }, fields);
  det.color = PALETTE[(det.id - 1) % PALETTE.length];
  if (det.segmentation) det.mask = decodeRle(det.segmentation);
  state.dets.push(det);
  return det;
}

async function detect() {
  if (!state.imageId) return setStatus("open an image first", true);
  const prompt = $("prompt").value.trim();
  if (!prompt) return setStatus("type a prompt", true);
  const body = { prompt };
  const thr = $("box-threshold").value;
  if (thr !== "") body.box_threshold = Number(thr);
  const doc = await (await postJson(`/v1/images/${state.imageId}/detect`, body)).json();
  state.dets = state.dets.filter((d) => d.source !== "detect");
  for (const r of doc.detections) {
    addDet({ source: "detect", category: r.category, phrase: r.phrase, score: r.score, bbox: r.bbox,
      segmentation: r.segmentation });
  }
  state.selected = -1;
  render();
  setStatus(`${doc.detections.length} detection(s) for "${prompt}"`);
}

const fmt = (v) => (Math.abs(v) < 0.005 ? 0 : v).toFixed(2);

function selectedDet() { return state.dets[state.selected] || null; }

function xyxy(b) { return [b[0], b[1], b[0] + b[2], b[1] + b[3]]; }

async function refine(det) {
  const p = det.prompt;
  const body = { points: p.points, labels: p.labels, multimask: true };
  if (p.box) body.box = p.box;
  if (det.logitsId && p.points.length > 1) body.mask_input = det.logitsId;
  const answer = await (await postJson(`/v1/images/${state.imageId}/masks`, body)).json();
  if (!answer.levels.length) { setStatus("no mask here"); return; }
  det.levels = answer.levels;
  setLevel(det, answer.best);
  setStatus(`${answer.levels.length} level(s); level ${det.levels[det.level].level} shown`);
}

function setLevel(det, k) {
  k = Math.max(0, Math.min(det.levels.length - 1, k));
  const lv = det.levels[k];
  Object.assign(det, { level: k, segmentation: lv.segmentation, mask: decodeRle(lv.segmentation),
    bbox: lv.bbox, logitsId: lv.logits_id, score: lv.score });
  render();
}

async function levelsFor(det) { // a detection from the detector: its box gives its levels
  if (det.levels) return;
  det.prompt = det.prompt || { points: [], labels: [], box: xyxy(det.bbox) };
  await refine(det);
}

async function click(x, y, negative) {
  if (!state.imageId) return;
  let det = selectedDet();
  if (!det) {
    det = addDet({ source: "click", category: "object", phrase: "object", bbox: [x, y, 1, 1] });
    state.selected = state.dets.indexOf(det);
  }
  det.prompt = det.prompt || { points: [], labels: [], box: det.source === "detect" ? xyxy(det.bbox) : null };
  det.prompt.points.push([x, y]);
  det.prompt.labels.push(negative ? 0 : 1);
  render();
  await refine(det);
}

async function boxPrompt(box) {
  let det = selectedDet();
  if (!det) {
    det = addDet({ source: "click", bbox: [box[0], box[1], box[2] - box[0], box[3] - box[1]] });
    state.selected = state.dets.indexOf(det);
  }
  det.prompt = { points: [], labels: [], box };
  det.logitsId = null;
  await refine(det);
}

// ---------------------------------------------------------------- drawing
function render() {
  const c = $("overlay-canvas"), ctx = c.getContext("2d");
  const w = c.width, h = c.height;
  ctx.clearRect(0, 0, w, h);
  if (state.image) {
    const data = ctx.createImageData(w, h), px = data.data;
    state.dets.forEach((d, i) => {
      if (!d.visible || !d.mask || d.mask.length !== w * h) return;
      const [r, g, b] = d.color, a = i === state.selected ? 150 : 110;
      for (let j = 0; j < d.mask.length; j++) {
        if (d.mask[j]) { const o = 4 * j; px[o] = r; px[o + 1] = g; px[o + 2] = b; px[o + 3] = a; }
      }
    });
    ctx.putImageData(data, 0, 0);
    const line = Math.max(2, Math.round(Math.max(w, h) / 300));
    ctx.font = `${Math.max(12, Math.round(Math.max(w, h) / 45))}px sans-serif`;
    state.dets.forEach((d, i) => {
      if (!d.visible || !d.bbox) return;
      const [x, y, bw, bh] = d.bbox;
      ctx.strokeStyle = `rgb(${d.color})`; ctx.lineWidth = i === state.selected ? 2 * line : line;
      ctx.strokeRect(x, y, bw, bh);
      const label = `${d.category} ${fmt(d.score)}`;
      const tw = ctx.measureText(label).width + 8, th = parseInt(ctx.font, 10) + 6;
      ctx.fillStyle = `rgb(${d.color})`; ctx.fillRect(x, Math.max(0, y - th), tw, th);
      ctx.fillStyle = "#fff"; ctx.fillText(label, x + 4, Math.max(th - 5, y - 5));
      if (d.prompt) {
        d.prompt.points.forEach(([px_, py], k) => {
          ctx.beginPath(); ctx.arc(px_, py, 3 * line, 0, 2 * Math.PI);
          ctx.fillStyle = d.prompt.labels[k] ? "#21c55d" : "#ef4444"; ctx.fill();
          ctx.strokeStyle = "#fff"; ctx.lineWidth = line; ctx.stroke();
        });
      }
    });
    if (state.drag && state.drag.box) {
      const [x0, y0, x1, y1] = state.drag.box;
      ctx.setLineDash([6, 4]); ctx.strokeStyle = "#fff"; ctx.lineWidth = line;
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0); ctx.setLineDash([]);
    }
  }
  renderList();
  renderLevel();
}

function renderList() {
  const ul = $("detections");
  ul.textContent = "";
  state.dets.forEach((d, i) => {
    const li = document.createElement("li");
    li.className = "det-item" + (i === state.selected ? " selected" : "");
    li.style.setProperty("--c", `rgb(${d.color})`);
    li.dataset.index = i;
    const vis = document.createElement("input");
    vis.type = "checkbox"; vis.className = "det-visible"; vis.checked = d.visible; vis.title = "show (H)";
    vis.onchange = () => { d.visible = vis.checked; render(); };
    const name = document.createElement("input");
    name.className = "det-name"; name.value = d.category; name.title = "rename the class";
    name.onchange = () => { d.category = name.value.trim() || d.category; render(); };
    const score = document.createElement("span");
    score.className = "det-score"; score.textContent = fmt(d.score);
    const del = document.createElement("button");
    del.className = "det-delete"; del.textContent = "×"; del.title = "delete (Delete)";
    del.onclick = (e) => { e.stopPropagation(); removeDet(i); };
    li.onclick = (e) => { if (e.target === li || e.target === score) { state.selected = i === state.selected ? -1 : i; render(); } };
    li.append(vis, name, score, del);
    ul.append(li);
  });
  $("det-count").textContent = state.dets.length;
}

function renderLevel() {
  const d = selectedDet(), slider = $("level");
  slider.disabled = !d;
  if (d && d.levels) {
    slider.max = d.levels.length - 1; slider.value = d.level;
    $("level-label").textContent = `${d.levels[d.level].level} of ${d.levels.length}`;
  } else {
    $("level-label").textContent = d ? "(box levels on move)" : "-";
  }
}

function removeDet(i) {
  state.dets.splice(i, 1);
  if (state.selected === i) state.selected = -1;
  else if (state.selected > i) state.selected--;
  render();
}

// ---------------------------------------------------------------- downloads and edit
function records(onlyVisible) {
  return state.dets.filter((d) => d.segmentation && (!onlyVisible || d.visible)).map((d) => ({
    bbox: d.bbox, score: d.score, category: d.category, phrase: d.phrase, segmentation: d.segmentation }));
}

async function download(format) {
  if (!state.imageId) return setStatus("open an image first", true);
  const r = await postJson(`/v1/images/${state.imageId}/render`, { detections: records(true), format });
  const blob = await r.blob();
  const stem = state.name.replace(/\.[^.]+$/, "");
  const file = { coco: `${stem}_coco.json`, labels: `${stem}_labels.png`, overlay: `${stem}_overlay.png` }[format];
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob); a.download = file;
  document.body.append(a); a.click(); a.remove();
  setStatus(`downloaded ${file}`);
}

async function maskPng() {
  const chosen = selectedDet() ? [selectedDet()] : state.dets.filter((d) => d.visible && d.mask);
  if (!chosen.length) throw new Error("nothing selected to edit");
  const c = document.createElement("canvas");
  c.width = state.width; c.height = state.height;
  const ctx = c.getContext("2d"), data = ctx.createImageData(c.width, c.height);
  for (const d of chosen) for (let j = 0; j < d.mask.length; j++) if (d.mask[j]) {
    data.data[4 * j] = data.data[4 * j + 1] = data.data[4 * j + 2] = 255; data.data[4 * j + 3] = 255;
  }
  ctx.putImageData(data, 0, 0);
  return await new Promise((ok) => c.toBlob(ok, "image/png"));
}

async function edit(mode) {
  if (!state.imageId) return setStatus("open an image first", true);
  const form = new FormData();
  form.append("image_id", state.imageId); form.append("mode", mode);
  if (mode !== "remove") {
    const text = $("edit-text").value.trim();
    if (!text) return setStatus("type what to paint", true);
    form.append("text", text);
  }
  form.append("mask", await maskPng(), "mask.png");
  const blob = await (await api("/v1/edit", { method: "POST", body: form })).blob();
  const img = $("edited");
  img.src = URL.createObjectURL(blob); img.hidden = false;
  setStatus(`edited (${mode}) — shown below the image`);
}

// ---------------------------------------------------------------- events
function canvasXY(e) {
  const c = $("overlay-canvas"), r = c.getBoundingClientRect();
  return [Math.round((e.clientX - r.left) * c.width / r.width), Math.round((e.clientY - r.top) * c.height / r.height)];
}

function setMode(mode) {
  state.mode = mode;
  $("mode-point").classList.toggle("on", mode === "point");
  $("mode-box").classList.toggle("on", mode === "box");
}

const guard = (fn) => (...a) => Promise.resolve().then(() => fn(...a)).catch(fail);

function wire() {
  const overlay = $("overlay-canvas"), stage = $("stage");
  $("file").onchange = guard((e) => openImage(e.target.files[0]));
  $("prompt-form").onsubmit = (e) => { e.preventDefault(); guard(detect)(); };
  $("mode-point").onclick = () => setMode("point");
  $("mode-box").onclick = () => setMode("box");
  $("new-object").onclick = () => { state.selected = -1; render(); };
  $("level").oninput = guard(async () => {
    const d = selectedDet(); if (!d) return;
    await levelsFor(d); setLevel(d, Number($("level").value));
  });
  $("dl-coco").onclick = guard(() => download("coco"));
  $("dl-labels").onclick = guard(() => download("labels"));
  $("dl-overlay").onclick = guard(() => download("overlay"));
  $("replace-btn").onclick = guard(() => edit("replace"));
  $("remove-btn").onclick = guard(() => edit("remove"));
  $("token-box").onsubmit = (e) => e.preventDefault();
  $("token").value = state.token;
  $("token").onchange = () => { state.token = $("token").value.trim(); localStorage.setItem("grounded-token", state.token); };

  overlay.addEventListener("contextmenu", (e) => e.preventDefault());
  overlay.addEventListener("mousedown", (e) => {
    if (!state.image) return;
    state.drag = { start: canvasXY(e), box: null, negative: e.button === 2 || e.shiftKey };
  });
  overlay.addEventListener("mousemove", (e) => {
    if (!state.drag || state.mode !== "box") return;
    const [x0, y0] = state.drag.start, [x1, y1] = canvasXY(e);
    state.drag.box = [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)];
    render();
  });
  overlay.addEventListener("mouseup", guard(async (e) => {
    const drag = state.drag; state.drag = null;
    if (!drag) return;
    const box = drag.box;
    if (state.mode === "box" && box && box[2] - box[0] > 2 && box[3] - box[1] > 2) { render(); return boxPrompt(box); }
    render();
    const [x, y] = canvasXY(e);
    return click(x, y, drag.negative);
  }));

  stage.addEventListener("dragover", (e) => { e.preventDefault(); stage.classList.add("dragover"); });
  stage.addEventListener("dragleave", () => stage.classList.remove("dragover"));
  stage.addEventListener("drop", (e) => {
    e.preventDefault(); stage.classList.remove("dragover");
    guard(openImage)(e.dataTransfer.files[0]);
  });

  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" && e.target.type !== "range" && e.target.type !== "checkbox") {
      if (e.key === "Escape") e.target.blur();
      return;
    }
    const d = selectedDet();
    const keys = {
      "/": () => $("prompt").focus(),
      p: () => setMode("point"), b: () => setMode("box"),
      n: () => { state.selected = -1; render(); },
      Escape: () => { state.selected = -1; render(); },
      h: () => { if (d) { d.visible = !d.visible; render(); } },
      Delete: () => { if (d) removeDet(state.selected); },
      Backspace: () => { if (d) removeDet(state.selected); },
      "[": guard(async () => { if (d) { await levelsFor(d); setLevel(d, d.level - 1); } }),
      "]": guard(async () => { if (d) { await levelsFor(d); setLevel(d, d.level + 1); } }),
    };
    const action = keys[e.key];
    if (action) { e.preventDefault(); action(); }
  });
}

async function start() {
  wire();
  try {
    const health = await (await fetch("/health")).json();
    state.health = health;
    $("models").textContent = Object.entries(health.models).map(([k, v]) => `${k}: ${v.split("/").pop()}`).join(" · ");
    if (health.note) { $("note").textContent = health.note; $("note").hidden = false; }
    $("token-box").hidden = !health.auth;
    $("edit-group").hidden = !health.edit;
    document.body.dataset.ready = "1";
  } catch (e) { fail(e); }
}

start();
