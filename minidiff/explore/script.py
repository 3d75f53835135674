"""The page's script (plain JavaScript, no library): it draws the panels from the data `page` writes inline.

Forward process: x_t = sqrt(ab) x0 + sqrt(1 - ab) eps for the slider's t, to uint8 as minidiff does
((clamp(x, -1, 1) + 1) 127.5, rounded). Reverse process: the setting's two sprites are drawn once
into a canvas and frame s is taken back out of the interleaved rows (row r of frame s is row
r (S + 1) + s). Each drawing bumps <body data-drawn>, which a test waits on.
"""

SCRIPT = r"""
"use strict";
const $ = (id) => document.getElementById(id);
const F = DATA.forward, S = DATA.schedules, R = DATA.reverse, T = S.linear.flawed.length;
let drawn = 0;
function done() { document.body.dataset.drawn = String(++drawn); }

function bytes(b64) {
  const s = atob(b64), a = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i);
  return a;
}
function num(x) {  // six significant digits, as the Python side's f"{x:.5e}"
  if (x === 0) return "0";
  if (!isFinite(x)) return x > 0 ? "inf" : "-inf";
  return x.toExponential(5);
}
function mean(xs) { return xs.reduce((a, b) => a + b, 0) / xs.length; }
function std(xs) { const m = mean(xs); return Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / xs.length); }
function logSnr(ab) { return ab === 0 ? -Infinity : ab === 1 ? Infinity : Math.log(ab) - Math.log1p(-ab); }
function toU8(x) { return Math.round((Math.min(1, Math.max(-1, x)) + 1) * 127.5); }
function pearson(a, b) {
  const n = a.length; let ma = 0, mb = 0, sab = 0, saa = 0, sbb = 0;
  for (let i = 0; i < n; i++) { ma += a[i] / n; mb += b[i] / n; }
  for (let i = 0; i < n; i++) { const da = a[i] - ma, db = b[i] - mb; sab += da * db; saa += da * da; sbb += db * db; }
  return sab / Math.sqrt(saa * sbb);
}

// ---------------------------------------------------------------- 1. forward process
const fx0 = bytes(F.x0), feps = new Float32Array(bytes(F.eps).buffer);
let flawedKind = "scaled_linear";

function drawNoised(canvas, ab) {
  const n = F.shown, w = F.size, c = F.channels;
  canvas.width = n * w; canvas.height = w;
  const g = canvas.getContext("2d"), img = g.createImageData(n * w, w);
  const a = Math.sqrt(ab), b = Math.sqrt(1 - ab);
  for (let i = 0; i < n; i++) for (let y = 0; y < w; y++) for (let x = 0; x < w; x++) {
    const out = 4 * (y * n * w + i * w + x);
    for (let k = 0; k < 3; k++) {
      const src = ((i * w + y) * w + x) * c + (c === 1 ? 0 : k);
      img.data[out + k] = toU8(a * (fx0[src] / 127.5 - 1) + b * feps[src]);
    }
    img.data[out + 3] = 255;
  }
  g.putImageData(img, 0, 0);
}

function leakedCorrelation(ab) {  // repro leakage: corr(mean x0, mean x_t) over the images; 0 when ab = 0
  if (ab === 0) return 0;
  const a = Math.sqrt(ab), b = Math.sqrt(1 - ab);
  return pearson(F.brightness, F.brightness.map((m, i) => a * m + b * F.noise_mean[i]));
}

function drawForward() {
  const t = +$("t").value;
  $("t-value").textContent = t + (t === T - 1 ? " (the last step, T)" : t === 0 ? " (the first step)" : "");
  for (const which of ["flawed", "zero"]) {
    const ab = S[flawedKind][which][t];
    drawNoised($("fwd-" + which), ab);
    $("ab-" + which).textContent = num(ab);
    $("snr-" + which).textContent = num(ab / (1 - ab));
    $("logsnr-" + which).textContent = isFinite(logSnr(ab)) ? logSnr(ab).toFixed(3) : "-inf";
    $("corr-" + which).textContent = leakedCorrelation(ab).toFixed(3);
    $("name-" + which).textContent = S[flawedKind].name + (which === "zero" ? ", rescaled to zero terminal SNR" : ", as made");
  }
  for (const b of document.querySelectorAll("[data-flawed]")) b.setAttribute("aria-pressed", String(b.dataset.flawed === flawedKind));
  drawSchedules(t);
  done();
}

// ---------------------------------------------------------------- 2. schedules
const COLOURS = {linear: "#1f77b4", cosine: "#2ca02c", scaled_linear: "#d62728", flow: "#9467bd"};
const LO = -25, HI = 15;

function drawSchedules(t) {
  const c = $("schedule-plot"), g = c.getContext("2d"), W = c.width, H = c.height, L = 48, B = 28;
  const X = (s) => L + (W - L - 8) * s / (T - 1), Y = (v) => 8 + (H - B - 8) * (HI - Math.max(LO, Math.min(HI, v))) / (HI - LO);
  g.fillStyle = "#fff"; g.fillRect(0, 0, W, H);
  g.strokeStyle = "#ccc"; g.fillStyle = "#333"; g.font = "11px sans-serif"; g.lineWidth = 1;
  for (let v = LO; v <= HI; v += 5) { g.beginPath(); g.moveTo(L, Y(v)); g.lineTo(W - 8, Y(v)); g.stroke(); g.fillText(String(v), 8, Y(v) + 4); }
  for (let s = 0; s < T; s += 200) g.fillText(String(s), X(s) - 8, H - 10);
  g.fillText("t", W - 16, H - 10);
  for (const kind of Object.keys(S)) for (const which of ["flawed", "zero"]) {
    g.strokeStyle = COLOURS[kind]; g.lineWidth = 2; g.setLineDash(which === "zero" ? [6, 4] : []);
    g.beginPath();
    S[kind][which].forEach((ab, s) => { const p = [X(s), Y(logSnr(ab))]; s ? g.lineTo(...p) : g.moveTo(...p); });
    g.stroke();
  }
  g.setLineDash([]); g.strokeStyle = "#000"; g.lineWidth = 1;
  g.beginPath(); g.moveTo(X(t), 8); g.lineTo(X(t), H - B); g.stroke();
  const rows = Object.keys(S).map((k) => {
    const f = logSnr(S[k].flawed[t]), z = logSnr(S[k].zero[t]), show = (v) => isFinite(v) ? v.toFixed(3) : "-inf";
    return `<tr><td><span class="swatch" style="background:${COLOURS[k]}"></span>${S[k].name}</td><td>${show(f)}</td><td>${show(z)}</td></tr>`;
  });
  $("schedule-table").innerHTML = `<tr><th>schedule</th><th>log-SNR at t = ${t}, as made (solid)</th><th>rescaled (dashed)</th></tr>` + rows.join("");
}

// ---------------------------------------------------------------- 3. reverse process, 4. brightness
const FACTORS = ["sampler", "steps", "spacing", "guidance", "rescale"];
const SAMPLER_GROUP = ["sampler", "steps", "spacing"];
let sel = null;
const sprites = {};

function keyOf(s) { return [s.sampler, s.steps, s.spacing, s.guidance, s.rescale].join("|"); }
function parseKey(k) { const p = k.split("|"); return {sampler: p[0], steps: +p[1], spacing: p[2], guidance: +p[3], rescale: +p[4]}; }

function choose(factor, value) {
  const own = parseKey(R.own), next = Object.assign({}, sel, {[factor]: value});
  let note = "";
  if (factor === "guidance" && value === 1) next.rescale = 0;
  if (!(keyOf(next) in R.settings)) {  // the other group goes back to the checkpoint's own
    const reset = SAMPLER_GROUP.includes(factor) ? ["guidance", "rescale"] : SAMPLER_GROUP;
    for (const f of reset) next[f] = own[f];
    if (factor === "guidance" && value === 1) next.rescale = 0;
    note = `(${reset.join(", ")} back to the checkpoint's own: the other choices are precomputed at its own ${SAMPLER_GROUP.includes(factor) ? "guidance" : "sampler, steps and spacing"})`;
  }
  if (!(keyOf(next) in R.settings)) { Object.assign(next, own); note = "(not precomputed: the checkpoint's own setting)"; }
  sel = next;
  $("choice-note").textContent = note;
  $("step").max = String(sel.steps);
  $("step").value = String(sel.steps);
  drawReverse();
}

function loadSprite(uri) {
  if (!sprites[uri]) sprites[uri] = new Promise((ok, fail) => {
    const im = new Image();
    im.onload = () => {
      const c = document.createElement("canvas"); c.width = im.width; c.height = im.height;
      const g = c.getContext("2d", {willReadFrequently: true});
      g.drawImage(im, 0, 0);
      ok(g.getImageData(0, 0, im.width, im.height));
    };
    im.onerror = () => fail(new Error("a sprite did not decode"));
    im.src = uri;
  });
  return sprites[uri];
}

function drawFrame(canvas, sprite, frames, s) {
  const w = sprite.width, h = sprite.height / frames;
  canvas.width = w; canvas.height = h;
  const g = canvas.getContext("2d", {willReadFrequently: true}), out = g.createImageData(w, h);
  for (let r = 0; r < h; r++) {
    const from = 4 * w * (r * frames + s);
    out.data.set(sprite.data.subarray(from, from + 4 * w), 4 * w * r);
  }
  g.putImageData(out, 0, 0);
}

function frameBrightness(sprite, frames, s) {  // mean of each image of frame s, in [-1, 1]
  const size = sprite.height / frames, out = [];
  for (let i = 0; i < sprite.width / size; i++) {
    let sum = 0;
    for (let r = 0; r < size; r++) for (let x = 0; x < size; x++) {
      const p = 4 * (sprite.width * (r * frames + s) + i * size + x);
      sum += sprite.data[p] + sprite.data[p + 1] + sprite.data[p + 2];
    }
    out.push(sum / (3 * size * size) / 127.5 - 1);
  }
  return out;
}

let ticket = 0;
async function drawReverse() {
  const mine = ++ticket, d = R.settings[keyOf(sel)], s = +$("step").value, n = d.timesteps.length;
  for (const b of document.querySelectorAll("[data-factor]")) {
    const on = String(sel[b.dataset.factor]) === b.dataset.value;
    b.setAttribute("aria-pressed", String(on));
    b.disabled = b.dataset.factor === "rescale" && sel.guidance === 1;
  }
  const [xt, x0] = await Promise.all([loadSprite(d.xt), loadSprite(d.x0)]);
  if (mine !== ticket) return;
  drawFrame($("rev-xt"), xt, n + 1, s);
  drawFrame($("rev-x0"), x0, n + 1, s);
  $("rev-brightness").textContent = frameBrightness(x0, n + 1, s).map((b) => b.toFixed(2)).join(", ");
  $("rev-spread").textContent = d.spread[s].toFixed(3);
  $("step-value").textContent = s === n ? `${n} of ${n}: the sample` : `${s} of ${n}`;
  $("rev-t").textContent = s === n ? "after the last step (alpha_bar = 1)" : `t = ${d.timesteps[s]}, alpha_bar = ${num(d.alpha_bar[s])}`;
  $("rev-label").textContent = d.label + (keyOf(sel) === R.own ? " (the checkpoint's own)" : "");
  $("rev-command").textContent = d.command;
  drawHistogram(d);
  done();
}

function drawHistogram(d) {
  const c = $("hist"), g = c.getContext("2d"), W = c.width, H = c.height, bins = 24, L = 10, B = 24;
  const density = (xs) => { const h = new Array(bins).fill(0);
    for (const x of xs) h[Math.min(bins - 1, Math.max(0, Math.floor((x + 1) / 2 * bins)))] += 1 / xs.length; return h; };
  const data = density(F.brightness), ours = density(d.brightness), top = Math.max(...data, ...ours) * 1.1;
  g.fillStyle = "#fff"; g.fillRect(0, 0, W, H);
  const bw = (W - 2 * L) / bins;
  for (const [h, colour] of [[data, "rgba(120,120,120,0.55)"], [ours, "rgba(214,39,40,0.55)"]]) {
    g.fillStyle = colour;
    h.forEach((v, i) => g.fillRect(L + i * bw, H - B - (H - B - 8) * v / top, bw - 1, (H - B - 8) * v / top));
  }
  g.fillStyle = "#333"; g.font = "11px sans-serif";
  for (const v of [-1, -0.5, 0, 0.5, 1]) g.fillText(String(v), L + (v + 1) / 2 * (W - 2 * L) - 6, H - 8);
  const stats = (xs) => `${mean(xs).toFixed(3)} (std ${std(xs).toFixed(3)})`;
  $("data-spread").textContent = std(F.brightness).toFixed(3);
  $("hist-text").textContent = `mean brightness of the ${d.brightness.length} samples ${stats(d.brightness)}, ` +
    `of the ${F.what} ${stats(F.brightness)}; W1 between the two = ${d.w1.toFixed(3)}`;
}

function buttons(group, factor, values, names) {
  for (const v of values) {
    const b = document.createElement("button");
    b.type = "button"; b.dataset.factor = factor; b.dataset.value = String(v);
    b.textContent = names ? names[v] : String(v);
    b.addEventListener("click", () => choose(factor, typeof v === "number" ? v : String(v)));
    $(group).appendChild(b);
  }
}

$("t").addEventListener("input", drawForward);
for (const b of document.querySelectorAll("[data-flawed]")) b.addEventListener("click", () => { flawedKind = b.dataset.flawed; drawForward(); });
drawForward();
if (R) {
  buttons("sampler-buttons", "sampler", Object.keys(R.samplers), R.samplers);
  buttons("steps-buttons", "steps", R.steps);
  buttons("spacing-buttons", "spacing", R.spacings);
  if (R.conditional) { buttons("guidance-buttons", "guidance", R.guidances); buttons("rescale-buttons", "rescale", R.rescales); }
  $("step").addEventListener("input", drawReverse);
  sel = parseKey(R.own);
  choose("sampler", sel.sampler);
}
"""
