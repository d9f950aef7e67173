// The map's drawing, in a worker on an OffscreenCanvas: however large the screen, rasterising the map never
// blocks the page's own frames. Outlines, roads and labels are drawn into an off-screen layer once per layout
// (and when a district's health level changes); each draw copies that layer and fills the devices in a
// handful of batched paths. Devices arrive packed in typed arrays (see palette.js and citymap.js).
import { COLORS, KIND_CODES, MARK_CODES, ROAD_STYLE, SEV_COLORS, STATE_CODES } from "./palette.js";

const S = {
  canvas: null, ctx: null, layer: null, labels: {}, allowInset: true,
  city: null, focus: null, highlight: false, w: 1, h: 1, dpr: 1, rem: 14,
  views: [], layerKey: "", last: null, draws: 0,
};

self.onmessage = (ev) => {
  const m = ev.data;
  if (m.type === "init") {
    S.canvas = m.canvas;
    S.ctx = S.canvas.getContext("2d");
    S.layer = new OffscreenCanvas(1, 1);
    S.labels = m.labels;
    S.allowInset = m.inset;
  } else if (m.type === "city") {
    S.city = m.city;
    layout();
  } else if (m.type === "resize") {
    Object.assign(S, { w: m.w, h: m.h, dpr: m.dpr, rem: m.rem });
    layout();
  } else if (m.type === "focus") {
    S.focus = m.bbox;
    S.highlight = m.highlight;
    layout();
  } else if (m.type === "draw") {
    S.last = m;
    draw(true);
  }
};

function extend(b, lon, lat) {
  b[0] = Math.min(b[0], lon); b[1] = Math.min(b[1], lat); b[2] = Math.max(b[2], lon); b[3] = Math.max(b[3], lat);
}

function padBox(b, frac) {
  const mx = (b[2] - b[0]) * frac, my = (b[3] - b[1]) * frac;
  return [b[0] - mx, b[1] - my, b[2] + mx, b[3] + my];
}

function bboxOf(districts) {
  const b = [Infinity, Infinity, -Infinity, -Infinity];
  for (const d of districts) for (const ring of d.rings) for (const [lon, lat] of ring) extend(b, lon, lat);
  return b;
}

/** The dense city centre, where most devices are: districts far denser than the median, else those flagged urban. */
function coreDistricts(districts) {
  const dens = districts.filter((d) => d.density > 0).map((d) => d.density).sort((a, b) => a - b);
  if (dens.length >= 4) {
    const median = dens[Math.floor(dens.length / 2)];
    const core = districts.filter((d) => d.density >= 3 * median);
    if (core.length) return core;
  }
  return districts.filter((d) => d.urban);
}

function makeView(rect, bbox, inset) {
  const [rx, ry, rw, rh] = rect;
  const [x0, y0, x1, y1] = bbox;
  const u = S.rem * S.dpr;
  const kx = Math.cos(((y0 + y1) / 2) * Math.PI / 180); // equirectangular, true to scale at the city's latitude
  const pad = 0.8 * u + (inset ? 1.6 * u : 0);
  const scale = Math.min((rw - 2 * pad) / ((x1 - x0) * kx), (rh - 2 * pad) / (y1 - y0));
  const ox = rx + (rw - (x1 - x0) * kx * scale) / 2;
  const oy = ry + (rh - (y1 - y0) * scale) / 2 + (inset ? 0.6 * u : 0);
  const params = { rect, bbox, inset, x0, y1, kx, scale, ox, oy };
  const proj = (lon, lat) => [ox + (lon - x0) * kx * scale, oy + (y1 - lat) * scale];
  const path = (rings, close) => {
    const p = new Path2D();
    for (const ring of rings) {
      ring.forEach(([lon, lat], i) => {
        const [x, y] = proj(lon, lat);
        if (i === 0) p.moveTo(x, y); else p.lineTo(x, y);
      });
      if (close) p.closePath();
    }
    return p;
  };
  return { ...params, proj, frame: null, labels: [],
    districts: S.city.districts.map((d, i) => ({ d, i, path: path(d.rings, true) })),
    roads: S.city.roads.map((r) => ({ cls: r.cls, path: path([r.pts], false) })) };
}

