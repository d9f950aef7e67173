// The city map: district outlines and roads from /api/city (shipped with the project, no tile server), every
// device as one small shape coloured by state, incident members ringed by severity. The drawing happens in
// a worker on an OffscreenCanvas (citymap-worker.js), so a 4K map of 5,000+ devices never blocks the page;
// this side packs the device state into typed arrays, paces the redraws and answers clicks.
import { KIND_CODES, MARK_CODES, STATE_CODES } from "./palette.js";
import { getJson } from "./util.js";

export { COLORS, SEV_COLORS } from "./palette.js";

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

function padBox(b, frac, min = 0) {
  const mx = Math.max(min, (b[2] - b[0]) * frac), my = Math.max(min, (b[3] - b[1]) * frac);
  return [b[0] - mx, b[1] - my, b[2] + mx, b[3] + my];
}

const STATE_INDEX = Object.fromEntries(STATE_CODES.map((s, i) => [s, i]));
const KIND_INDEX = Object.fromEntries(KIND_CODES.map((k, i) => [k, i]));
const MARK_INDEX = Object.fromEntries(MARK_CODES.map((m, i) => [m, i]));

export class CityMap {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {object} opts devices (DeviceStore), marks () => Map(device id -> {sev}), health () => Map(code -> {level}),
   *   label (key) => text, inset (show the urban core beside the city), minIntervalMs (redraw throttle), onPick (dev)
   */
  constructor(canvas, { devices, marks = () => new Map(), health = () => new Map(), label = (k) => k,
    inset = true, minIntervalMs = 200, onPick = null }) {
    this.canvas = canvas;
    this.devices = devices;
    this.marks = marks;
    this.health = health;
    this.minIntervalMs = minIntervalMs;
    this.city = null;
    this.highlight = null; // Set of device ids drawn large (the others dimmed), with the view zoomed to them
    this.views = []; // projections of the worker's last layout, for clicks
    this.order = []; // device of each packed index in the last draw
    this.dpr = 1;
    this.destroyed = false;
    this.scheduled = false; this.busy = false; this.pending = false; this.lastDraw = 0;
    this.stats = { draws: 0, lastMs: 0, drawn: 0, intervalMs: minIntervalMs };
    this.costMs = 0; // running mean of a draw's cost (in the worker)
    this.maxFaultRings = 300;
    this.worker = new Worker(new URL("./citymap-worker.js", import.meta.url), { type: "module" });
    this.worker.onmessage = (ev) => this.onWorker(ev.data);
    this.worker.onerror = (ev) => console.error("map worker failed:", ev.message);
    const offscreen = canvas.transferControlToOffscreen();
    this.worker.postMessage({ type: "init", canvas: offscreen, inset,
      labels: { urban_core: label("urban_core"), loading_map: label("loading_map") } }, [offscreen]);
    this.resizer = new ResizeObserver(() => this.resize());
    this.resizer.observe(canvas);
    if (onPick) {
      canvas.style.cursor = "pointer";
      canvas.addEventListener("click", (ev) => {
        const dev = this.pick(ev.offsetX * this.dpr, ev.offsetY * this.dpr);
        if (dev) onPick(dev);
      });
    }
  }

  /** Stop the worker and observer (a page that replaces its map must not leak the old one). */
  destroy() {
    this.destroyed = true;
    this.resizer.disconnect();
    this.worker.terminate();
  }

  setCity(city) {
    this.city = city;
    const { districts, roads, bbox } = city;
    this.worker.postMessage({ type: "city", city: { districts, roads, bbox } });
    this.markDirty();
  }

  resize() {
    const rect = this.canvas.getBoundingClientRect();
    this.dpr = window.devicePixelRatio || 1;
    const rem = Number.parseFloat(getComputedStyle(document.documentElement).fontSize) || 14;
    this.worker.postMessage({ type: "resize", w: Math.max(1, Math.round(rect.width * this.dpr)),
      h: Math.max(1, Math.round(rect.height * this.dpr)), dpr: this.dpr, rem });
    this.markDirty();
  }

