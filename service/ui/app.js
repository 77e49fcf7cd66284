// The page at /ui: a series streamed through a model chunk by chunk over the WebSocket stream, each chunk asking
// for its forecast ahead (with an interval) and its explanation (the gates and states of every step).
"use strict";

const $ = (id) => document.getElementById(id);
const page = { info: null, data: null, run: null };
window.lstmPage = page;  // what is drawn, for a reader of the page (the browser tests compare it with the API)

function key() { return $("key").value.trim(); }
function headers() { return key() ? { Authorization: "Bearer " + key() } : {}; }
function say(text) { $("status").textContent = text; }
function fail(text) { $("error").textContent = text; $("error").hidden = false; say(""); }
function clear() { $("error").hidden = true; $("error").textContent = ""; }

async function api(path) {
  const answer = await fetch(path, { headers: headers() });
  if (answer.status === 401) throw new Error("The server asks for an API key: enter it above, then Load models.");
  const text = await answer.text();
  if (!answer.ok) {
    let detail = text;
    try { const doc = JSON.parse(text); detail = typeof doc.detail === "string" ? doc.detail : JSON.stringify(doc); }
    catch (e) { /* not JSON: the text as it came */ }
    throw new Error(`${path}: ${answer.status} ${detail}`);
  }
  return JSON.parse(text);
}

async function loadModels() {
  clear();
  sessionStorage.setItem("lstm-key", key());
  try {
    const list = await api("/v1/models");
    const select = $("model");
    select.replaceChildren(...list.models.map((m) => new Option(`${m.name} (version ${m.serving_version})`, m.name)));
    select.value = list.default.name;
    await chooseModel();
  } catch (e) { fail(e.message); }
}

async function chooseModel() {
  clear();
  const name = $("model").value;
  page.info = null;
  try {
    page.info = await api(`/v1/models/${encodeURIComponent(name)}`);
  } catch (e) { fail(e.message); return; }
  const h = page.info.horizons;
  $("chunk").max = explainedSteps();
  $("horizon").max = h.steps;
  $("horizon").value = Math.min(Number($("horizon").value) || h.steps, h.steps);
  $("interval").disabled = !h.quantiles;
  for (const option of $("interval").options) {  // an interval the model's quantiles reach
    const width = Number(option.value);
    option.disabled = !h.quantiles || (1 - width) / 2 < h.quantiles[0] - 1e-9 || (1 + width) / 2 > h.quantiles[1] + 1e-9;
  }
  page.data = null;
  try { page.data = await api(`/ui/data/${encodeURIComponent(name)}`); } catch (e) { page.data = null; }
  const windowChoice = document.querySelector('input[name="source"][value="window"]');
  windowChoice.disabled = !page.data;
  if (!page.data) document.querySelector('input[name="source"][value="csv"]').checked = true;
  $("model-info").textContent =
    `Version ${page.info.version} reads ${page.info.feature_names.join(", ")}; forecasts ` +
    `${h.targets.join(", ")} up to ${h.steps} step${h.steps > 1 ? "s" : ""} ahead` +
    (h.quantiles ? ", with calibrated intervals." : " (no intervals).") +
    (page.data ? ` Its data: ${page.data.rows.length} rows.` : " No data of it on this server: paste a CSV.");
}

function explainedSteps() {
  // The most steps one chunk may have explained (the server's limit on an explanation's values).
  const info = page.info;
  return Math.max(1, Math.floor(info.limits.explain_max_values / (info.num_layers * info.hidden_size)));
}

function parseCsv(text, features) {
  const lines = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l.length > 0);
  if (lines.length < 2) throw new Error("CSV: give a header row, then at least one row of values.");
  const header = lines[0].split(",").map((h) => h.trim());
  const missing = features.filter((f) => !header.includes(f));
  if (missing.length) {
    throw new Error(`CSV: no column ${missing.join(", ")}. The model reads ${features.join(", ")}; ` +
      `the header has ${header.join(", ")}.`);
  }
  const at = features.map((f) => header.indexOf(f));
  return lines.slice(1).map((line, i) => {
    const cells = line.split(",").map((c) => c.trim());
    if (cells.length !== header.length) {
      throw new Error(`CSV line ${i + 2}: ${cells.length} values, but the header names ${header.length} columns.`);
    }
    return at.map((j, n) => {
      const value = Number(cells[j]);
      if (cells[j] === "" || !Number.isFinite(value)) {
        throw new Error(`CSV line ${i + 2}: "${cells[j]}" in column ${features[n]} is not a number.`);
      }
      return value;
    });
  });
}

function chosenRows() {
  const features = page.info.feature_names;
  if (document.querySelector('input[name="source"]:checked').value === "csv") return parseCsv($("csv").value, features);
  const start = Number($("start").value), steps = Number($("steps").value), rows = page.data.rows;
  if (!Number.isInteger(start) || !Number.isInteger(steps) || start < 0 || steps < 1 || start + steps > rows.length) {
    throw new Error(`Data: rows ${start} to ${start + steps - 1} are not within the ${rows.length} rows there are.`);
  }
  return rows.slice(start, start + steps);
}

