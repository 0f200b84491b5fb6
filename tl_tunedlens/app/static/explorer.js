// The explorer page: streams each text's rows from this server (/api/stream) and draws them as they come
// (the model's output row first, then the layers); figures are built here (figures.js) from compact rows,
// so changing the statistic, top-k (up to what was fetched) or position needs no request. A new request
// aborts the running one, and the server cancels it (same page id): an older text never overwrites a newer.
// No other address is used.
"use strict";

const $ = (id) => document.getElementById(id);
const PLOT_CONFIG = { displaylogo: false, responsive: false };
const NEED_TOKEN = "type a token under 'chosen token' to see its probability or rank";
const PAGE = Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, "0")).join("");
let settings = null;
let sequence = 0;        // the latest request; messages of older ones are dropped
let controller = null;   // aborts the running request
let view = null;         // what the latest request has sent so far
window.explorerDraws = [];    // one entry per heatmap drawing: {text, rows, complete} (tests, bench)
window.explorerTimings = [];  // per request: milliseconds to the first rows drawn, in total, building, drawing

function showMessage(text, kind = "error") {
  const box = $("message");
  box.textContent = text || "";
  box.className = kind === "note" ? "note" : "";
  box.hidden = !text;
}

function query() {
  return {
    text: $("text").value, stat: $("stat").value, top_k: Number($("top-k").value),
    position: Number($("position").value), token: $("token").value, diff_a: $("diff-a").value,
    diff_b: $("diff-b").value, lens: $("report-lens").value || "",
  };
}

async function post(url, body, signal) {
  let response;
  try {
    response = await fetch(url, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal,
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new Error("cannot reach the explorer's server: is tl-tunedlens serve still running?");
  }
  if (response.ok) return response;
  let message = `${response.status} ${response.statusText}`;
  try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
  throw new Error(message);
}

// whether `q` needs the server, or only a new drawing of what the page holds
function needsServer(q) {
  return !view || view.failed || view.text !== q.text || q.top_k > view.top_k
    || ["token", "diff_a", "diff_b"].some((k) => view.typed[k] !== q[k])
    || (q.stat.startsWith("token_") && view.token_ids.token === undefined);
}

async function run() {
  const q = query();
  if (!needsServer(q)) { draw(); return; }
  const mine = ++sequence;
  if (controller) controller.abort();
  controller = new AbortController();
  const started = performance.now();
  window.explorerTimings.push({ text: q.text, first_draw_ms: null, total_ms: null, build_ms: 0, draw_ms: 0 });
  document.body.classList.add("busy");
  $("status").textContent = "running the model and the lenses…";
  showMessage("");
  const body = { ...q, page: PAGE, seq: mine };
  if (!view || body.text !== view.text) body.position = -1;  // a new text starts at its last position
  try {
    const response = await post("/api/stream", body, controller.signal);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { done, value } = await reader.read();
      if (mine !== sequence) { reader.cancel().catch(() => {}); return; }
      buffered += decoder.decode(value || new Uint8Array(), { stream: !done });
      const lines = buffered.split("\n");
      buffered = lines.pop();
      for (const line of lines) if (line) await handle(JSON.parse(line), q, started);
      if (done) break;
    }
  } catch (err) {
    if (mine !== sequence || err.name === "AbortError") return;
    showMessage(err.message);
    $("status").textContent = "";
  } finally {
    if (mine === sequence) document.body.classList.remove("busy");
  }
}

async function handle(message, q, started) {
  const timing = window.explorerTimings[window.explorerTimings.length - 1];
  if (message.kind === "start") {
    view = { ...message, text: q.text, typed: { token: q.token, diff_a: q.diff_a, diff_b: q.diff_b },
      rows: message.lenses.map(() => []), vocab: new Map(), complete: false, failed: false };
    merge(message.vocab);
    fillPositions(view.tokens, view.position);
    showMessage(view.notes.join(" "), "note");
    await draw(timing);
  } else if (message.kind === "queued") {
    $("status").textContent = `waiting: ${message.ahead} request(s) from other pages ahead of this one…`;
  } else if (message.kind === "rows") {
    merge(message.vocab);
    for (const row of message.rows) view.rows[row.lens][row.layer] = row;
    $("status").textContent = "running the model and the lenses…";
    await draw(timing);
    if (timing.first_draw_ms === null) timing.first_draw_ms = performance.now() - started;
  } else if (message.kind === "done") {
    view.complete = true;
    await draw(timing);
    timing.total_ms = performance.now() - started;
    timing.server = message.seconds;
    const s = message.seconds;
    $("status").textContent = `${view.ids.length} tokens · ` + (message.cached ? "cached · " :
      `forward ${s.forward.toFixed(2)} s, vocabulary products ${s.products.toFixed(2)} s, statistics ` +
      `${s.statistics.toFixed(2)} s · `) + `first rows drawn after ${(timing.first_draw_ms / 1000).toFixed(2)} s, ` +
      `all after ${(timing.total_ms / 1000).toFixed(2)} s`;
  } else if (message.kind === "error") {
    view.failed = true;
    showMessage(message.error);
    $("status").textContent = "";
  }
}

function merge(vocab) {
  for (const [id, texts] of Object.entries(vocab || {})) view.vocab.set(Number(id), texts);
}

