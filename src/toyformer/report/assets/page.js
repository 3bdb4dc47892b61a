// The report page: reads the inlined data (gzip-compressed JSON in base64) and draws the claims, the curves on a
// log step axis, the matrices under one step slider, a group's bands and member picker, a sweep's phase diagrams.
// Plain DOM, SVG and canvas: the page fetches nothing.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const REFS = ["#6b6b6b", "#9c7a16", "#7b4fbf", "#2a7f4f", "#111111", "#b5651d"];
const PALETTE = ["#2f5fa7", "#d1495b", "#2a9d5c", "#e08e0b", "#7b4fbf", "#00838f", "#8c564b", "#c2185b", "#546e7a"];

// ---------------------------------------------------------------------------------------------------------------
// small helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) node.setAttribute(k, v);
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function fmt(x) {
  if (x === null || x === undefined || (typeof x === "number" && !Number.isFinite(x))) return "—";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x) && Math.abs(x) < 1e7) return String(x);
  return Number(x.toPrecision(4)).toString();
}

const tip = {
  node: null,
  show(event, text) {
    if (!this.node) this.node = document.body.appendChild(el("div", { id: "tip" }));
    this.node.textContent = text;
    this.node.style.display = "block";
    const x = Math.min(event.clientX + 14, window.innerWidth - this.node.offsetWidth - 8);
    const y = Math.min(event.clientY + 14, window.innerHeight - this.node.offsetHeight - 8);
    this.node.style.left = x + "px";
    this.node.style.top = y + "px";
  },
  hide() {
    if (this.node) this.node.style.display = "none";
  },
};

async function unpack(text) {
  const bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return JSON.parse(await new Response(stream).text());
}

function half(bits) {
  // IEEE 754 binary16 → number
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >> 10) & 0x1f;
  const frac = bits & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

const decoded = new WeakMap();

function decode(enc) {
  // {shape, dtype, data} → {shape, values: Float64Array}
  if (!enc) return null;
  if (decoded.has(enc)) return decoded.get(enc);
  const raw = Uint8Array.from(atob(enc.data), (c) => c.charCodeAt(0));
  const view = new DataView(raw.buffer);
  const size = { f2: 2, f4: 4, i4: 4, u1: 1 }[enc.dtype];
  const n = raw.length / size;
  const values = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const o = i * size;
    if (enc.dtype === "f2") values[i] = half(view.getUint16(o, true));
    else if (enc.dtype === "f4") values[i] = view.getFloat32(o, true);
    else if (enc.dtype === "i4") values[i] = view.getInt32(o, true);
    else values[i] = raw[o];
  }
  const out = { shape: enc.shape, values };
  decoded.set(enc, out);
  return out;
}

function mix(stops, t) {
  t = Math.max(0, Math.min(1, t));
  const x = t * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2);
  const f = x - i;
  return stops[i].map((a, k) => Math.round(a + f * (stops[i + 1][k] - a)));
}

// diverging: negative blue, zero white, positive red; sequential: dark blue through teal to yellow
const DIVERGING = [[35, 80, 155], [120, 165, 210], [246, 246, 246], [230, 140, 110], [170, 30, 45]];
const SEQUENTIAL = [[25, 20, 70], [45, 85, 160], [35, 150, 150], [130, 200, 90], [250, 230, 80]];

// ---------------------------------------------------------------------------------------------------------------
// the log step axis shared by every curve

function stepScale(steps, width) {
  const top = Math.log10(Math.max(...steps, 1) + 1);
  return (s) => (Math.log10(s + 1) / (top || 1)) * width;
}

function stepTicks(maxStep) {
  const ticks = [0];
  for (let t = 10; t <= maxStep * 1.0001; t *= 10) ticks.push(t);
  return ticks;
}

function niceRange(values) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (v === null || v === undefined || !Number.isFinite(v)) continue;
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  if (!Number.isFinite(lo)) return [0, 1];
  if (lo === hi) {
    const pad = Math.abs(lo) * 0.1 || 1;
    return [lo - pad, hi + pad];
  }
  const pad = (hi - lo) * 0.06;
  return [lo - pad, hi + pad];
}

