// The city map on a canvas: district outlines and roads from /api/city (shipped with the project, no tile
// server), every device as one small shape coloured by state, incident members ringed by severity.
// Outlines, roads and labels are drawn once per layout into an off-screen layer; a redraw copies that
// layer and fills the devices in a handful of batched paths, so 5,000+ devices cost a few milliseconds.
import { getJson } from "./util.js";

export const COLORS = { online: "#2ecc71", degraded: "#f5a623", offline: "#ff4d4f", unknown: "#8a94a6" };
export const SEV_COLORS = { critical: "#ff3b3b", major: "#ff7a45", minor: "#f5c542", warning: "#e8d44d", info: "#4da3ff" };
const STATES = ["unknown", "online", "degraded", "offline"]; // draw order: problems end up on top
const KINDS = ["traffic", "bts", "camera"];
let nextProjV = 1; // positions cached on devices are tagged with the layout that computed them, across maps
const ROAD_STYLE = {
  expressway: ["#b9853a", 3.2], national: ["#a27a3f", 2.6], arterial: ["#5d6f8f", 2.0],
  urban: ["#4b5a75", 1.5], provincial: ["#55627a", 1.5],
};

/** Load /api/city until it answers (the map is useless without it, and the server may be restarting). */
export async function loadCity() {
  for (let attempt = 0; ; attempt++) {
    try {
      return parseCity(await getJson("/api/city"));
    } catch (err) {
      console.warn("city map not loaded:", err.message);
      await new Promise((r) => setTimeout(r, Math.min(30_000, 1000 * 2 ** attempt)));
    }
  }
}

export function parseCity(doc) {
  const districts = [];
  const roads = [];
  const box = [Infinity, Infinity, -Infinity, -Infinity];
  for (const f of doc.features || []) {
    const p = f.properties || {};
    const g = f.geometry || {};
    if ((p.layer ?? "district") === "district" && (g.type === "Polygon" || g.type === "MultiPolygon")) {
      const rings = (g.type === "Polygon" ? [g.coordinates] : g.coordinates).map((poly) => poly[0]); // holes do not matter here
      let sx = 0, sy = 0, n = 0;
      for (const ring of rings) {
        for (const [lon, lat] of ring) {
          extend(box, lon, lat);
          sx += lon; sy += lat; n++;
        }
      }
      districts.push({ code: String(p.code ?? f.id), name: String(p.name ?? p.code ?? f.id), rings,
        seat: Array.isArray(p.seat) ? p.seat : [sx / n, sy / n], urban: p.urban === true,
        density: Number(p.population) > 0 ? Number(p.population) / ringsArea(rings) : 0 });
    } else if (p.layer === "road" && (g.type === "LineString" || g.type === "MultiLineString")) {
      for (const line of g.type === "LineString" ? [g.coordinates] : g.coordinates) roads.push({ cls: p.class, pts: line });
    }
  }
  const bbox = districts.length ? box : [106.4, 20.6, 107.0, 21.0]; // still place devices if the file is empty
  return { name: doc.properties?.name ?? "", districts, roads, bbox, names: new Map(districts.map((d) => [d.code, d.name])) };
}

function extend(b, lon, lat) {
  b[0] = Math.min(b[0], lon); b[1] = Math.min(b[1], lat); b[2] = Math.max(b[2], lon); b[3] = Math.max(b[3], lat);
}

