// The explorer's figures, built in the page from the compact rows /api/stream sends (no figure travels):
// every lens's layers x positions heatmap on one colour scale, and the logit difference of two tokens.
// Rows not computed yet are drawn empty. Token texts come HTML-escaped from the server (plotly reads
// pseudo-HTML); lens names and labels are escaped here.
"use strict";

const LENS_COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];
const STAT_UNITS = { kl: "nats", entropy: "nats", ce: "nats", kl_step: "nats", prob: "probability",
  max_prob: "probability", rank: "rank", token_prob: "probability", token_rank: "rank" };
const GRID = { gridcolor: "#ebf0f8", zerolinecolor: "#ebf0f8" };

function escapeHtml(text) {
  return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

// the value of statistic `stat` in row `row` (one lens, one layer) at position `pos`; null if unknown
function cellValue(row, stat, pos, watch) {
  if (!row) return null;
  switch (stat) {
    case "prob": return row.ce[pos] === null ? null : Math.exp(-row.ce[pos]);
    case "max_prob": return row.top_p[pos][0];
    case "token_prob": return row.watched[pos][watch] === null ? null : Math.exp(row.watched[pos][watch]);
    case "token_rank": return row.watched_rank[pos][watch];
    case "kl_step": return row.kl_step ? row.kl_step[pos] : null;
    default: return row[stat][pos];
  }
}

// which layer's top-k a heatmap row shows: kl_step rows are the steps l -> l+1, shown at l+1
function heatmapRows(view, stat) {
  const n = view.layers.length;
  const layers = [...Array(n).keys()];
  if (stat !== "kl_step") return { layers, labels: view.layers };
  return { layers: layers.slice(1), labels: layers.slice(1).map((l) => `${view.layers[l - 1]}→${view.layers[l]}`) };
}

function colorArgs(stat, z) {
  if (stat === "prob" || stat === "max_prob" || stat === "token_prob") return { colorscale: "Viridis", cmin: 0, cmax: 1 };
  // nats statistics: capped at the largest value above the embedding row (hover shows true values)
  const rows = ["kl", "ce", "entropy", "kl_step"].includes(stat) && z.length > 2 ? z.slice(1) : z;
  let max = 0;
  for (const r of rows) for (const v of r) if (v !== null && v > max) max = v;
  return { colorscale: "Viridis_r", cmin: 0, cmax: max > 0 ? max : undefined };
}

// one lens's heatmap trace; `k` top tokens on hover
function heatmapTrace(view, lens, stat, k, title) {
  const { layers, labels } = heatmapRows(view, stat);
  const rank = stat === "rank" || stat === "token_rank";
  const watch = view.watched.indexOf(view.token_ids.token);
  const targetLabel = stat.startsWith("token_") ? "chosen token" : "next token";
  const show = (id) => (id === null || id === undefined ? "" : view.vocab.get(id)[0]);
  const z = [], text = [], hover = [];
  layers.forEach((layer, r) => {
    const row = view.rows[lens][layer];
    const zRow = [], textRow = [], hoverRow = [];
    for (let pos = 0; pos < view.ids.length; pos++) {
      const value = cellValue(row, stat, pos, watch);
      zRow.push(value === null ? null : rank ? Math.log10(value) : value);
      if (!row) { textRow.push(""); hoverRow.push("computing…"); continue; }
      textRow.push(show(row.top[pos][0]));
      const lines = [`<b>layer ${escapeHtml(labels[r])}</b>, position ${pos}: '${show(view.ids[pos])}'`,
        `${escapeHtml(title)} = ${value === null ? "n/a" : Number(value).toPrecision(4)}`];
      const target = stat.startsWith("token_") ? view.token_ids.token : view.ids[pos + 1];
      if (target !== undefined) {
        const lp = stat.startsWith("token_") ? row.watched[pos][watch] : (row.ce[pos] === null ? null : -row.ce[pos]);
        const rk = stat.startsWith("token_") ? row.watched_rank[pos][watch] : row.rank[pos];
        if (lp !== null && view.vocab.has(target)) {
          lines.push(`${targetLabel} '${show(target)}': p = ${Math.exp(lp).toPrecision(3)}, rank ${rk}`);
        }
      }
      lines.push(`top-${Math.min(k, row.top[pos].length)} at layer ${escapeHtml(view.layers[layer])}:`);
      row.top[pos].slice(0, k).forEach((id, j) => lines.push(`  ${j + 1}. '${show(id)}'  ${row.top_p[pos][j].toFixed(3)}`));
      hoverRow.push(lines.join("<br>"));
    }
    z.push(zRow); text.push(textRow); hover.push(hoverRow);
  });
  return { type: "heatmap", z, x: view.ids.map((_, i) => i), y: labels.map((_, i) => i), text, customdata: hover,
    texttemplate: "%{text}", textfont: { size: 9 }, hovertemplate: "%{customdata}<extra></extra>", xgap: 1, ygap: 1,
    name: view.lenses[lens], coloraxis: "coloraxis" };
}

// every lens side by side on one colour scale
function heatmapFigure(view, stat, k, statLabel) {
  const n = view.lenses.length, gap = 0.08, width = (1 - gap * (n - 1)) / n;
  const tokenTitle = stat.startsWith("token_") && view.token_ids.token !== undefined
    ? `${stat === "token_prob" ? "probability" : "rank (1 = top)"} of '${view.vocab.get(view.token_ids.token)[1]}'`
    : statLabel;
  const data = view.lenses.map((_, lens) => heatmapTrace(view, lens, stat, k, tokenTitle));
  const { labels } = heatmapRows(view, stat);
  const layout = { title: { text: `${escapeHtml(tokenTitle)}: ${view.lenses.map(escapeHtml).join(" vs ")}` },
    annotations: [], margin: { t: 70, l: 60, r: 20, b: 90 }, plot_bgcolor: "#fff",
    width: Math.min(2400, 220 + n * (80 + (n === 1 ? 62 : 48) * view.ids.length)),
    height: Math.min(1600, 230 + 22 * view.layers.length) };
  const color = colorArgs(stat, data.flatMap((t) => t.z));
  const rank = stat === "rank" || stat === "token_rank";
  layout.coloraxis = { ...color, colorbar: { title: { text: STAT_UNITS[stat] } } };
  if (rank) Object.assign(layout.coloraxis.colorbar, { tickvals: [0, 1, 2, 3, 4, 5], ticktext: ["1", "10", "100", "1k", "10k", "100k"] });
  data.forEach((trace, i) => {
    const suffix = i === 0 ? "" : String(i + 1);
    trace.xaxis = `x${suffix}`; trace.yaxis = `y${suffix}`;
    const x0 = i * (width + gap);
    layout[`xaxis${suffix}`] = { domain: [x0, x0 + width], anchor: `y${suffix}`, tickvals: trace.x, tickangle: -45,
      ticktext: view.ids.map((id) => view.vocab.get(id)[0]), title: { text: "input token" }, ...GRID };
    layout[`yaxis${suffix}`] = { anchor: `x${suffix}`, tickvals: trace.y, ticktext: labels.map(escapeHtml),
      title: { text: "layer" }, ...GRID };
    layout.annotations.push({ text: escapeHtml(view.lenses[i]), x: x0 + width / 2, y: 1, xref: "paper", yref: "paper",
      xanchor: "center", yanchor: "bottom", showarrow: false, font: { size: 14 } });
  });
  return { data, layout };
}

// per layer, logit(a) - logit(b) at `pos`, one line per lens (rows not computed yet: gaps)
function diffFigure(view, pos) {
  const a = view.token_ids.diff_a, b = view.token_ids.diff_b;
  const ja = view.watched.indexOf(a), jb = view.watched.indexOf(b);
  const show = (id) => view.vocab.get(id)[0];
  const x = view.layers.map((_, i) => i);
  const data = view.lenses.map((name, lens) => ({
    type: "scatter", mode: "lines+markers", name, x, customdata: view.layers, line: { color: LENS_COLORS[lens % 8] },
    y: x.map((l) => { const row = view.rows[lens][l]; return row ? row.watched[pos][ja] - row.watched[pos][jb] : null; }),
    hovertemplate: `${escapeHtml(name)}, layer %{customdata}: %{y:.3f} nats<extra></extra>` }));
  const layout = { height: 360, margin: { t: 60, l: 70, r: 20, b: 50 }, plot_bgcolor: "#fff",
    title: { text: `logit difference '${show(a)}' − '${show(b)}' at position ${pos} ('${show(view.ids[pos])}')` },
    xaxis: { title: { text: "layer" }, tickvals: x, ticktext: view.layers.map(escapeHtml), ...GRID },
    yaxis: { title: { text: `logit('${show(a)}') − logit('${show(b)}'), nats` }, ...GRID },
    shapes: [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: 0, y1: 0, line: { color: "#999", width: 1 } }],
    legend: { orientation: "h", y: -0.25 } };
  return { data, layout };
}
