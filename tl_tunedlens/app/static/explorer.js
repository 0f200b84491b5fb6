// The explorer page: sends the query to this server, draws what comes back. No other address is used.
"use strict";

const $ = (id) => document.getElementById(id);
const PLOT_CONFIG = { displaylogo: false, responsive: false };
let settings = null;
let sequence = 0;        // the latest request; older answers are dropped
let shownText = null;    // the text whose figures are on the page

function showMessage(text, kind = "error") {
  const box = $("message");
  box.textContent = text || "";
  box.className = kind === "note" ? "note" : "";
  box.hidden = !text;
}

function query(what) {
  return {
    text: $("text").value, stat: $("stat").value, top_k: Number($("top-k").value),
    position: Number($("position").value), token: $("token").value, diff_a: $("diff-a").value,
    diff_b: $("diff-b").value, lens: $("report-lens").value || "", what: what,
  };
}

async function post(url, body) {
  let response;
  try {
    response = await fetch(url, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
  } catch (err) {
    throw new Error("cannot reach the explorer's server: is tl-tunedlens serve still running?");
  }
  if (response.ok) return response;
  let message = `${response.status} ${response.statusText}`;
  try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
  throw new Error(message);
}

async function run(what = "all") {
  if (what === "position" && shownText !== $("text").value) what = "all";
  const mine = ++sequence;
  document.body.classList.add("busy");
  $("status").textContent = what === "all" ? "running the model and the lenses…" : "updating…";
  try {
    const body = query(what);
    if (body.text !== shownText) body.position = -1;  // a new text starts at its last position
    const data = await (await post("/api/analyze", body)).json();
    if (mine !== sequence) return;
    render(data, body.text);
    showMessage(data.notes.join(" "), "note");
  } catch (err) {
    if (mine !== sequence) return;
    showMessage(err.message);
    $("status").textContent = "";
  } finally {
    if (mine === sequence) document.body.classList.remove("busy");
  }
}

function render(data, text) {
  if (data.figure) {
    Plotly.react("heatmap", data.figure.data, data.figure.layout, PLOT_CONFIG);
    $("heatmap").dataset.text = text;
    shownText = text;
  }
  const diff = $("diff");
  if (data.diff_figure) {
    diff.hidden = false;
    Plotly.react("diff", data.diff_figure.data, data.diff_figure.layout, PLOT_CONFIG);
  } else {
    diff.hidden = true;
    Plotly.purge("diff");
  }
  fillPositions(data.tokens, data.position);
  drawTable(data.table);
  const s = data.seconds;
  $("status").textContent = `${data.tokens.length} tokens · model and lenses ${s.model_and_lenses.toFixed(2)} s` +
    (s.cached ? " (cached)" : "") + ` · figures ${s.figures.toFixed(2)} s`;
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

function drawTable(table) {
  const next = table.next === null ? "none (last position)" : `'${table.next}'`;
  $("position-title").textContent =
    `position ${table.position}, input token '${table.token}', actual next token ${next}; ` +
    "per layer: top-k next-token predictions with probabilities, KL(output || layer) and entropy in nats";
  const head = document.createElement("tr");
  for (const name of ["layer", ...table.lenses.flatMap((l) => [`${l.name}: top-k`, "KL", "entropy"])]) {
    const th = document.createElement("th");
    th.textContent = name;
    head.append(th);
  }
  const rows = table.layers.map((label, r) => {
    const tr = document.createElement("tr");
    if (r === table.layers.length - 1) tr.className = "output";
    cell(tr, label);
    for (const lens of table.lenses) {
      const entry = lens.rows[r];
      const tops = document.createDocumentFragment();
      entry.top.forEach(([tok, p]) => tops.append(tokenCell(tok, p)));
      cell(tr, tops).className = "tops";
      cell(tr, entry.kl === null ? "" : entry.kl.toFixed(3), "num");
      cell(tr, entry.entropy === null ? "" : entry.entropy.toFixed(3), "num");
    }
    return tr;
  });
  $("layers").replaceChildren(head, ...rows);
}

async function download() {
  showMessage("");
  $("status").textContent = "writing the offline page…";
  try {
    const blob = await (await post("/api/report", query("all"))).blob();
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
  $("form").addEventListener("submit", (event) => { event.preventDefault(); run("all"); });
  $("text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); run("all"); }
  });
  for (const id of ["stat", "top-k", "token", "diff-a", "diff-b"]) {
    $(id).addEventListener("change", () => { if (shownText !== null) run("all"); });
  }
  $("position").addEventListener("change", () => { if (shownText !== null) run("position"); });
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
      if (point && Number.isInteger(point.x)) { $("position").value = String(point.x); run("position"); }
    });
  }
}

new MutationObserver(watchClicks).observe($("heatmap"), { childList: true });
start();