// the heatmap, the logit difference and the table of what the page holds, for the current controls
async function draw(timing) {
  if (!view) return;
  const q = query();
  if (q.stat.startsWith("token_") && view.token_ids.token === undefined) { showMessage(NEED_TOKEN); return; }
  const k = Math.min(q.top_k, view.top_k);
  const t0 = performance.now();
  const figure = heatmapFigure(view, q.stat, k, settings.stats[q.stat]);
  const t1 = performance.now();
  await Plotly.react("heatmap", figure.data, figure.layout, PLOT_CONFIG);
  const rows = view.rows.reduce((n, r) => n + r.filter(Boolean).length, 0);
  const heatmap = $("heatmap");
  heatmap.dataset.text = view.text;
  heatmap.dataset.rows = String(rows);
  heatmap.dataset.complete = view.complete ? view.text : "";
  window.explorerDraws.push({ text: view.text, rows, complete: view.complete });
  const pos = Number($("position").value);
  const diff = $("diff");
  if (view.token_ids.diff_a !== undefined && view.token_ids.diff_b !== undefined) {
    diff.hidden = false;
    const d = diffFigure(view, pos);
    await Plotly.react("diff", d.data, d.layout, PLOT_CONFIG);
  } else {
    diff.hidden = true;
    Plotly.purge("diff");
  }
  drawTable(pos, k);
  if (timing) { timing.build_ms += t1 - t0; timing.draw_ms += performance.now() - t1; }
}

function fillPositions(tokens, position) {
  const select = $("position");
  select.replaceChildren(...tokens.map((tok, i) => new Option(`${i}: ${tok}`, String(i))));
  select.value = String(position);
}

function tokenCell(tok, prob) {
  const span = document.createElement("span");
  span.className = "tk";
  span.textContent = tok;
  const small = document.createElement("small");
  small.textContent = prob.toFixed(3);
  span.append(small);
  return span;
}

function cell(row, content, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  if (content instanceof Node) td.append(content); else td.textContent = content;
  row.append(td);
  return td;
}

function drawTable(pos, k) {
  const next = pos + 1 < view.ids.length ? `'${view.tokens[pos + 1]}'` : "none (last position)";
  $("position-title").textContent =
    `position ${pos}, input token '${view.tokens[pos]}', actual next token ${next}; ` +
    "per layer: top-k next-token predictions with probabilities, KL(output || layer) and entropy in nats";
  const head = document.createElement("tr");
  for (const name of ["layer", ...view.lenses.flatMap((l) => [`${l}: top-k`, "KL", "entropy"])]) {
    const th = document.createElement("th");
    th.textContent = name;
    head.append(th);
  }
  const rows = view.layers.map((label, layer) => {
    const tr = document.createElement("tr");
    if (layer === view.layers.length - 1) tr.className = "output";
    cell(tr, label);
    view.lenses.forEach((_, lens) => {
      const row = view.rows[lens][layer];
      const tops = document.createDocumentFragment();
      if (row) row.top[pos].slice(0, k).forEach((id, j) => tops.append(tokenCell(view.vocab.get(id)[1], row.top_p[pos][j])));
      cell(tr, row ? tops : "…").className = "tops";
      cell(tr, row ? row.kl[pos].toFixed(3) : "", "num");
      cell(tr, row ? row.entropy[pos].toFixed(3) : "", "num");
    });
    return tr;
  });
  $("layers").replaceChildren(head, ...rows);
}

async function download() {
  showMessage("");
  $("status").textContent = "writing the offline page…";
  try {
    const blob = await (await post("/api/report", query())).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "tl_tunedlens-report.html";
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    $("status").textContent = `saved tl_tunedlens-report.html (${(blob.size / 1e6).toFixed(1)} MB, works offline)`;
  } catch (err) {
    showMessage(err.message);
    $("status").textContent = "";
  }
}

function switchTab(name) {
  for (const button of document.querySelectorAll(".tab")) button.classList.toggle("active", button.dataset.tab === name);
  $("tab-trajectories").hidden = name !== "trajectories";
  $("tab-position").hidden = name !== "position";
}

async function start() {
  try {
    const response = await fetch("/api/settings");
    settings = await response.json();
  } catch (err) {
    showMessage(`cannot reach the explorer's server: ${err.message}`);
    return;
  }
  $("model").textContent = `${settings.model} · ${settings.n_layers} layers · lenses: ${settings.lenses.join(", ")}`;
  for (const [name, label] of Object.entries(settings.stats)) $("stat").append(new Option(label, name));
  $("top-k").max = settings.limits.max_top_k;
  $("text").maxLength = settings.limits.max_chars;
  for (const id of ["token", "diff-a", "diff-b"]) $(id).maxLength = settings.limits.max_token_chars;
  if (settings.tuned.length > 1) {
    for (const name of settings.tuned) $("report-lens").append(new Option(name, name));
    $("report-lens-label").hidden = false;
  }
  $("form").addEventListener("submit", (event) => { event.preventDefault(); run(); });
  $("text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); run(); }
  });
  for (const id of ["stat", "top-k", "token", "diff-a", "diff-b", "position"]) {
    $(id).addEventListener("change", () => { if (view !== null) run(); });
  }
  $("download").addEventListener("click", download);
  for (const button of document.querySelectorAll(".tab")) button.addEventListener("click", () => switchTab(button.dataset.tab));
  document.body.dataset.ready = "1";
}

// clicking a heatmap cell selects its position for the table and the logit difference
function watchClicks() {
  const plot = $("heatmap");
  if (plot.on && !plot.dataset.clicks) {
    plot.dataset.clicks = "1";
    plot.on("plotly_click", (event) => {
      const point = event.points && event.points[0];
      if (point && Number.isInteger(point.x)) { $("position").value = String(point.x); run(); }
    });
  }
}

new MutationObserver(watchClicks).observe($("heatmap"), { childList: true });
start();