function ringsArea(rings) {
  let a = 0;
  for (const r of rings) for (let i = 0; i + 1 < r.length; i++) a += r[i][0] * r[i + 1][1] - r[i + 1][0] * r[i][1];
  return Math.abs(a) / 2 || 1e-9;
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

function padBox(b, frac, min = 0) {
  const mx = Math.max(min, (b[2] - b[0]) * frac), my = Math.max(min, (b[3] - b[1]) * frac);
  return [b[0] - mx, b[1] - my, b[2] + mx, b[3] + my];
}

export class CityMap {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {object} opts devices (DeviceStore), marks () => Map(device id -> {sev}), health () => Map(code -> {level}),
   *   label (key) => text, inset (show the urban core beside the city), minIntervalMs (redraw throttle)
   */
  constructor(canvas, { devices, marks = () => new Map(), health = () => new Map(), label = (k) => k,
    inset = true, minIntervalMs = 200, onPick = null }) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.devices = devices;
    this.marks = marks;
    this.health = health;
    this.label = label;
    this.allowInset = inset;
    this.minIntervalMs = minIntervalMs;
    this.city = null;
    this.focus = null; // [x0, y0, x1, y1]: zoom to these (an incident's members)
    this.highlight = null; // Set of device ids drawn large; the others dimmed
    this.views = [];
    this.layer = document.createElement("canvas"); // outlines, roads and labels, redrawn on layout only
    this.layerKey = "";
    this.dpr = 1; this.w = 0; this.h = 0; this.rem = 14; this.projV = 0; this.destroyed = false;
    this.dirty = true; this.scheduled = false; this.lastDraw = 0;
    this.stats = { draws: 0, lastMs: 0, drawn: 0 };
    this.resizer = new ResizeObserver(() => this.layout());
    this.resizer.observe(canvas);
    if (onPick) {
      canvas.style.cursor = "pointer";
      canvas.addEventListener("click", (ev) => {
        const dev = this.pick(ev.offsetX * this.dpr, ev.offsetY * this.dpr);
        if (dev) onPick(dev);
      });
    }
  }

  /** Stop observing the canvas (a page that replaces its map must not leak the old one). */
  destroy() {
    this.destroyed = true;
    this.resizer.disconnect();
  }

  setCity(city) {
    this.city = city;
    this.layout();
  }

  /** Zoom to the devices given (ids with positions), and the rings given for context; draw those devices
   * large. null = the whole city. */
  setFocus(ids, contextRings = null) {
    if (!ids) {
      this.focus = null;
      this.highlight = null;
    } else {
      this.highlight = new Set(ids);
      const b = [Infinity, Infinity, -Infinity, -Infinity];
      for (const id of ids) {
        const d = this.devices.devices.get(id);
        if (d && d.lat != null) extend(b, d.lon, d.lat);
      }
      for (const ring of contextRings || []) for (const [lon, lat] of ring) extend(b, lon, lat);
      this.focus = Number.isFinite(b[0]) ? padBox(b, 0.1, 0.01) : null;
    }
    this.layout();
  }

  markDirty() {
    this.dirty = true;
    if (this.scheduled) return;
    this.scheduled = true;
    const wait = Math.max(0, this.minIntervalMs - (performance.now() - this.lastDraw));
    setTimeout(() => requestAnimationFrame(() => { this.scheduled = false; this.draw(); }), wait);
  }

  makeView(rect, bbox, inset) {
    const [rx, ry, rw, rh] = rect;
    const [x0, y0, x1, y1] = bbox;
    const u = this.rem * this.dpr;
    const kx = Math.cos(((y0 + y1) / 2) * Math.PI / 180); // equirectangular, true to scale at the city's latitude
    const pad = 0.8 * u + (inset ? 1.6 * u : 0);
    const scale = Math.min((rw - 2 * pad) / ((x1 - x0) * kx), (rh - 2 * pad) / (y1 - y0));
    const ox = rx + (rw - (x1 - x0) * kx * scale) / 2;
    const oy = ry + (rh - (y1 - y0) * scale) / 2 + (inset ? 0.6 * u : 0);
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
    return { rect, bbox, inset, proj, frame: null, labels: [],
      districts: this.city.districts.map((d) => ({ d, path: path(d.rings, true) })),
      roads: this.city.roads.map((r) => ({ cls: r.cls, path: path([r.pts], false) })) };
  }

  // A name that would overlap one already placed falls back to the district code, then is left out.
  placeLabels(view, skip) {
    const { ctx } = this;
    const size = (view.inset ? 1.25 : 1.0) * this.rem * this.dpr;
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

  layout() {
    const rect = this.canvas.getBoundingClientRect();
    this.dpr = window.devicePixelRatio || 1;
    this.rem = Number.parseFloat(getComputedStyle(document.documentElement).fontSize) || 14;
    this.w = Math.max(1, Math.round(rect.width * this.dpr));
    this.h = Math.max(1, Math.round(rect.height * this.dpr));
    this.canvas.width = this.layer.width = this.w;
    this.canvas.height = this.layer.height = this.h;
    this.views = [];
    this.projV = nextProjV++;
    this.layerKey = "";
    if (this.city) {
      const { w, h } = this;
      const full = this.focus || this.city.bbox;
      const urban = this.focus ? [] : coreDistricts(this.city.districts);
      const ub = urban.length ? padBox(bboxOf(urban), 0.15) : null;
      const area = (b) => (b[2] - b[0]) * (b[3] - b[1]);
      if (this.allowInset && ub && area(ub) < 0.2 * area(full) && Math.min(w, h) > 200) {
        const gap = 0.6 * this.rem * this.dpr;
        const wide = w / h >= 1.25;
        const split = wide ? Math.round(w * 0.52) : Math.round(h * 0.56);
        const main = this.makeView(wide ? [0, 0, split, h] : [0, 0, w, split], full, false);
        const inset = this.makeView(wide ? [split + gap, 0, w - split - gap, h] : [0, split + gap, w, h - split - gap], ub, true);
        main.frame = ub;
        const core = new Set(urban.map((d) => d.code));
        this.placeLabels(main, core);
        this.placeLabels(inset, new Set(this.city.districts.filter((d) => !core.has(d.code)).map((d) => d.code)));
        this.views = [main, inset];
      } else {
        const main = this.makeView([0, 0, w, h], full, false);
        this.placeLabels(main, new Set());
        this.views = [main];
      }
    }
    // Resizing cleared the canvas: draw now rather than show a blank map until the next scheduled draw.
    this.dirty = true;
    this.draw();
  }

  /** Outlines tinted by district health, roads and names: re-rendered only when a district's level changes. */
  renderLayer(health) {
    const key = this.city ? this.city.districts.map((d) => health.get(d.code)?.level || "-").join() : "";
    if (key === this.layerKey) return;
    this.layerKey = key;
    const ctx = this.layer.getContext("2d");
    const u = this.dpr * (this.rem / 14);
    ctx.clearRect(0, 0, this.w, this.h);
    for (const view of this.views) {
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
      for (const { d, path } of view.districts) {
        const lv = health.get(d.code)?.level;
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
        ctx.font = `600 ${0.95 * this.rem * this.dpr}px sans-serif`;
        ctx.fillStyle = "#8fa3c0";
        ctx.fillText(this.label("urban_core"), rx + 0.5 * this.rem * this.dpr, ry + 0.4 * this.rem * this.dpr);
      }
      ctx.restore();
    }
  }

  draw() {
    if (!this.dirty || this.destroyed) return;
    this.dirty = false;
    const t0 = performance.now();
    this.lastDraw = t0;
    const { ctx, w, h, dpr, rem } = this;
    ctx.clearRect(0, 0, w, h);
    if (!this.views.length) {
      ctx.fillStyle = "#8fa3c0";
      ctx.font = `${rem * dpr}px sans-serif`;
      ctx.fillText(this.label("loading_map"), 20 * dpr, 30 * dpr);
      return;
    }
    const at = Date.now();
    this.renderLayer(this.health());
    ctx.drawImage(this.layer, 0, 0);
    // Devices are bucketed once per draw, by (state, kind): a handful of fills, never a DOM node each.
    const buckets = new Map();
    const faulty = [];
    const marked = [];
    const marks = this.marks();
    let drawn = 0;
    for (const dev of this.devices.devices.values()) {
      if (dev.lat == null) continue;
      const key = `${dev.state in COLORS ? dev.state : "unknown"}|${dev.kind}`;
      let list = buckets.get(key);
      if (!list) buckets.set(key, (list = []));
      list.push(dev);
      const mark = marks.get(dev.id);
      if (mark) marked.push([dev, mark.sev]);
      else if (this.devices.faultOf(dev, at) != null) faulty.push(dev);
      drawn++;
    }
    for (const view of this.views) this.drawDevices(view, buckets, faulty, marked, drawn);
    this.stats.drawn = drawn;
    this.stats.draws++;
    this.stats.lastMs = performance.now() - t0;
  }

  drawDevices(view, buckets, faulty, marked, n) {
    const { ctx, dpr, rem } = this;
    const [rx, ry, rw, rh] = view.rect;
    ctx.save();
    ctx.beginPath();
    ctx.rect(rx, ry, rw, rh);
    ctx.clip();
    const scale = n > 3000 ? 0.16 : n > 800 ? 0.22 : n > 100 ? 0.3 : 0.42;
    const base = Math.max(1.6 * dpr, scale * rem * dpr * (view.inset || this.focus ? 1.3 : 1));
    const [x0, y0, x1, y1] = view.bbox;
    const main = view === this.views[0];
    const projV = this.projV;
    // The main view's positions are cached on the device until the layout changes or the device moves.
    const pos = main
      ? (dev) => {
        if (dev.projV !== projV) {
          [dev.px, dev.py] = view.proj(dev.lon, dev.lat);
          dev.projV = projV;
        }
        return dev.px >= rx - base && dev.px <= rx + rw + base && dev.py >= ry - base && dev.py <= ry + rh + base;
      }
      : (dev) => dev.lon >= x0 && dev.lon <= x1 && dev.lat >= y0 && dev.lat <= y1;
    const xy = (dev) => (main ? [dev.px, dev.py] : view.proj(dev.lon, dev.lat));
    const hl = this.highlight;
    for (const state of STATES) {
      for (const kind of KINDS) {
        const list = buckets.get(`${state}|${kind}`);
        if (!list) continue;
        for (const big of hl ? [false, true] : [false]) {
          const r = (state === "offline" || state === "degraded" ? base * 1.5 : base) * (big ? 2.2 : 1);
          ctx.beginPath();
          let any = false;
          for (const dev of list) {
            if (hl && hl.has(dev.id) !== big) continue;
            if (!pos(dev)) continue;
            const [x, y] = xy(dev);
            shape(ctx, kind, x, y, r);
            any = true;
          }
          if (!any) continue;
          ctx.globalAlpha = hl && !big ? 0.45 : 1; // with a focus set, the rest is context only
          ctx.fillStyle = COLORS[state];
          ctx.fill();
          ctx.strokeStyle = "rgba(0,0,0,0.75)";
          ctx.lineWidth = Math.max(1, r * 0.25);
          ctx.stroke();
          ctx.globalAlpha = 1;
        }
      }
    }
    // Faults the device's own state does not show (a black picture on an "online" camera): an amber ring.
    this.rings(faulty.map((d) => [d, "fault"]), pos, xy, base * 2.4, { fault: COLORS.degraded });
    // Members of live incidents: a ring in the incident's severity colour, drawn last so it is never hidden.
    this.rings(marked, pos, xy, base * 2.9, SEV_COLORS);
    ctx.restore();
  }

  rings(items, pos, xy, radius, colors) {
    const { ctx, dpr } = this;
    const groups = new Map();
    for (const [dev, key] of items) {
      if (!pos(dev)) continue;
      let g = groups.get(key);
      if (!g) groups.set(key, (g = []));
      g.push(dev);
    }
    for (const [key, list] of groups) {
      const r = this.highlight?.size ? radius * 1.8 : radius;
      ctx.beginPath();
      for (const dev of list) {
        const [x, y] = xy(dev);
        ctx.moveTo(x + r, y);
        ctx.arc(x, y, r, 0, Math.PI * 2);
      }
      ctx.strokeStyle = colors[key] || COLORS.degraded;
      ctx.lineWidth = Math.max(1.5 * dpr, r * 0.2);
      ctx.stroke();
    }
  }

  /** The device drawn nearest to a canvas point (device pixels), within a finger's width. */
  pick(x, y) {
    const view = this.views.find((v) => x >= v.rect[0] && x <= v.rect[0] + v.rect[2] && y >= v.rect[1] && y <= v.rect[1] + v.rect[3]);
    if (!view) return null;
    let best = null;
    let bestD = (1.2 * this.rem * this.dpr) ** 2;
    for (const dev of this.devices.devices.values()) {
      if (dev.lat == null) continue;
      const [px, py] = view.proj(dev.lon, dev.lat);
      const d = (px - x) ** 2 + (py - y) ** 2;
      if (d < bestD) { bestD = d; best = dev; }
    }
    return best;
  }
}

function bboxOf(districts) {
  const b = [Infinity, Infinity, -Infinity, -Infinity];
  for (const d of districts) for (const ring of d.rings) for (const [lon, lat] of ring) extend(b, lon, lat);
  return b;
}

function shape(ctx, kind, x, y, r) {
  if (kind === "camera") {
    ctx.rect(x - r, y - r, 2 * r, 2 * r);
  } else if (kind === "bts") {
    ctx.moveTo(x, y - r * 1.25);
    ctx.lineTo(x + r * 1.15, y + r * 0.85);
    ctx.lineTo(x - r * 1.15, y + r * 0.85);
    ctx.closePath();
  } else {
    ctx.moveTo(x + r, y);
    ctx.arc(x, y, r, 0, Math.PI * 2);
  }
}