  /** Zoom to the devices given (ids with positions), and the rings given for context; draw those devices
   * large. null = the whole city. */
  setFocus(ids, contextRings = null) {
    let bbox = null;
    this.highlight = ids ? new Set(ids) : null;
    if (ids) {
      const b = [Infinity, Infinity, -Infinity, -Infinity];
      for (const id of ids) {
        const d = this.devices.devices.get(id);
        if (d && d.lat != null) extend(b, d.lon, d.lat);
      }
      for (const ring of contextRings || []) for (const [lon, lat] of ring) extend(b, lon, lat);
      bbox = Number.isFinite(b[0]) ? padBox(b, 0.1, 0.01) : null;
    }
    this.worker.postMessage({ type: "focus", bbox, highlight: !!ids });
    this.markDirty();
  }

  markDirty() {
    if (this.destroyed) return;
    if (this.busy) { // one draw in flight at a time: the next waits for the worker's answer
      this.pending = true;
      return;
    }
    if (this.scheduled) return;
    this.scheduled = true;
    // Redraws are spaced by what they cost: the worker's thread is shared with everything else on the
    // machine, and the compositor pays again for every pixel of a changed canvas.
    const interval = Math.min(2000, Math.max(this.minIntervalMs, 16 * this.costMs));
    this.stats.intervalMs = interval;
    const wait = Math.max(0, interval - (performance.now() - this.lastDraw));
    setTimeout(() => { this.scheduled = false; this.send(); }, wait);
  }

  /** Pack every positioned device (lon, lat; state, kind, highlighted; ring) and hand it to the worker. */
  send() {
    if (this.destroyed) return;
    const at = Date.now();
    const marks = this.marks();
    const n = this.devices.devices.size;
    const pos = new Float32Array(2 * n), code = new Uint8Array(n), mark = new Uint8Array(n);
    const order = new Array(n);
    // Amber fault rings help while faults are few; in a storm they would bury the map (the district tints and
    // the state colours still tell), so past a few hundred only incident members keep their rings.
    let faults = 0;
    for (const dev of this.devices.devices.values()) if (dev.fault || dev.health) faults++;
    const ringFaults = faults <= this.maxFaultRings || this.countFaults(at) <= this.maxFaultRings;
    let k = 0;
    for (const dev of this.devices.devices.values()) {
      if (dev.lat == null) continue;
      pos[2 * k] = dev.lon;
      pos[2 * k + 1] = dev.lat;
      code[k] = (STATE_INDEX[dev.state] ?? 0) | ((KIND_INDEX[dev.kind] ?? 0) << 2) | (this.highlight?.has(dev.id) ? 16 : 0);
      const m = marks.get(dev.id);
      mark[k] = m ? MARK_INDEX[m.sev] ?? MARK_INDEX.warning
        : ringFaults && this.devices.faultOf(dev, at) != null ? MARK_INDEX.fault : 0;
      order[k++] = dev;
    }
    order.length = k;
    this.order = order;
    const health = this.health();
    const levels = this.city ? this.city.districts.map((d) => health.get(d.code)?.level || null) : null;
    this.busy = true;
    this.lastDraw = performance.now();
    this.worker.postMessage({ type: "draw", n: k, pos, code, mark, levels }, [pos.buffer, code.buffer, mark.buffer]);
  }

  countFaults(at) {
    let n = 0;
    for (const dev of this.devices.devices.values()) if (this.devices.faultOf(dev, at) != null) n++;
    return n;
  }

  onWorker(m) {
    if (m.type === "layout") {
      this.views = m.views;
    } else if (m.type === "drawn") {
      this.stats.lastMs = m.ms;
      this.stats.drawn = m.drawn;
      this.stats.draws = m.draws;
      this.costMs = this.costMs ? 0.8 * this.costMs + 0.2 * m.ms : m.ms;
      if (!m.reply) return;
      this.busy = false;
      if (this.pending) {
        this.pending = false;
        this.markDirty();
      }
    }
  }

  /** The device drawn nearest to a canvas point (device pixels), within a finger's width. */
  pick(x, y) {
    const view = this.views.find((v) => x >= v.rect[0] && x <= v.rect[0] + v.rect[2] && y >= v.rect[1] && y <= v.rect[1] + v.rect[3]);
    if (!view) return null;
    const rem = Number.parseFloat(getComputedStyle(document.documentElement).fontSize) || 14;
    let best = null;
    let bestD = (1.2 * rem * this.dpr) ** 2;
    for (const dev of this.order) {
      const px = view.ox + (dev.lon - view.x0) * view.kx * view.scale;
      const py = view.oy + (view.y1 - dev.lat) * view.scale;
      const d = (px - x) ** 2 + (py - y) ** 2;
      if (d < bestD) { bestD = d; best = dev; }
    }
    return best;
  }
}