function pathOf(xs, ys) {
  let d = "";
  let pen = false;
  for (let i = 0; i < xs.length; i++) {
    if (ys[i] === null || ys[i] === undefined || !Number.isFinite(ys[i])) {
      pen = false;
      continue;
    }
    d += (pen ? "L" : "M") + xs[i].toFixed(1) + "," + ys[i].toFixed(1);
    pen = true;
  }
  return d;
}

function bandPath(xs, lows, highs) {
  // closed polygons over the runs of steps where both ends exist
  let d = "";
  let run = [];
  const flush = () => {
    if (run.length > 1) {
      d += "M" + run.map((i) => xs[i].toFixed(1) + "," + highs[i].toFixed(1)).join("L");
      d += "L" + run.slice().reverse().map((i) => xs[i].toFixed(1) + "," + lows[i].toFixed(1)).join("L") + "Z";
    }
    run = [];
  };
  for (let i = 0; i < xs.length; i++) {
    if (Number.isFinite(lows[i]) && Number.isFinite(highs[i])) run.push(i);
    else flush();
  }
  flush();
  return d;
}

// A panel of curves. series: [{name, values, color, band?: {low, high, min, max}}], refs, marks; steps shared.
function curvePanel(state, panel) {
  const W = 400;
  const H = 210;
  const m = { l: 56, r: 10, t: 8, b: 28 };
  const w = W - m.l - m.r;
  const h = H - m.t - m.b;
  const steps = state.steps;
  const x = stepScale(steps, w);
  const box = el("div", { class: "card curve" }, el("h3", { text: panel.title }));
  const root = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  box.append(root);
  const legend = el("div", { class: "legend" });
  box.append(legend);
  const plot = svg("g", { transform: `translate(${m.l},${m.t})` });
  root.append(plot);

  function draw() {
    plot.replaceChildren();
    legend.replaceChildren();
    const series = panel.series.map((name, k) => state.curve(name, k));
    const all = [];
    for (const s of series) {
      all.push(...s.values);
      if (s.band) all.push(...s.band.min, ...s.band.max);
      if (s.member) all.push(...s.member);
    }
    for (const r of panel.refs) all.push(r.value);
    const [lo, hi] = niceRange(all);
    const y = (v) => h - ((v - lo) / (hi - lo)) * h;
    // axes and grid
    for (let k = 0; k <= 4; k++) {
      const v = lo + ((hi - lo) * k) / 4;
      plot.append(svg("line", { class: "gridline", x1: 0, x2: w, y1: y(v), y2: y(v) }));
      plot.append(svg("text", { x: -4, y: y(v) + 3, "text-anchor": "end" }, fmt(v)));
    }
    for (const t of stepTicks(Math.max(...steps))) {
      plot.append(svg("line", { class: "axis", x1: x(t), x2: x(t), y1: h, y2: h + 4 }));
      plot.append(svg("text", { x: x(t), y: h + 15, "text-anchor": "middle" }, fmt(t)));
    }
    plot.append(svg("line", { class: "axis", x1: 0, x2: w, y1: h, y2: h }));
    plot.append(svg("line", { class: "axis", x1: 0, x2: 0, y1: 0, y2: h }));
    plot.append(svg("text", { x: w, y: h + 26, "text-anchor": "end" }, "step (log axis)"));
    const xs = steps.map(x);
    for (const mk of state.marks) {
      plot.append(svg("line", { class: "mark", x1: x(mk.step), x2: x(mk.step), y1: 0, y2: h }, svg("title", {}, `${mk.label}: step ${mk.step}`)));
    }
    panel.refs.forEach((r, k) => {
      const color = REFS[k % REFS.length];
      plot.append(svg("line", { x1: 0, x2: w, y1: y(r.value), y2: y(r.value), stroke: color, "stroke-dasharray": k % 2 ? "2 3" : "6 3", "stroke-width": 1 }));
      legend.append(el("span", {}, el("span", { class: "sw ref", style: `border-color:${color}` }), `${r.label} ${fmt(r.value)}`));
    });
    for (const s of series) {
      if (s.band) {
        plot.append(svg("path", { d: bandPath(xs, s.band.min.map(y), s.band.max.map(y)), fill: s.color, opacity: 0.12 }));
        plot.append(svg("path", { d: bandPath(xs, s.band.low.map(y), s.band.high.map(y)), fill: s.color, opacity: 0.3 }));
      }
      plot.append(svg("path", { d: pathOf(xs, s.values.map((v) => (v === null ? null : y(v)))), fill: "none", stroke: s.color, "stroke-width": 1.6 }));
      if (s.member) {
        plot.append(svg("path", { d: pathOf(xs, s.member.map((v) => (v === null ? null : y(v)))), fill: "none", stroke: s.color, "stroke-width": 1, "stroke-dasharray": "4 2" }));
      }
      legend.append(el("span", {}, el("span", { class: "sw", style: `background:${s.color}` }), s.name));
    }
    const cursor = svg("line", { class: "cursor", x1: 0, x2: 0, y1: 0, y2: h });
    plot.append(cursor);
    panel.cursor = cursor;
    panel.x = x;
    moveCursor();
    const hit = svg("rect", { x: 0, y: 0, width: w, height: h, fill: "transparent" });
    const nearest = (event) => {
      const px = event.clientX - root.getBoundingClientRect().left - m.l;
      let best = 0;
      for (let i = 0; i < xs.length; i++) if (Math.abs(xs[i] - px) < Math.abs(xs[best] - px)) best = i;
      return best;
    };
    hit.addEventListener("mousemove", (event) => {
      const best = nearest(event);
      const lines = [`step ${steps[best]}`];
      for (const s of series) {
        let line = `${s.name}: ${fmt(s.values[best])}`;
        if (s.band) line += `  (95%: ${fmt(s.band.low[best])} … ${fmt(s.band.high[best])}; range ${fmt(s.band.min[best])} … ${fmt(s.band.max[best])})`;
        if (s.member) line += `  · ${state.memberName()}: ${fmt(s.member[best])}`;
        lines.push(line);
      }
      tip.show(event, lines.join("\n"));
    });
    hit.addEventListener("mouseleave", () => tip.hide());
    hit.addEventListener("click", (event) => state.setIndex(nearest(event)));
    plot.append(hit);
  }

  function moveCursor() {
    const s = steps[state.index];
    panel.cursor.setAttribute("x1", panel.x(s));
    panel.cursor.setAttribute("x2", panel.x(s));
  }

  panel.draw = draw;
  panel.moveCursor = moveCursor;
  draw();
  return box;
}