// A name that would overlap one already placed falls back to the district code, then is left out.
function placeLabels(view, skip) {
  const ctx = S.ctx;
  const size = (view.inset ? 1.25 : 1.0) * S.rem * S.dpr;
  ctx.font = `600 ${size}px sans-serif`;
  const boxes = [];
  const [rx, ry, rw, rh] = view.rect;
  const fits = (x, y, text) => {
    const w = ctx.measureText(text).width + 0.2 * size;
    const b = [x - w / 2, y - 0.65 * size, x + w / 2, y + 0.65 * size];
    if (b[0] < rx || b[2] > rx + rw || b[1] < ry || b[3] > ry + rh) return null;
    return boxes.some((o) => b[0] < o[2] && b[2] > o[0] && b[1] < o[3] && b[3] > o[1]) ? null : b;
  };
  const order = [...view.districts].sort((a, b) => (b.d.urban === view.inset) - (a.d.urban === view.inset));
  for (const { d } of order) {
    if (skip.has(d.code)) continue;
    const [x, y0] = view.proj(d.seat[0], d.seat[1]);
    for (const [text, dy] of [[d.name, 0], [d.name, -1.2 * size], [d.name, 1.2 * size], [d.code, 0]]) {
      const box = fits(x, y0 + dy, text);
      if (box) {
        boxes.push(box);
        view.labels.push({ text, x, y: y0 + dy, size });
        break;
      }
    }
  }
}

function layout() {
  if (!S.canvas) return;
  S.canvas.width = S.layer.width = S.w;
  S.canvas.height = S.layer.height = S.h;
  S.views = [];
  S.layerKey = "";
  if (S.city) {
    const { w, h } = S;
    const full = S.focus || S.city.bbox;
    const urban = S.focus ? [] : coreDistricts(S.city.districts);
    const ub = urban.length ? padBox(bboxOf(urban), 0.15) : null;
    const area = (b) => (b[2] - b[0]) * (b[3] - b[1]);
    if (S.allowInset && ub && area(ub) < 0.2 * area(full) && Math.min(w, h) > 200) {
      const gap = 0.6 * S.rem * S.dpr;
      const wide = w / h >= 1.25;
      const split = wide ? Math.round(w * 0.52) : Math.round(h * 0.56);
      const main = makeView(wide ? [0, 0, split, h] : [0, 0, w, split], full, false);
      const inset = makeView(wide ? [split + gap, 0, w - split - gap, h] : [0, split + gap, w, h - split - gap], ub, true);
      main.frame = ub;
      const core = new Set(urban.map((d) => d.code));
      placeLabels(main, core);
      placeLabels(inset, new Set(S.city.districts.filter((d) => !core.has(d.code)).map((d) => d.code)));
      S.views = [main, inset];
    } else {
      const main = makeView([0, 0, w, h], full, false);
      placeLabels(main, new Set());
      S.views = [main];
    }
  }
  // The page picks devices under a click with the same projection.
  self.postMessage({ type: "layout", views: S.views.map(({ rect, bbox, inset, x0, y1, kx, scale, ox, oy }) =>
    ({ rect, bbox, inset, x0, y1, kx, scale, ox, oy })) });
  draw();
}