function keyProtocol(k) {
  const bytes = new TextEncoder().encode(k);
  let text = "";
  bytes.forEach((b) => { text += String.fromCharCode(b); });
  return "lstm.bearer." + btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function connect(name) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const protocols = key() ? ["lstm", keyProtocol(key())] : ["lstm"];
  const ws = new WebSocket(`${scheme}://${location.host}/v1/models/${encodeURIComponent(name)}/stream`, protocols);
  const waiting = [];
  let closed = null;
  ws.onmessage = (event) => { const w = waiting.shift(); if (w) w.resolve(JSON.parse(event.data)); };
  ws.onclose = (event) => {
    closed = event.code === 1006 ? "the stream could not be opened (is the API key right?)" :
      `the stream closed (${event.code}${event.reason ? ": " + event.reason : ""})`;
    while (waiting.length) waiting.shift().reject(new Error(closed));
  };
  const opened = new Promise((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error("the stream could not be opened (is the API key right?)"));
  });
  const ask = (message) => new Promise((resolve, reject) => {
    if (closed) { reject(new Error(closed)); return; }
    waiting.push({ resolve, reject });
    ws.send(JSON.stringify(message));
  });
  return { opened, ask, close: () => ws.close() };
}

async function stream(event) {
  event.preventDefault();
  clear();
  document.body.dataset.done = "false";
  if (!page.info) { fail("Load the models first."); return; }
  let rows;
  try { rows = chosenRows(); } catch (e) { fail(e.message); return; }
  const h = page.info.horizons, target = h.targets[0], width = Number($("interval").value);
  const chunk = Math.min(Math.max(1, Number($("chunk").value) || 20), explainedSteps());
  const horizon = Math.min(Math.max(1, Number($("horizon").value) || 1), h.steps);
  const quantiles = h.quantiles ? [Math.round((1 - width) / 2 * 1000) / 1000, Math.round((1 + width) / 2 * 1000) / 1000] : [];
  const column = page.info.feature_names.indexOf(target);
  const run = {
    actual: column >= 0 ? rows.map((r) => r[column]) : null, oneStep: [], maps: { forget: [], input: [], output: [], cell: [] },
    forecast: null, quantiles, horizon, steps: 0, target, cellBound: 1e-6, order: null,
  };
  page.run = run;
  document.body.dataset.done = "false";
  $("run").disabled = true;  // one stream at a time
  const link = connect($("model").value);
  try {
    await link.opened;
    const chunks = Math.ceil(rows.length / chunk);
    for (let i = 0; i < chunks; i++) {
      const part = rows.slice(i * chunk, (i + 1) * chunk);
      const answer = await link.ask({ stream: "ui", inputs: part, explain: true, forecast: { horizon, quantiles } });
      answer.outputs.forEach((o) => run.oneStep.push(o[0]));
      for (const gate of Object.keys(run.maps)) {
        const layers = answer.explanation[gate];
        layers[layers.length - 1].forEach((step) => run.maps[gate].push(step));
      }
      for (const step of answer.explanation.cell.at(-1)) {
        for (const value of step) run.cellBound = Math.max(run.cellBound, Math.abs(value));
      }
      run.forecast = answer.forecast;
      run.steps += part.length;
      draw(run);
      say(`chunk ${i + 1} of ${chunks}: ${run.steps} steps`);
    }
    say(`done: ${run.steps} steps in ${chunks} chunks`);
    document.body.dataset.done = "true";
  } catch (e) { fail(`Streaming stopped: ${e.message}`); }
  finally { link.close(); $("run").disabled = false; }
}

// ---- drawing
const SVG = "http://www.w3.org/2000/svg";

function element(name, attributes) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
  return node;
}

function draw(run) {
  const mean = run.forecast.mean.map((m) => m[0]);
  const [qLow, qHigh] = run.quantiles.map(String);
  const low = qLow ? run.forecast.quantiles[qLow].map((m) => m[0]) : null;
  const high = qHigh ? run.forecast.quantiles[qHigh].map((m) => m[0]) : null;
  drawChart(run, mean, low, high);
  drawTable(run, mean, low, high);
  run.order = memoryOrder(run.maps.forget);
  for (const gate of Object.keys(run.maps)) {
    drawMap($(`map-${gate}`), run.maps[gate], run.order, gate === "cell" ? run.cellBound : null);
  }
}