// ---------------------------------------------------------------------------------------------------------------
// matrix views

function labelAt(labels, panel, i, pattern) {
  if (!labels) return String(i);
  const { shape, values } = labels;
  const v = shape.length === 2 ? values[panel * shape[1] + i] : values[i];
  if (v === undefined || v < 0) return "—";
  return pattern.replace("{}", String(v));
}

function nestedToMatrix(value) {
  // a metric read whole: list of lists, dict → list, dict → dict → {rows, cols, values}
  if (value === null || value === undefined) return null;
  let rowNames;
  let rows;
  if (Array.isArray(value)) {
    rows = value;
    rowNames = value.map((_, i) => String(i + 1));
  } else {
    rowNames = Object.keys(value);
    rows = rowNames.map((k) => value[k]);
  }
  let colNames;
  if (rows.length && !Array.isArray(rows[0]) && typeof rows[0] === "object") {
    colNames = Object.keys(rows[0]);
    rows = rows.map((r) => colNames.map((c) => r[c]));
  } else {
    colNames = (rows[0] || []).map((_, j) => String(j));
  }
  const values = new Float64Array(rowNames.length * colNames.length);
  rows.forEach((r, i) => r.forEach((v, j) => (values[i * colNames.length + j] = typeof v === "number" ? v : NaN)));
  return { shape: [rowNames.length, colNames.length], values, rowNames, colNames };
}