/** Outlines tinted by district health, roads and names: re-rendered only when a district's level changes. */
function renderLayer(levels) {
  const key = levels ? levels.join() : "";
  if (key === S.layerKey) return;
  S.layerKey = key;
  const ctx = S.layer.getContext("2d");
  const u = S.dpr * (S.rem / 14);
  ctx.clearRect(0, 0, S.w, S.h);
  for (const view of S.views) {
    const [rx, ry, rw, rh] = view.rect;
    ctx.save();
    ctx.beginPath();
    ctx.rect(rx, ry, rw, rh);
    ctx.clip();
    if (view.inset) {
      ctx.fillStyle = "#0a1322";
      ctx.fillRect(rx, ry, rw, rh);
    }
    // Districts tinted by their worst health, so a failing area is visible from across the room.
    for (const { i, path } of view.districts) {
      const lv = levels ? levels[i] : null;
      ctx.fillStyle = lv === "bad" ? "#3a1a26" : lv === "warn" ? "#33291c" : "#101d33";
      ctx.fill(path);
    }
    ctx.lineJoin = "round";
    ctx.lineCap = "round";
    for (const { cls, path } of view.roads) {
      const [color, width] = ROAD_STYLE[cls] || ROAD_STYLE.urban;
      ctx.strokeStyle = color;
      ctx.lineWidth = width * u * (view.inset ? 1.4 : 1);
      ctx.stroke(path);
    }
    ctx.strokeStyle = "#4a6a9c";
    ctx.lineWidth = 1.4 * u;
    for (const { path } of view.districts) ctx.stroke(path);
    if (view.frame) { // where the inset is
      const [a, b] = view.proj(view.frame[0], view.frame[3]);
      const [c, d] = view.proj(view.frame[2], view.frame[1]);
      ctx.setLineDash([4 * u, 3 * u]);
      ctx.strokeStyle = "#8fa3c0";
      ctx.lineWidth = 1.2 * u;
      ctx.strokeRect(a, b, c - a, d - b);
      ctx.setLineDash([]);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    for (const l of view.labels) {
      ctx.font = `600 ${l.size}px sans-serif`;
      ctx.lineWidth = 0.25 * l.size;
      ctx.strokeStyle = "rgba(7,12,22,0.9)";
      ctx.strokeText(l.text, l.x, l.y);
      ctx.fillStyle = "#c9d6ea";
      ctx.fillText(l.text, l.x, l.y);
    }
    if (view.inset) {
      ctx.strokeStyle = "#2b3d5c";
      ctx.lineWidth = 1.5 * u;
      ctx.strokeRect(rx + 0.5, ry + 0.5, rw - 1, rh - 1);
      ctx.textAlign = "left";
      ctx.textBaseline = "top";
      ctx.font = `600 ${0.95 * S.rem * S.dpr}px sans-serif`;
      ctx.fillStyle = "#8fa3c0";
      ctx.fillText(S.labels.urban_core, rx + 0.5 * S.rem * S.dpr, ry + 0.4 * S.rem * S.dpr);
    }
    ctx.restore();
  }
}

/** `reply`: answer a draw request (the page sends the next one only then); redraws after a layout do not. */
function draw(reply = false) {
  if (!S.canvas) return;
  const t0 = performance.now();
  const { ctx, w, h, dpr, rem } = S;
  ctx.clearRect(0, 0, w, h);
  if (!S.views.length) {
    ctx.fillStyle = "#8fa3c0";
    ctx.font = `${rem * dpr}px sans-serif`;
    ctx.fillText(S.labels.loading_map, 20 * dpr, 30 * dpr);
    if (reply) self.postMessage({ type: "drawn", ms: 0, drawn: 0, draws: S.draws, reply });
    return;
  }
  const m = S.last;
  renderLayer(m ? m.levels : null);
  ctx.drawImage(S.layer, 0, 0);
  if (m) for (const view of S.views) drawDevices(view, m);
  S.draws++;
  self.postMessage({ type: "drawn", ms: performance.now() - t0, drawn: m ? m.n : 0, draws: S.draws, reply });
}

function drawDevices(view, m) {
  const { ctx, dpr, rem } = S;
  const { n, pos, code, mark } = m;
  const [rx, ry, rw, rh] = view.rect;
  ctx.save();
  ctx.beginPath();
  ctx.rect(rx, ry, rw, rh);
  ctx.clip();
  const scale = n > 3000 ? 0.16 : n > 800 ? 0.22 : n > 100 ? 0.3 : 0.42;
  const base = Math.max(1.6 * dpr, scale * rem * dpr * (view.inset || S.focus ? 1.3 : 1));
  const { x0, y1, kx, scale: k, ox, oy } = view;
  // Project once, keep only what falls inside this view, and bucket by (state, kind, highlighted).
  const xs = new Float32Array(n), ys = new Float32Array(n);
  const buckets = new Map();
  const rings = new Map();
  for (let i = 0; i < n; i++) {
    const x = ox + (pos[2 * i] - x0) * kx * k, y = oy + (y1 - pos[2 * i + 1]) * k;
    if (x < rx - base || x > rx + rw + base || y < ry - base || y > ry + rh + base) continue;
    xs[i] = x; ys[i] = y;
    const key = code[i] & 0x1f; // state | kind << 2 | highlight << 4
    let list = buckets.get(key);
    if (!list) buckets.set(key, (list = []));
    list.push(i);
    if (mark[i]) {
      let r = rings.get(mark[i]);
      if (!r) rings.set(mark[i], (r = []));
      r.push(i);
    }
  }
  for (let state = 0; state < STATE_CODES.length; state++) {
    for (let kind = 0; kind < KIND_CODES.length; kind++) {
      for (const big of S.highlight ? [0, 1] : [0]) {
        const list = buckets.get(state | (kind << 2) | (big << 4));
        if (!list) continue;
        const r = (state >= 2 ? base * 1.5 : base) * (big ? 2.2 : 1);
        ctx.beginPath();
        for (const i of list) shape(ctx, kind, xs[i], ys[i], r);
        ctx.globalAlpha = S.highlight && !big ? 0.45 : 1; // with a focus set, the rest is context only
        ctx.fillStyle = COLORS[STATE_CODES[state]];
        ctx.fill();
        ctx.strokeStyle = "rgba(0,0,0,0.75)";
        ctx.lineWidth = Math.max(1, r * 0.25);
        ctx.stroke();
        ctx.globalAlpha = 1;
      }
    }
  }
  // Rings: faults the device's own state does not show (amber), then members of live incidents in their
  // severity's colour, drawn last so they are never hidden.
  const fault = MARK_CODES.indexOf("fault");
  for (const c of [fault, 5, 4, 3, 2, 1]) {
    const list = rings.get(c);
    if (!list) continue;
    const r = (c === fault ? base * 2.4 : base * 2.9) * (S.highlight ? 1.8 : 1);
    ctx.beginPath();
    for (const i of list) {
      ctx.moveTo(xs[i] + r, ys[i]);
      ctx.arc(xs[i], ys[i], r, 0, Math.PI * 2);
    }
    ctx.strokeStyle = c === fault ? COLORS.degraded : SEV_COLORS[MARK_CODES[c]];
    ctx.lineWidth = Math.max(1.5 * dpr, r * 0.2);
    ctx.stroke();
  }
  ctx.restore();
}

function shape(ctx, kind, x, y, r) {
  if (kind === 2) { // camera
    ctx.rect(x - r, y - r, 2 * r, 2 * r);
  } else if (kind === 1) { // bts
    // Closed by a line back to the apex, not closePath(): Chromium's closePath costs time proportional to
    // the path so far, which made 3,000 triangles in one path quadratic.
    ctx.moveTo(x, y - r * 1.25);
    ctx.lineTo(x + r * 1.15, y + r * 0.85);
    ctx.lineTo(x - r * 1.15, y + r * 0.85);
    ctx.lineTo(x, y - r * 1.25);
  } else {
    ctx.moveTo(x + r, y);
    ctx.arc(x, y, r, 0, Math.PI * 2);
  }
}