function drawChart(run, mean, low, high) {
  const svg = $("chart"), W = 900, H = 320, pad = 40, last = run.steps - 1;
  const values = [...(run.actual ? run.actual.slice(0, run.steps) : []), ...run.oneStep, ...mean, ...(low || []), ...(high || [])];
  const lo = Math.min(...values), hi = Math.max(...values), span = hi - lo || 1;
  const xEnd = last + run.horizon;
  const x = (t) => pad + (W - 2 * pad) * (xEnd > 0 ? t / xEnd : 0);
  const y = (v) => H - pad - (H - 2 * pad) * (v - lo) / span;
  const line = (points) => points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
  const nodes = [];
  for (const tick of [lo, (lo + hi) / 2, hi]) {
    nodes.push(element("line", { x1: pad, x2: W - pad, y1: y(tick), y2: y(tick), stroke: "#eee" }));
    nodes.push(element("text", { x: 4, y: y(tick) + 4, "font-size": 11, fill: "#666" }));
    nodes[nodes.length - 1].textContent = tick.toFixed(1);
  }
  if (low && high) {
    const band = mean.map((_, k) => [last + k + 1, high[k]]);
    const back = mean.map((_, k) => [last + mean.length - k, low[mean.length - 1 - k]]);
    nodes.push(element("polygon", { points: line([...band, ...back]), fill: "#fecaca", id: "band" }));
  }
  if (run.actual) {
    nodes.push(element("polyline", { points: line(run.actual.slice(0, run.steps).map((v, t) => [t, v])), fill: "none",
      stroke: "#222", "stroke-width": 1.2, id: "actual" }));
  }
  nodes.push(element("polyline", { points: line(run.oneStep.map((v, t) => [t + 1, v])), fill: "none", stroke: "#2563eb",
    "stroke-width": 1.2, id: "one-step", "data-values": JSON.stringify(run.oneStep) }));
  nodes.push(element("polyline", { points: line(mean.map((v, k) => [last + k + 1, v])), fill: "none", stroke: "#dc2626",
    "stroke-width": 2, id: "ahead" }));
  mean.forEach((v, k) => {
    const dot = element("circle", { cx: x(last + k + 1), cy: y(v), r: 3, fill: "#dc2626", class: "ahead-point",
      "data-horizon": k + 1, "data-value": v });
    if (low) { dot.dataset.low = low[k]; dot.dataset.high = high[k]; }
    nodes.push(dot);
  });
  const label = element("text", { x: pad, y: 16, "font-size": 12, fill: "#333" });
  label.textContent = `${run.target}, ${run.steps} steps streamed`;
  nodes.push(label);
  svg.replaceChildren(...nodes);
}

function drawTable(run, mean, low, high) {
  const body = $("forecast").querySelector("tbody");
  body.replaceChildren(...mean.map((v, k) => {
    const row = document.createElement("tr");
    const cells = [k + 1, run.target, v, low ? low[k] : null, high ? high[k] : null];
    cells.forEach((c, i) => {
      const cell = document.createElement("td");
      cell.textContent = c === null ? "" : (i >= 2 ? c.toFixed(3) : String(c));
      if (i >= 2 && c !== null) cell.dataset.value = c;
      row.append(cell);
    });
    return row;
  }));
}

// viridis at nine points (0 .. 1), as python -m training explain colours the gates; the cell state in red and
// blue around zero (its RdBu_r), scaled to the largest |c| streamed so far.
const VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141], [39, 173, 129],
  [92, 200, 99], [170, 220, 50], [253, 231, 37]];

function color(value, bound) {
  if (bound !== null) {
    const t = Math.max(-1, Math.min(1, value / bound));
    return t < 0 ? [255 * (1 + t), 255 * (1 + t), 255] : [255, 255 * (1 - t), 255 * (1 - t)];
  }
  const x = Math.max(0, Math.min(1, value)) * (VIRIDIS.length - 1), i = Math.min(Math.floor(x), VIRIDIS.length - 2);
  const f = x - i;
  return VIRIDIS[i].map((c, k) => c + f * (VIRIDIS[i + 1][k] - c));
}

function memoryOrder(forget) {
  // Units by their mean forget gate, longest memories on top, as python -m training explain orders them.
  const units = forget[0].length, mean = new Array(units).fill(0);
  for (const step of forget) step.forEach((v, u) => { mean[u] += v / forget.length; });
  return [...mean.keys()].sort((a, b) => mean[b] - mean[a]);
}

function drawMap(canvas, steps, order, bound) {
  if (!steps.length) return;
  canvas.width = steps.length;
  canvas.height = order.length;
  const context = canvas.getContext("2d"), image = context.createImageData(steps.length, order.length);
  steps.forEach((step, t) => order.forEach((unit, row) => {
    const [r, g, b] = color(step[unit], bound), i = 4 * (row * steps.length + t);
    image.data[i] = r; image.data[i + 1] = g; image.data[i + 2] = b; image.data[i + 3] = 255;
  }));
  context.putImageData(image, 0, 0);
}

$("key").value = sessionStorage.getItem("lstm-key") || "";
$("connect").addEventListener("click", loadModels);
$("key").addEventListener("keydown", (event) => {  // Enter in the key field loads the models; it streams nothing
  if (event.key === "Enter") { event.preventDefault(); loadModels(); }
});
$("model").addEventListener("change", chooseModel);
$("controls").addEventListener("submit", stream);
loadModels();