function heatmapView(state, view) {
  const box = el("div", { class: "card-group grid" });
  const cards = [];

  function matrixAt() {
    if (view.metric) {
      const series = state.metric(view.metric);
      return series ? nestedToMatrix(series[state.index]) : null;
    }
    return state.matrix(view.matrix);
  }

  function draw() {
    const mat = matrixAt();
    const panels = mat && mat.shape.length === 3 ? mat.shape[0] : 1;
    while (cards.length < panels) {
      const card = el("div", { class: "card heatmap" });
      cards.push(card);
      box.append(card);
    }
    cards.forEach((c, k) => (c.style.display = k < panels ? "" : "none"));
    for (let p = 0; p < panels; p++) drawPanel(cards[p], mat, p, panels);
  }

  function drawPanel(card, mat, p, panels) {
    let title;
    if (view.titles) title = view.title.replace("{}", view.titles[p] ?? String(p + 1));
    else if (panels > 1) title = view.title.replace("{}", String(p + 1));
    else title = view.title.replace(" {}", "").replace("{}", "");
    card.replaceChildren(el("h3", { text: title }));
    if (!mat) {
      card.append(el("p", { class: "muted", text: `not stored at step ${state.steps[state.index]}` }));
      return;
    }
    const rows = mat.shape.length === 3 ? mat.shape[1] : mat.shape[0];
    const cols = mat.shape[mat.shape.length - 1];
    const offset = mat.shape.length === 3 ? p * rows * cols : 0;
    const get = (i, j) => mat.values[offset + i * cols + j];
    let lo = Infinity;
    let hi = -Infinity;
    for (let i = 0; i < rows * cols; i++) {
      const v = mat.values[offset + i];
      if (Number.isFinite(v)) {
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
    }
    const diverging = !view.sequential;
    if (diverging) {
      const top = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
      lo = -top;
      hi = top;
    } else if (!(hi > lo)) {
      hi = lo + 1;
    }
    // square cells, except for a few long rows (chains, heads over offsets), which get taller cells
    const fit = (n) => Math.max(2, Math.min(28, Math.floor(360 / n)));
    const square = rows > 8 && cols > 8;
    const cw = square ? fit(Math.max(rows, cols)) : fit(cols);
    const chh = square ? cw : Math.max(cw, Math.min(22, fit(rows)));
    const canvas = el("canvas", { width: cols * cw, height: rows * chh });
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(cols * cw, rows * chh);
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) {
        const v = get(i, j);
        const rgb = Number.isFinite(v)
          ? mix(diverging ? DIVERGING : SEQUENTIAL, (v - lo) / (hi - lo))
          : [225, 225, 225];
        for (let a = 0; a < chh; a++) {
          for (let b = 0; b < cw; b++) {
            const o = ((i * chh + a) * cols * cw + j * cw + b) * 4;
            image.data[o] = rgb[0];
            image.data[o + 1] = rgb[1];
            image.data[o + 2] = rgb[2];
            image.data[o + 3] = 255;
          }
        }
      }
    }
    ctx.putImageData(image, 0, 0);
    const groups = view.groups ? state.matrix(view.groups) : null;
    if (groups) {
      ctx.strokeStyle = "rgba(0,0,0,0.55)";
      ctx.lineWidth = 1;
      const at = (i) => (groups.shape.length === 2 ? groups.values[p * groups.shape[1] + i] : groups.values[i]);
      const n = groups.shape[groups.shape.length - 1];
      for (let i = 1; i < n; i++) {
        if (at(i) !== at(i - 1)) {
          if (i < rows) {
            ctx.beginPath();
            ctx.moveTo(0, i * chh + 0.5);
            ctx.lineTo(cols * cw, i * chh + 0.5);
            ctx.stroke();
          }
          if (i < cols) {
            ctx.beginPath();
            ctx.moveTo(i * cw + 0.5, 0);
            ctx.lineTo(i * cw + 0.5, rows * chh);
            ctx.stroke();
          }
        }
      }
    }
    const ticks = view.ticks ? state.matrix(view.ticks) : null;
    const name = (i, axis) => {
      if (mat.rowNames) return axis === 0 ? mat.rowNames[i] : mat.colNames[i];
      let text = ticks ? labelAt(ticks, p, i, view.tick || "{}") : String(i + 1);
      if (groups) text += " (" + labelAt(groups, p, i, view.group || "{}") + ")";
      return text;
    };
    const cellTicks = view.cellTicks ? state.matrix(view.cellTicks) : null;
    canvas.addEventListener("mousemove", (event) => {
      const i = Math.floor(event.offsetY / chh);
      const j = Math.floor(event.offsetX / cw);
      if (i < 0 || j < 0 || i >= rows || j >= cols) return tip.hide();
      let text = `${view.rowLabel || "row"} ${name(i, 0)}\n${view.colLabel || "column"} ${name(j, 1)}`;
      if (cellTicks) text += ` (${labelAt(cellTicks, i, j, view.cellTick || "{}")})`;
      tip.show(event, `${text}\nvalue ${fmt(get(i, j))}\nstep ${state.steps[state.index]}`);
    });
    canvas.addEventListener("mouseleave", () => tip.hide());
    card.append(canvas);
    if (mat.rowNames) {
      card.append(el("div", { class: "scale" }, `rows: ${mat.rowNames.join(", ")} · columns: ${mat.colNames.join(", ")}`));
    }
    const bar = el("canvas", { width: 120, height: 10 });
    const bctx = bar.getContext("2d");
    for (let k = 0; k < 120; k++) {
      const rgb = mix(diverging ? DIVERGING : SEQUENTIAL, k / 119);
      bctx.fillStyle = `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
      bctx.fillRect(k, 0, 1, 10);
    }
    card.append(el("div", { class: "scale" }, fmt(lo), bar, fmt(hi)));
  }

  view.draw = draw;
  draw();
  return box;
}

function barsView(state, view) {
  const card = el("div", { class: "card bars" });
  function draw() {
    card.replaceChildren(el("h3", { text: view.title }));
    const series = state.metric(view.metric);
    const value = series ? series[state.index] : null;
    if (!value) {
      card.append(el("p", { class: "muted", text: `nothing at step ${state.steps[state.index]}` }));
      return;
    }
    const names = Object.keys(value);
    let top = view.max || 0;
    if (!top) for (const s of series) if (s) for (const v of Object.values(s)) top = Math.max(top, Math.abs(v) || 0);
    top = top || 1;
    const W = Math.max(220, names.length * 34 + 50);
    const H = 180;
    const h = 130;
    const root = svg("svg", { width: W, height: H });
    const g = svg("g", { transform: "translate(40,10)" });
    root.append(g);
    g.append(svg("line", { class: "axis", x1: 0, x2: names.length * 34, y1: h, y2: h }));
    for (const t of [0, 0.5, 1]) g.append(svg("text", { x: -4, y: h - t * h + 3, "text-anchor": "end" }, fmt(t * top)));
    names.forEach((n, k) => {
      const v = value[n];
      const bh = Math.max(0, (Math.abs(v) / top) * h);
      const hot = (view.highlight || []).includes(n);
      const rect = svg("rect", { x: k * 34 + 4, y: h - bh, width: 26, height: bh, fill: hot ? "#d1495b" : "#2f5fa7" });
      rect.addEventListener("mousemove", (event) => tip.show(event, `${view.label || ""}${n}: ${fmt(v)}\nstep ${state.steps[state.index]}`));
      rect.addEventListener("mouseleave", () => tip.hide());
      g.append(rect);
      g.append(svg("text", { x: k * 34 + 17, y: h + 13, "text-anchor": "middle" }, n));
    });
    card.append(root);
    if (view.note) card.append(el("div", { class: "scale", text: view.note }));
  }
  view.draw = draw;
  draw();
  return card;
}

function valuesView(state, view) {
  const card = el("div", { class: "card values" });
  function draw() {
    const table = el("table", { class: "values" });
    for (const name of view.metrics) {
      const series = state.metric(name);
      const scalar = state.scalar(name);
      const v = series ? series[state.index] : scalar ? scalar[state.index] : undefined;
      if (v === undefined) continue;
      table.append(el("tr", {}, el("td", { text: name }), el("td", { text: typeof v === "object" && v !== null ? JSON.stringify(v) : fmt(v) })));
    }
    card.replaceChildren(el("h3", { text: `${view.title} (step ${state.steps[state.index]})` }), table);
  }
  view.draw = draw;
  draw();
  return card;
}

const VIEWS = { heatmap: heatmapView, bars: barsView, values: valuesView };

// ---------------------------------------------------------------------------------------------------------------
// page parts

function header(data) {
  const nav = data.up ? el("nav", {}, el("a", { href: data.up.href, text: `↑ the ${data.up.label}'s page` })) : null;
  return el(
    "header",
    {},
    nav,
    el("h1", { text: data.title }),
    el("div", { class: "sub", text: `${data.kind} · ${data.subtitle || ""}` }),
    ...(data.notes || []).map((n) => el("div", { class: "note", text: n })),
  );
}

function claimsTable(rows, group) {
  const section = el("section", { id: "claims" }, el("h2", { text: "Claims" }));
  if (!rows.length) {
    section.append(el("p", { class: "muted", text: "This recipe states no claims." }));
    return section;
  }
  const head = group
    ? ["claim", "held", "share of seeds", "needed", "expected"]
    : ["claim", "held", "measured", "against", "expected"];
  const table = el("table", { class: "claims" }, el("tr", {}, ...head.map((h) => el("th", { text: h }))));
  let sanity = false;
  rows.forEach((r, k) => {
    if (r.sanity && !sanity) {
      sanity = true;
      table.append(el("tr", { class: "section" }, el("td", { colspan: 5, text: "sanity checks (bounds that hold at initialisation too; not results)" })));
    }
    const held = el("td", { class: r.ok ? "held" : "failed", text: r.ok ? "yes" : "NO" });
    let cells;
    if (group) {
      cells = [
        el("td", { class: "num measured", "data-value": JSON.stringify(r.share), text: `${fmt(100 * r.share)}%` }),
        el("td", { class: "num", "data-value": JSON.stringify(r.min_share), text: `≥ ${fmt(100 * r.min_share)}%` }),
      ];
    } else {
      cells = [
        el("td", { class: "num measured", "data-value": JSON.stringify(r.measured), text: fmt(r.measured) }),
        el("td", { class: "num", text: r.against || "" }),
      ];
    }
    const row = el("tr", { class: "claim", "data-index": k, "data-kind": r.sanity ? "sanity" : r.kind || "" }, el("td", { text: r.name }), held, ...cells, el("td", { class: "muted", text: r.expected }));
    if (group && r.members) row.title = `per seed: ${r.members.map(fmt).join(", ")}`;
    table.append(row);
  });
  section.append(table);
  return section;
}

function figures(data, prefix) {
  if (!data.figures || !data.figures.length) return null;
  return el(
    "section",
    { class: "figures" },
    el("h2", { text: "Figures (PNG files beside this page)" }),
    el("ul", {}, ...data.figures.map((f) => el("li", {}, el("a", { href: `${prefix}figures/${f}`, text: f })))),
  );
}

// ---------------------------------------------------------------------------------------------------------------
// a run or a group: curves and the slider

function trainingPage(data, app) {
  const group = data.kind === "group";
  const state = {
    steps: data.steps,
    index: data.steps.length - 1,
    marks: data.marks || [],
    member: 0,
    views: [],
    panels: [],
    source() {
      return group ? data.members[this.member] : data;
    },
    memberName() {
      return group ? data.members[this.member].name : "";
    },
    scalar(name) {
      const s = this.source().scalars[name];
      return s || null;
    },
    metric(name) {
      const m = this.source().metrics;
      return m && m[name] ? m[name] : null;
    },
    matrix(name) {
      const mats = this.source().matrices;
      if (!mats || !mats[name]) return null;
      const entry = mats[name];
      return decode(entry.static || entry.steps[this.index]);
    },
    curve(name, k) {
      const color = PALETTE[k % PALETTE.length];
      if (!group) return { name, color, values: data.scalars[name] || [] };
      const band = data.bands[name];
      const member = data.members[this.member].scalars[name] || null;
      return { name, color, values: band ? band.mean : [], band, member };
    },
    setIndex(i) {
      this.index = Math.max(0, Math.min(this.steps.length - 1, i));
      slider.value = String(this.index);
      refresh();
    },
  };

  app.append(header(data), claimsTable(data.claims, group));
  const label = el("span", { class: "step", id: "step-value" });
  const slider = el("input", { type: "range", id: "step-slider", min: 0, max: data.steps.length - 1, step: 1, value: state.index });
  slider.addEventListener("input", () => state.setIndex(Number(slider.value)));
  const controls = el("div", { class: "controls" }, el("label", { for: "step-slider", text: "probe step" }), slider, label);
  if (group) {
    const picker = el("select", { id: "member-picker" }, ...data.members.map((m, k) => el("option", { value: k, text: m.name })));
    picker.addEventListener("change", () => {
      state.member = Number(picker.value);
      link.href = data.members[state.member].href;
      link.textContent = `open ${data.members[state.member].name}'s page`;
      for (const p of state.panels) p.draw();
      refresh();
    });
    const link = el("a", { href: data.members[0].href, id: "member-link", text: `open ${data.members[0].name}'s page` });
    controls.append(el("label", { for: "member-picker", text: "member" }), picker, link);
  }
  app.append(controls);

  const matrixSection = el("section", { id: "matrices" }, el("h2", { text: group ? "The picked member's mechanism at this step" : "The mechanism at this step" }));
  const viewGrid = el("div", { class: "grid" });
  matrixSection.append(viewGrid);
  const missing = el("p", { class: "muted" });
  matrixSection.append(missing);
  for (const view of data.views) {
    const make = VIEWS[view.kind];
    if (!make) continue;
    state.views.push(view);
    viewGrid.append(make(state, view));
  }
  app.append(matrixSection);

  const curveSection = el("section", { id: "curves" }, el("h2", { text: group ? "Every metric over training: members' mean, 95% band of the mean (dark), range (light); dashed: the picked member" : "Every metric over training" }));
  const curveGrid = el("div", { class: "grid" });
  curveSection.append(curveGrid);
  if (state.marks.length) {
    curveSection.append(el("p", { class: "muted", text: "Dotted purple lines: " + state.marks.map((m) => `${m.label} (step ${fmt(m.step)})`).join("; ") }));
  }
  for (const panel of data.curves) {
    curveGrid.append(curvePanel(state, panel));
    state.panels.push(panel);
  }
  app.append(curveSection);
  const figs = figures(data, "");
  if (figs) app.append(figs);
  if (group) {
    app.append(
      el(
        "section",
        { id: "members" },
        el("h2", { text: "Members" }),
        el("ul", {}, ...data.members.map((m) => el("li", {}, el("a", { href: m.href, text: m.name }), ` · ${m.claims.filter((c) => c.ok).length} of ${m.claims.length} claims held`, m.notes.length ? ` · ${m.notes.join(", ")}` : ""))),
      ),
    );
  }

  function refresh() {
    const step = state.steps[state.index];
    label.textContent = `step ${step}  (${state.index + 1} of ${state.steps.length})`;
    label.dataset.step = String(step);
    const src = state.source();
    missing.textContent = group && !src.matrices ? `${src.name}'s matrices are not carried by this page (it would grow too large): open its own page.` : "";
    for (const v of state.views) v.draw();
    for (const p of state.panels) p.moveCursor();
  }
  refresh();
}

// ---------------------------------------------------------------------------------------------------------------
// a sweep: phase diagrams

function phasePlot(data, plot) {
  const section = el("div", { class: "card phase" }, el("h3", { text: plot.title }));
  const share = plot.share;
  for (const panel of plot.panels) {
    const cw = 100;
    const ch = 40;
    const m = { l: 150, t: 24, b: 40 };
    const W = m.l + panel.xs.length * cw + 10;
    const H = m.t + panel.ys.length * ch + m.b;
    const root = svg("svg", { width: W, height: H });
    root.append(
      svg(
        "defs",
        {},
        svg("pattern", { id: `hatch-${plot.id}`, width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" }, svg("line", { x1: 0, y1: 0, x2: 0, y2: 6, stroke: "#888", "stroke-width": 1.5 })),
      ),
    );
    root.append(svg("text", { x: m.l, y: 14 }, panel.title));
    const values = panel.cells.map((c) => c.value).filter((v) => v !== null);
    const lo = share ? 0 : Math.min(...values);
    const hi = share ? 1 : Math.max(...values);
    panel.ys.forEach((yv, i) => root.append(svg("text", { x: m.l - 6, y: m.t + i * ch + ch / 2 + 3, "text-anchor": "end" }, yv)));
    panel.xs.forEach((xv, j) => root.append(svg("text", { x: m.l + j * cw + cw / 2, y: m.t + panel.ys.length * ch + 14, "text-anchor": "middle" }, xv)));
    root.append(svg("text", { x: m.l + (panel.xs.length * cw) / 2, y: H - 6, "text-anchor": "middle" }, plot.x));
    root.append(svg("text", { x: 4, y: m.t - 8 }, plot.y || ""));
    for (const c of panel.cells) {
      const t = c.value === null ? null : hi > lo ? (c.value - lo) / (hi - lo) : 0.5;
      const rgb = t === null ? [220, 220, 220] : mix(SEQUENTIAL, t);
      const x = m.l + c.j * cw;
      const y = m.t + c.i * ch;
      const link = svg("a", { href: c.href, class: "cell", "data-cell": c.name });
      link.append(svg("rect", { x: x + 1, y: y + 1, width: cw - 2, height: ch - 2, fill: `rgb(${rgb.join(",")})` }));
      if (c.tie) link.append(svg("rect", { x: x + 1, y: y + 1, width: cw - 2, height: ch - 2, fill: `url(#hatch-${plot.id})`, "pointer-events": "none" }));
      if (c.status === "failed") link.append(svg("path", { d: `M${x + 8},${y + 6}L${x + cw - 8},${y + ch - 6}`, stroke: "#c00", "stroke-width": 2 }));
      const dark = t !== null && t < 0.5;
      link.append(svg("text", { x: x + cw / 2, y: y + ch / 2 - 2, "text-anchor": "middle", style: `fill:${dark ? "#fff" : "#111"};font-size:11px` }, c.status === "failed" ? "failed" : fmt(c.value)));
      if (c.note) link.append(svg("text", { x: x + cw / 2, y: y + ch / 2 + 11, "text-anchor": "middle", style: `fill:${dark ? "#ddd" : "#333"}` }, c.note));
      link.addEventListener("mousemove", (event) => tip.show(event, c.tip));
      link.addEventListener("mouseleave", () => tip.hide());
      root.append(link);
    }
    section.append(root);
  }
  section.append(el("div", { class: "scale", text: `colour: ${plot.value}${share ? " (share of seeds, 0 to 1)" : " (cell mean)"}; hatched: the theory's margin is a tie; click a cell to open its page` }));
  return section;
}

function sweepPage(data, app) {
  app.append(header(data));
  const claims = el("section", { id: "claims" }, el("h2", { text: "Grid claims" }));
  if (!data.checks.length) claims.append(el("p", { class: "muted", text: "This sweep states no grid claims." }));
  else {
    const table = el("table", { class: "claims" }, el("tr", {}, ...["claim", "held", "cells held", "not claimed (ties)", "expected"].map((h) => el("th", { text: h }))));
    data.checks.forEach((c, k) => {
      table.append(
        el(
          "tr",
          { class: "claim", "data-index": k },
          el("td", { text: c.name }),
          el("td", { class: c.ok ? "held" : "failed", text: c.ok ? "yes" : "NO" }),
          el("td", { class: "num measured", "data-value": JSON.stringify([c.held, c.cells]), text: `${c.held} of ${c.cells}` }),
          el("td", { class: "num", text: String((c.not_claimed || []).length) }),
          el("td", { class: "muted", text: c.expected }),
        ),
      );
    });
    claims.append(table);
  }
  app.append(claims);
  const plots = el("section", { id: "phase" }, el("h2", { text: "Phase diagrams" }));
  const grid = el("div", { class: "grid" });
  data.plots.forEach((p) => grid.append(phasePlot(data, p)));
  if (!data.plots.length) plots.append(el("p", { class: "muted", text: "This sweep draws no phase diagrams." }));
  plots.append(grid);
  app.append(plots);
  app.append(
    el(
      "section",
      { id: "cells" },
      el("h2", { text: "Cells" }),
      el("ul", {}, ...data.cells.map((c) => el("li", {}, c.status === "done" ? el("a", { href: c.href, text: c.name }) : c.name, ` · ${c.label} · ${c.status}${c.error ? ": " + c.error : ""}`))),
    ),
  );
  const figs = figures(data, "");
  if (figs) app.append(figs);
}

// ---------------------------------------------------------------------------------------------------------------

// a request the page's Content-Security-Policy refused: counted where a test (or a reader) can see it
let violations = 0;
document.addEventListener("securitypolicyviolation", (event) => {
  violations += 1;
  document.body.dataset.violations = String(violations);
  console.error(`blocked by the page's security policy: ${event.blockedURI}`);
});

async function main() {
  const app = document.getElementById("app");
  const data = await unpack(document.getElementById("data").textContent.trim());
  app.replaceChildren();
  if (data.kind === "sweep") sweepPage(data, app);
  else trainingPage(data, app);
  document.body.dataset.ready = "1";
}

main().catch((err) => {
  document.getElementById("app").append(el("p", { class: "error", text: `This page could not be drawn: ${err}` }));
  console.error(err);
});
