// Small charts drawn with DOM and SVG elements (no library): progress, bars, a line chart of a
// training history and a confusion-matrix heat map. Labels are always text nodes.
import { h, s, fmtPct } from "./dom.js";

/** A native <progress> with its percentage as text. */
export function progress(fraction, label) {
  const pct = Math.round(Math.max(0, Math.min(1, fraction || 0)) * 100);
  const bar = h("progress", { max: "100", value: String(pct), "aria-label": label });
  return h("div", { class: "progress" }, bar, h("span", { class: "progress-text", text: `${pct}%` }));
}

export function setProgress(el, fraction, text) {
  const pct = Math.round(Math.max(0, Math.min(1, fraction || 0)) * 100);
  el.querySelector("progress").value = pct;
  el.querySelector(".progress-text").textContent = text || `${pct}%`;
}

/** Horizontal bars: rows of {label, value, text?}; value in [0, max]. */
export function bars(rows, { max, label, format = (v) => String(v), className = "" } = {}) {
  const top = max ?? Math.max(1, ...rows.map((r) => r.value));
  return h("ul", { class: ["bars", className], "aria-label": label },
    rows.map((r) => h("li", { class: "bar-row" },
      h("span", { class: "bar-label", text: r.label, title: r.label }),
      h("span", { class: "bar-track", "aria-hidden": "true" },
        h("span", { class: "bar-fill", style: { width: `${Math.max(0, Math.min(1, r.value / top)) * 100}%` } })),
      h("span", { class: "bar-value", text: r.text ?? format(r.value) }))));
}

/** Line chart of history entries: series [{key, label, className}], y from 0 to max. */
export function lineChart(history, series, { title, yMax, yFormat = (v) => v.toFixed(2) } = {}) {
  const W = 480, H = 200, L = 44, R = 12, T = 12, B = 28;
  const xs = history.map((e, i) => (typeof e.epoch === "number" ? e.epoch : i + 1));
  const values = series.flatMap((ser) => history.map((e) => e[ser.key]).filter((v) => typeof v === "number"));
  const top = yMax ?? Math.max(1e-6, ...values) * 1.05;
  const xMin = Math.min(...xs, 1), xMax = Math.max(...xs, xMin + 1);
  const px = (x) => L + ((x - xMin) / (xMax - xMin)) * (W - L - R);
  const py = (y) => T + (1 - y / top) * (H - T - B);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": title });
  svg.append(s("title", { text: title }));
  for (let i = 0; i <= 4; i += 1) {
    const y = (top * i) / 4;
    svg.append(s("line", { x1: L, x2: W - R, y1: py(y), y2: py(y), class: "grid" }));
    svg.append(s("text", { x: L - 6, y: py(y) + 4, class: "axis", "text-anchor": "end", text: yFormat(y) }));
  }
  svg.append(s("text", { x: L, y: H - 6, class: "axis", text: String(xMin) }));
  svg.append(s("text", { x: W - R, y: H - 6, class: "axis", "text-anchor": "end", text: String(xMax) }));
  const legend = h("ul", { class: "legend" });
  for (const ser of series) {
    const pts = history
      .map((e, i) => [xs[i], e[ser.key]])
      .filter(([, v]) => typeof v === "number")
      .map(([x, v]) => `${px(x).toFixed(1)},${py(v).toFixed(1)}`);
    if (pts.length) svg.append(s("polyline", { points: pts.join(" "), class: ["series", ser.className] }));
    if (pts.length === 1) {
      const [x, y] = pts[0].split(",");
      svg.append(s("circle", { cx: x, cy: y, r: 3, class: ["dot", ser.className] }));
    }
    const last = [...history].reverse().find((e) => typeof e[ser.key] === "number");
    legend.append(h("li", {}, h("span", { class: ["swatch", ser.className], "aria-hidden": "true" }),
      `${ser.label}: ${last ? yFormat(last[ser.key]) : "—"}`));
  }
  return h("figure", { class: "chart-box" }, h("figcaption", { text: title }), svg, legend);
}

/** Confusion matrix as a table whose cells are shaded by the row's share (recall). */
export function heatmap(matrix, labels) {
  const head = h("tr", {}, h("th", { scope: "col", class: "corner", text: "true \\ predicted" }),
    labels.map((l) => h("th", { scope: "col", class: "col-label", title: l, text: l })));
  const body = matrix.map((row, i) => {
    const total = row.reduce((a, b) => a + b, 0) || 1;
    return h("tr", {}, h("th", { scope: "row", text: labels[i] ?? String(i) }),
      row.map((count, j) => {
        const share = count / total;
        const cell = h("td", {
          class: ["heat", i === j ? "diag" : "", share > 0.55 ? "dark" : ""],
          title: `true ${labels[i]}, predicted ${labels[j]}: ${count} (${fmtPct(share, 0)} of the row)`,
          style: { "--share": share.toFixed(3) },
          text: String(count),
        });
        return cell;
      }));
  });
  return h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "confusion matrix" },
    h("table", { class: "heatmap" },
      h("caption", { text: "Rows: the true label; columns: the predicted one (validation split)." }),
      h("thead", {}, head), h("tbody", {}, body)));
}
