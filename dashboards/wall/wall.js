// Control-room wall display: live state from /ws/live (docs/live-feed.md) drawn on a canvas map, district
// tiles, an event queue, camera tiles and KPI sparklines. Plain ES module, no build step, no network but the IOC.
import { makeI18n, pickLang } from "./i18n.js";

const params = new URLSearchParams(location.search);
const i18n = makeI18n(pickLang(location.search));
const { t } = i18n;

const intParam = (name, lo, hi, dflt) => {
  const v = Number.parseInt(params.get(name) ?? "", 10);
  return Number.isFinite(v) ? Math.min(hi, Math.max(lo, v)) : dflt;
};

const CFG = {
  maxEvents: 200, // the queue is bounded: older entries fall off the end
  shownEvents: 60, // rows in the DOM; the panel clips what does not fit
  maxCams: intParam("cams", 1, 48, 12),
  staleMs: 30_000, // the hub sends a heartbeat every 10 s: 30 s of silence means the link is dead
  backoffMinMs: 1000,
  backoffMaxMs: 30_000,
  mapMinIntervalMs: 200, // at most ~5 map redraws a second, however busy the feed
  uiIntervalMs: 500,
  camReselectMs: 2000,
  imgMinIntervalMs: 5000, // per camera tile: a chatty camera cannot flood the browser with JPEG loads
  sampleMs: intParam("sample", 1, 600, 30) * 1000,
  historyMs: 4 * 3600_000,
  faultTtlMs: 30 * 60_000, // a camera fault nobody cleared stops counting after 30 min
  speedAlpha: 0.05, // running mean of each traffic sensor's own speed
};
const STATES = ["unknown", "online", "degraded", "offline"]; // draw order: problems end up on top
const COLORS = { online: "#2ecc71", degraded: "#f5a623", offline: "#ff4d4f", unknown: "#8a94a6" };
const SEVERITIES = ["critical", "major", "minor", "warning", "info"];
const FAULT_SEVERITIES = new Set(["critical", "major", "minor"]);
const CLEARING = /(clear|restor|recover|resolv|normal|_ok$|^ok$|_up$)/i;
const HISTORY_KEY = "ioc.wall.kpi.v1";

// --- state -------------------------------------------------------------------------------------------

/** @type {Map<string, any>} device id -> device; bounded by the server's registry */
const devices = new Map();
const events = []; // newest first, at most CFG.maxEvents
const eventKeys = new Set();
let eventsVersion = 0;
let city = null; // {name, districts: [{code, name, rings, seat}], roads: [{cls, pts}], bbox}
const districtNames = new Map();
const conn = {
  ws: null, state: "connecting", openedAt: 0, epoch: null, lastSeq: null, lastMsgAt: 0, attempt: 0, retryAt: 0, timer: 0,
  connects: 0, snapshots: 0, resumes: 0, lagged: 0, droppedFrames: 0, frames: 0, messages: 0,
};
let clockSkew = 0; // server clock minus ours, from snapshot and heartbeat frames
const now = () => Date.now() + clockSkew;
let uiDirty = true;
let bannerNote = null; // {text, until}

const $ = (id) => document.getElementById(id);
const parseTs = (v) => {
  if (v == null) return null;
  const ms = typeof v === "number" ? v : Date.parse(v);
  return Number.isFinite(ms) ? ms : null;
};

function getDev(id, kind) {
  let dev = devices.get(id);
  if (!dev) {
    dev = {
      id, kind, district: null, lat: null, lon: null, state: "unknown", reason: null, lastSeen: null,
      latest: Object.create(null), lastSnapshot: null, fault: null, health: null, speedMean: null,
      px: 0, py: 0, projV: -1,
    };
    devices.set(id, dev);
  }
  if (kind) dev.kind = kind;
  return dev;
}

function setPos(dev, lat, lon) {
  if (typeof lat === "number" && typeof lon === "number" && (lat !== dev.lat || lon !== dev.lon)) {
    dev.lat = lat;
    dev.lon = lon;
    dev.projV = -1;
  }
}

function feedSpeed(dev, value) {
  if (!Number.isFinite(value)) return;
  dev.speedMean = dev.speedMean == null ? value : dev.speedMean + CFG.speedAlpha * (value - dev.speedMean);
}

function applyFull(s) {
  const dev = getDev(s.device_id, s.kind);
  if ("district" in s) dev.district = s.district;
  setPos(dev, s.lat, s.lon);
  dev.state = s.state || "unknown";
  dev.reason = s.state_reason ?? null;
  dev.lastSeen = parseTs(s.last_seen) ?? dev.lastSeen;
  const latest = Object.create(null);
  for (const [metric, v] of Object.entries(s.latest || {})) latest[metric] = v && typeof v === "object" ? v.value : v;
  dev.latest = latest;
  if (dev.kind === "traffic" && dev.speedMean == null) feedSpeed(dev, latest.speed_kmh);
  const snap = parseTs(s.last_snapshot);
  if (snap != null) dev.lastSnapshot = snap;
  if (s.health && typeof s.health === "object") dev.health = s.health.label ? s.health : null;
  return dev;
}

/** What is wrong with a device that its own state does not say: the camera analyser's label, or an
 * uncleared event of severity minor or worse. null when nothing is. */
function faultOf(dev, at) {
  if (dev.health && dev.health.label && dev.health.label !== "ok") return dev.health.label;
  if (dev.fault != null && at - dev.fault.ts < CFG.faultTtlMs) return dev.fault.type;
  return null;
}

function faultActive(dev, at) {
  return faultOf(dev, at) != null;
}

// --- frames ------------------------------------------------------------------------------------------

const DATA_FRAMES = new Set(["reading", "status", "event", "image", "finding", "alert", "health", "device", "lagged"]);

function onFrames(frames) {
  for (const f of frames) {
    if (!f || typeof f !== "object") continue;
    conn.frames++;
    // Resume only from frames we have applied; "resumed" carries the hub's newest seq, not ours.
    if (DATA_FRAMES.has(f.type) && typeof f.seq === "number") conn.lastSeq = Math.max(conn.lastSeq ?? 0, f.seq);
    try {
      handleFrame(f);
    } catch (err) {
      console.error("frame failed", f.type, err);
    }
  }
  uiDirty = true;
  stateVersion++;
  markMapDirty();
}

function handleFrame(f) {
  switch (f.type) {
    case "snapshot": {
      // A fresh snapshot is the whole truth: devices it does not list are gone (or filtered out).
      const seen = new Set();
      for (const s of f.devices || []) seen.add(applyFull(s).id);
      for (const id of devices.keys()) if (!seen.has(id)) devices.delete(id);
      conn.epoch = f.epoch;
      conn.lastSeq = f.seq;
      conn.snapshots++;
      syncClock(f.server_time);
      setLive();
      break;
    }
    case "resumed":
      conn.resumes++;
      setLive();
      break;
    case "heartbeat":
      syncClock(f.server_time);
      break;
    case "reading": {
      const dev = getDev(f.device_id, f.kind);
      if (f.district !== undefined) dev.district = f.district;
      setPos(dev, f.lat, f.lon);
      Object.assign(dev.latest, f.metrics || {});
      dev.lastSeen = now();
      if (dev.kind === "traffic" && f.metrics) feedSpeed(dev, f.metrics.speed_kmh);
      break;
    }
    case "status": {
      const dev = getDev(f.device_id, f.kind);
      if (f.district !== undefined) dev.district = f.district;
      setPos(dev, f.lat, f.lon);
      dev.state = f.state || "unknown";
      dev.reason = f.reason ?? null;
      break;
    }
    case "event":
    case "alert":
    case "finding":
      onIncident(f);
      break;
    case "image": {
      const dev = getDev(f.device_id, f.kind || "camera");
      setPos(dev, f.lat, f.lon);
      dev.lastSnapshot = parseTs(f.ts) ?? now();
      break;
    }
    case "device":
      applyFull(f);
      break;
    case "health": {
      // The camera analyser's verdict on the picture (ok, black, freeze, blur...), sent when it changes.
      const dev = devices.get(f.device_id);
      if (dev) dev.health = f.label ? { label: f.label, confidence: f.confidence, ts: parseTs(f.ts) } : null;
      break;
    }
    case "lagged":
      conn.lagged++;
      conn.droppedFrames += f.dropped_frames || 0;
      bannerNote = { text: t("banner_lagged", { n: f.dropped_frames || 0 }), until: Date.now() + 15_000 };
      break;
    case "error":
      console.warn("live feed error:", f.detail);
      break;
    default:
      break; // pong and frame types added later
  }
}

function syncClock(serverTime) {
  const ms = parseTs(serverTime);
  if (ms != null) clockSkew = ms - Date.now();
}

// Events, findings and alerts share one queue; alerts of later versions may carry fields we do not know yet,
// so every field is read defensively.
function onIncident(f) {
  const ts = parseTs(f.ts ?? f.opened_at ?? f.created_at) ?? now();
  let sev = String(f.severity ?? f.level ?? "").toLowerCase();
  if (!SEVERITIES.includes(sev)) {
    const score = Number(f.score);
    sev = Number.isFinite(score) ? (score >= 0.9 ? "major" : score >= 0.7 ? "minor" : "warning") : "warning";
  }
  const type = f.event_type ?? f.alert_type ?? f.finding_type ?? f.rule ?? f.name ?? f.type;
  const key = f.alert_id != null ? `alert|${f.alert_id}` : `${f.type}|${f.device_id}|${type}|${ts}`;
  const item = {
    key, ts, sev, type: String(type), frame: f.type, device: f.device_id ?? "", kind: f.kind ?? "",
    district: f.district ?? null, text: f.title ?? f.message ?? f.explanation ?? null,
    closed: /^(closed|resolved|cleared)$/i.test(String(f.state ?? f.status ?? "")), arrived: Date.now(),
  };
  if (eventKeys.has(key)) {
    // An update of an alert we already show (acknowledged, closed...): replace it in place.
    const i = events.findIndex((e) => e.key === key);
    if (i >= 0) events[i] = { ...item, arrived: events[i].arrived };
  } else {
    events.unshift(item);
    eventKeys.add(key);
    if (events.length > CFG.maxEvents) {
      for (const old of events.splice(CFG.maxEvents)) eventKeys.delete(old.key);
    }
  }
  eventsVersion++;
  if (f.device_id && devices.has(f.device_id)) {
    const dev = devices.get(f.device_id);
    if (sev === "info" || CLEARING.test(item.type) || item.closed) dev.fault = null;
    else if (FAULT_SEVERITIES.has(sev)) dev.fault = { type: item.type, sev, ts };
  }
}

// --- connection --------------------------------------------------------------------------------------

function connect() {
  clearTimeout(conn.timer);
  const query = new URLSearchParams();
  if (conn.epoch && conn.lastSeq != null) {
    query.set("resume_from", String(conn.lastSeq));
    query.set("epoch", conn.epoch);
  }
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const qs = query.toString();
  let ws;
  try {
    ws = new WebSocket(`${proto}//${location.host}/ws/live${qs ? `?${qs}` : ""}`);
  } catch (err) {
    scheduleReconnect();
    return;
  }
  conn.ws = ws;
  conn.connects++;
  conn.openedAt = Date.now();
  setConnState("connecting");
  ws.onopen = () => {
    if (ws === conn.ws) conn.lastMsgAt = Date.now();
  };
  ws.onmessage = (msg) => {
    if (ws !== conn.ws) return; // a socket we already gave up on
    conn.lastMsgAt = Date.now();
    conn.messages++;
    let frames;
    try {
      frames = JSON.parse(msg.data);
    } catch {
      return;
    }
    onFrames(Array.isArray(frames) ? frames : [frames]);
  };
  ws.onclose = () => {
    if (ws !== conn.ws) return;
    conn.ws = null;
    scheduleReconnect();
  };
  ws.onerror = () => {}; // a close event always follows
}

function scheduleReconnect() {
  clearTimeout(conn.timer);
  // Exponential backoff with jitter, so a wall of screens does not reconnect in lockstep after a restart.
  const base = Math.min(CFG.backoffMaxMs, CFG.backoffMinMs * 2 ** conn.attempt);
  const delay = Math.round(base * (0.75 + Math.random() * 0.5));
  conn.attempt++;
  conn.retryAt = Date.now() + delay;
  setConnState("down");
  conn.timer = setTimeout(connect, delay);
}

function dropConnection() {
  const ws = conn.ws;
  conn.ws = null; // detach first: closing a half-dead TCP link can take long to report
  if (ws) {
    try { ws.close(); } catch { /* already closed */ }
  }
  scheduleReconnect();
}

function setLive() {
  conn.attempt = 0;
  setConnState("live");
}

function setConnState(state) {
  if (conn.state === state) return;
  conn.state = state;
  const el = $("conn");
  el.dataset.state = state;
  $("conn-text").textContent = t({ live: "live", stale: "stale", down: "offline_conn" }[state] || "connecting");
  updateBanner();
}

function checkStale() {
  if (!conn.ws) return;
  const silent = Date.now() - Math.max(conn.lastMsgAt, conn.openedAt);
  // Also covers a handshake that hangs (a black-holed network never reports a close).
  if (silent > CFG.staleMs) {
    if (conn.state === "live") setConnState("stale");
    dropConnection();
  }
}

function isStale() {
  return conn.lastMsgAt > 0 && Date.now() - conn.lastMsgAt > CFG.staleMs;
}

function updateBanner() {
  const el = $("banner");
  let text = null;
  let kind = "alarm";
  if (isStale()) {
    text = t("banner_stale", { since: i18n.time(conn.lastMsgAt + clockSkew), age: i18n.age((Date.now() - conn.lastMsgAt) / 1000) });
  } else if (conn.state === "down") {
    text = t("banner_down", { sec: Math.max(0, Math.ceil((conn.retryAt - Date.now()) / 1000)), n: conn.attempt });
  } else if (conn.state === "connecting" && conn.attempt > 0) {
    text = t("banner_retrying", { n: conn.attempt });
  } else if (bannerNote && Date.now() < bannerNote.until) {
    text = bannerNote.text;
    kind = "info";
  }
  el.hidden = text == null;
  if (text != null) {
    el.textContent = text;
    el.dataset.kind = kind;
  }
}

// --- map ---------------------------------------------------------------------------------------------

// The map has one or two views: the whole city and, when the urban districts are a small part of it (as in
// Hải Phòng, where most devices are), an inset of the urban core beside it. Each view has its own projection,
// cached Path2D outlines and label positions, rebuilt only on resize.
const map = {
  canvas: null, ctx: null, dpr: 1, w: 0, h: 0, rem: 14, views: [], projV: 0,
  dirty: true, scheduled: false, lastDraw: 0, draws: 0, lastMs: 0, drawn: 0,
};

function markMapDirty() {
  map.dirty = true;
  if (map.scheduled) return;
  map.scheduled = true;
  const wait = Math.max(0, CFG.mapMinIntervalMs - (performance.now() - map.lastDraw));
  setTimeout(() => requestAnimationFrame(() => drawMap(true)), wait);
}

function bboxOf(districts) {
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const d of districts) {
    for (const ring of d.rings) {
      for (const [lon, lat] of ring) {
        x0 = Math.min(x0, lon); x1 = Math.max(x1, lon); y0 = Math.min(y0, lat); y1 = Math.max(y1, lat);
      }
    }
  }
  return [x0, y0, x1, y1];
}

function makeView(rect, bbox, inset) {
  const [rx, ry, rw, rh] = rect;
  const [x0, y0, x1, y1] = bbox;
  const kx = Math.cos(((y0 + y1) / 2) * Math.PI / 180); // equirectangular, true to scale at the city's latitude
  const pad = 0.8 * map.rem * map.dpr + (inset ? 1.6 * map.rem * map.dpr : 0);
  const scale = Math.min((rw - 2 * pad) / ((x1 - x0) * kx), (rh - 2 * pad) / (y1 - y0));
  const ox = rx + (rw - (x1 - x0) * kx * scale) / 2;
  const oy = ry + (rh - (y1 - y0) * scale) / 2 + (inset ? 0.6 * map.rem * map.dpr : 0);
  const proj = (lon, lat) => [ox + (lon - x0) * kx * scale, oy + (y1 - lat) * scale];
  const view = { rect, bbox, inset, proj, districts: [], roads: [], labels: [], frame: null };
  const path = (rings, close) => {
    const p = new Path2D();
    for (const ring of rings) {
      ring.forEach(([lon, lat], i) => {
        const [x, y] = proj(lon, lat);
        if (i === 0) p.moveTo(x, y);
        else p.lineTo(x, y);
      });
      if (close) p.closePath();
    }
    return p;
  };
  view.districts = city.districts.map((d) => ({ d, path: path(d.rings, true) }));
  view.roads = city.roads.map((r) => ({ cls: r.cls, path: path([r.pts], false) }));
  return view;
}

// Label placement once per layout: a name that would overlap one already placed falls back to the
// district code, then is left out (the inset shows the crowded ones).
function placeLabels(view, skip) {
  const { ctx, dpr, rem } = map;
  const size = (view.inset ? 1.25 : 1.0) * rem * dpr;
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
    // The name at the seat, a little above or below it, else the code there.
    const tries = [[d.name, 0], [d.name, -1.2 * size], [d.name, 1.2 * size], [d.code, 0]];
    for (const [text, dy] of tries) {
      const box = fits(x, y0 + dy, text);
      if (box) {
        boxes.push(box);
        view.labels.push({ text, x, y: y0 + dy, size });
        break;
      }
    }
  }
}

/** The dense city centre, where most devices are: districts far denser than the median (by population),
 * else those flagged urban. */
function coreDistricts(districts) {
  const dens = districts.filter((d) => d.density > 0).map((d) => d.density).sort((a, b) => a - b);
  if (dens.length >= 4) {
    const median = dens[Math.floor(dens.length / 2)];
    const core = districts.filter((d) => d.density >= 3 * median);
    if (core.length) return core;
  }
  return districts.filter((d) => d.urban);
}

function layoutMap() {
  const rect = map.canvas.getBoundingClientRect();
  map.dpr = window.devicePixelRatio || 1;
  map.rem = Number.parseFloat(getComputedStyle(document.documentElement).fontSize) || 14;
  map.w = Math.max(1, Math.round(rect.width * map.dpr));
  map.h = Math.max(1, Math.round(rect.height * map.dpr));
  map.canvas.width = map.w;
  map.canvas.height = map.h;
  map.views = [];
  map.projV++;
  if (city) {
    const { w, h } = map;
    const full = city.bbox;
    const urban = coreDistricts(city.districts);
    const ub = urban.length ? bboxOf(urban) : null;
    if (ub) { // some context around the core
      const mx = (ub[2] - ub[0]) * 0.15, my = (ub[3] - ub[1]) * 0.15;
      ub[0] -= mx; ub[2] += mx; ub[1] -= my; ub[3] += my;
    }
    const area = (b) => (b[2] - b[0]) * (b[3] - b[1]);
    if (ub && area(ub) < 0.2 * area(full) && Math.min(w, h) > 200) {
      const gap = 0.6 * map.rem * map.dpr;
      const wide = w / h >= 1.25;
      const split = wide ? Math.round(w * 0.52) : Math.round(h * 0.56);
      const main = makeView(wide ? [0, 0, split, h] : [0, 0, w, split], full, false);
      const inset = makeView(wide ? [split + gap, 0, w - split - gap, h] : [0, split + gap, w, h - split - gap], ub, true);
      main.frame = ub;
      placeLabels(main, new Set(urban.map((d) => d.code)));
      const core = new Set(urban.map((d) => d.code));
      placeLabels(inset, new Set(city.districts.filter((d) => !core.has(d.code)).map((d) => d.code)));
      map.views = [main, inset];
    } else {
      const main = makeView([0, 0, w, h], full, false);
      placeLabels(main, new Set());
      map.views = [main];
    }
  }
  // Resizing cleared the canvas: draw now rather than show a blank map until the next scheduled draw.
  map.dirty = true;
  drawMap();
}

const ROAD_STYLE = {
  expressway: ["#b9853a", 3.2], national: ["#a27a3f", 2.6], arterial: ["#5d6f8f", 2.0],
  urban: ["#4b5a75", 1.5], provincial: ["#55627a", 1.5],
};

function drawMap(fromTimer = false) {
  if (fromTimer) map.scheduled = false;
  if (!map.dirty) return;
  map.dirty = false;
  const t0 = performance.now();
  map.lastDraw = t0;
  const { ctx, w, h, dpr, rem } = map;
  ctx.clearRect(0, 0, w, h);
  if (!map.views.length) {
    ctx.fillStyle = "#8fa3c0";
    ctx.font = `${rem * dpr}px sans-serif`;
    ctx.fillText(t("loading_map"), 20 * dpr, 30 * dpr);
    return;
  }
  const at = now();
  const health = districtHealth(at);
  // Devices are bucketed once per draw, by (state, kind): a handful of fills, never a DOM node each.
  const buckets = new Map();
  let drawn = 0;
  const faulty = [];
  for (const dev of devices.values()) {
    if (dev.lat == null) continue;
    const key = `${dev.state in COLORS ? dev.state : "unknown"}|${dev.kind}`;
    let list = buckets.get(key);
    if (!list) buckets.set(key, (list = []));
    list.push(dev);
    if (faultActive(dev, at)) faulty.push(dev);
    drawn++;
  }
  for (const view of map.views) drawView(view, health, buckets, faulty, drawn);
  map.drawn = drawn;
  map.draws++;
  map.lastMs = performance.now() - t0;
}

function drawView(view, health, buckets, faulty, n) {
  const { ctx, dpr, rem } = map;
  const u = dpr * (rem / 14); // one "pixel" at the current type scale
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
    const level = health.get(d.code)?.level;
    ctx.fillStyle = level === "bad" ? "#3a1a26" : level === "warn" ? "#33291c" : "#101d33";
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
  // Names under the devices: a dot on a label matters more than the label.
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

  const scale = n > 3000 ? 0.16 : n > 800 ? 0.22 : n > 100 ? 0.3 : 0.42;
  const base = Math.max(1.6 * dpr, scale * rem * dpr * (view.inset ? 1.3 : 1));
  const [x0, y0, x1, y1] = view.bbox;
  const main = !view.inset;
  const pos = (dev) => {
    if (main) { // the main view's positions are cached until the layout or the device moves
      if (dev.projV !== map.projV) {
        [dev.px, dev.py] = view.proj(dev.lon, dev.lat);
        dev.projV = map.projV;
      }
      return true;
    }
    return dev.lon >= x0 && dev.lon <= x1 && dev.lat >= y0 && dev.lat <= y1;
  };
  for (const state of STATES) {
    const r = state === "offline" || state === "degraded" ? base * 1.5 : base;
    for (const kind of ["traffic", "bts", "camera"]) {
      const list = buckets.get(`${state}|${kind}`);
      if (!list) continue;
      ctx.beginPath();
      for (const dev of list) {
        if (!pos(dev)) continue;
        const [x, y] = main ? [dev.px, dev.py] : view.proj(dev.lon, dev.lat);
        shape(ctx, kind, x, y, r);
      }
      ctx.fillStyle = COLORS[state];
      ctx.fill();
      ctx.strokeStyle = "rgba(0,0,0,0.75)";
      ctx.lineWidth = Math.max(1, r * 0.25);
      ctx.stroke();
    }
  }
  // Faults the device itself does not report as a state (a black picture on an "online" camera): a ring.
  ctx.beginPath();
  for (const dev of faulty) {
    if (!pos(dev)) continue;
    const [x, y] = main ? [dev.px, dev.py] : view.proj(dev.lon, dev.lat);
    ctx.moveTo(x + base * 2.4, y);
    ctx.arc(x, y, base * 2.4, 0, Math.PI * 2);
  }
  ctx.strokeStyle = COLORS.degraded;
  ctx.lineWidth = Math.max(1.5 * dpr, base * 0.45);
  ctx.stroke();
  if (view.inset) {
    ctx.strokeStyle = "#2b3d5c";
    ctx.lineWidth = 1.5 * u;
    ctx.strokeRect(rx + 0.5, ry + 0.5, rw - 1, rh - 1);
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.font = `600 ${0.95 * rem * dpr}px sans-serif`;
    ctx.fillStyle = "#8fa3c0";
    ctx.fillText(t("urban_core"), rx + 0.5 * rem * dpr, ry + 0.4 * rem * dpr);
  }
  ctx.restore();
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

// --- aggregates --------------------------------------------------------------------------------------

let healthCache = { at: 0, version: -1, value: new Map() };
let stateVersion = 0; // bumped by every batch of frames

/** Per district: BTS online %, cameras healthy %, mean speed and speed index, and a level. */
function districtHealth(at) {
  if (healthCache.version === stateVersion && at - healthCache.at < 1000) return healthCache.value;
  const acc = new Map();
  const get = (code) => {
    let a = acc.get(code);
    if (!a) acc.set(code, (a = { bts: 0, btsOn: 0, cam: 0, camOk: 0, speedSum: 0, speedN: 0, idxSum: 0, idxN: 0 }));
    return a;
  };
  const all = get("*");
  for (const dev of devices.values()) {
    const targets = dev.district ? [get(dev.district), all] : [all];
    for (const a of targets) {
      if (dev.kind === "bts") {
        a.bts++;
        if (dev.state === "online") a.btsOn++;
      } else if (dev.kind === "camera") {
        a.cam++;
        if (dev.state === "online" && !faultActive(dev, at)) a.camOk++;
      } else if (dev.kind === "traffic" && dev.state !== "offline") {
        const v = dev.latest.speed_kmh;
        if (Number.isFinite(v)) {
          a.speedSum += v;
          a.speedN++;
          if (dev.speedMean > 1) {
            a.idxSum += v / dev.speedMean;
            a.idxN++;
          }
        }
      }
    }
  }
  const out = new Map();
  for (const [code, a] of acc) {
    const bts = a.bts ? (100 * a.btsOn) / a.bts : null;
    const cam = a.cam ? (100 * a.camOk) / a.cam : null;
    const speed = a.speedN ? a.speedSum / a.speedN : null;
    const index = a.idxN ? (100 * a.idxSum) / a.idxN : null;
    const lv = (v, warn, bad) => (v == null ? 0 : v < bad ? 2 : v < warn ? 1 : 0);
    const worst = Math.max(lv(bts, 95, 80), lv(cam, 90, 70), lv(index, 75, 50));
    const any = a.bts + a.cam + a.speedN > 0;
    out.set(code, {
      bts, cam, speed, index, nBts: a.bts, nCam: a.cam, nTraffic: a.speedN,
      level: any ? ["ok", "warn", "bad"][worst] : null,
    });
  }
  healthCache = { at, version: stateVersion, value: out };
  return out;
}

// --- panels ------------------------------------------------------------------------------------------

function buildStatic() {
  document.documentElement.lang = i18n.lang;
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  const legend = $("legend");
  legend.replaceChildren();
  for (const state of ["online", "degraded", "offline", "unknown"]) {
    const s = document.createElement("span");
    s.innerHTML = `<i class="swatch" style="background:${COLORS[state]}"></i>`;
    s.append(t(state));
    legend.append(s);
  }
  for (const [kind, glyph] of [["traffic", "●"], ["bts", "▲"], ["camera", "■"]]) {
    const s = document.createElement("span");
    s.textContent = `${glyph} ${t(kind === "traffic" ? "kind_traffic" : kind)}`;
    legend.append(s);
  }
  buildKpis();
  buildCams();
}

function renderDistricts(health) {
  const box = $("districts");
  if (!city) return;
  if (box.childElementCount !== city.districts.length) {
    box.replaceChildren(...city.districts.map((d) => {
      const el = document.createElement("div");
      el.className = "district";
      el.dataset.code = d.code;
      el.innerHTML = '<div class="name"></div><div class="v b"></div><div class="v c"></div><div class="v s"></div>';
      el.querySelector(".name").textContent = d.name;
      return el;
    }));
  }
  for (const el of box.children) {
    const h = health.get(el.dataset.code);
    el.dataset.level = h?.level || "none";
    setVal(el.querySelector(".b"), t("short_bts"), i18n.pct(h?.bts ?? NaN), grade(h?.bts, 95, 80));
    setVal(el.querySelector(".c"), t("short_cam"), i18n.pct(h?.cam ?? NaN), grade(h?.cam, 90, 70));
    // Speed coloured by the index (speed relative to each sensor's own running mean), not by km/h:
    // 30 km/h is normal downtown and a jam on the expressway.
    setVal(el.querySelector(".s"), t("kmh"), h?.speed == null ? t("no_data") : i18n.num(h.speed), grade(h?.index, 75, 50));
    el.querySelector(".s").title = h?.index == null ? "" : `${t("speed_index")} ${i18n.pct(h.index)}`;
  }
}

const grade = (v, warn, bad) => (v == null ? "" : v < bad ? "bad" : v < warn ? "warn" : "");

function setVal(el, label, text, cls) {
  // Rewrite only on change: the wall runs for weeks and layout churn adds up.
  const key = `${label}|${text}|${cls}`;
  if (el.dataset.key === key) return;
  el.dataset.key = key;
  const span = document.createElement("span");
  span.textContent = label;
  const b = document.createElement("b");
  b.textContent = text;
  if (cls) b.className = cls;
  el.replaceChildren(span, b);
}

function renderCounts() {
  const counts = { online: 0, degraded: 0, offline: 0, unknown: 0 };
  let noPos = 0;
  for (const dev of devices.values()) {
    counts[dev.state in counts ? dev.state : "unknown"]++;
    if (dev.lat == null) noPos++;
  }
  const box = $("counts");
  if (!box.childElementCount) {
    box.replaceChildren(...["online", "degraded", "offline", "unknown"].map((s) => {
      const c = document.createElement("span");
      c.className = "c";
      c.dataset.state = s;
      c.innerHTML = `<i class="swatch" style="background:${COLORS[s]}"></i><b></b>`;
      c.append(t(s));
      return c;
    }));
  }
  for (const c of box.children) c.querySelector("b").textContent = i18n.num(counts[c.dataset.state]);
  $("map-sub").textContent = `${i18n.num(devices.size)} ${t("devices")}`
    + (noPos ? ` · ${t("no_position", { n: i18n.num(noPos) })}` : "");
}

let renderedEventsVersion = -1;

function renderEvents() {
  const list = $("events");
  if (renderedEventsVersion !== eventsVersion) {
    renderedEventsVersion = eventsVersion;
    if (!events.length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = t("no_events");
      list.replaceChildren(li);
    } else {
      list.replaceChildren(...events.slice(0, CFG.shownEvents).map(eventRow));
    }
    $("events-sub").textContent = events.length ? String(events.length) : "";
  }
  const at = now();
  for (const el of list.querySelectorAll(".age")) el.textContent = i18n.age((at - Number(el.dataset.ts)) / 1000);
}

function eventRow(e) {
  const li = document.createElement("li");
  li.className = "ev";
  if (Date.now() - e.arrived < 3000) li.classList.add("new");
  li.dataset.sev = e.sev;
  li.dataset.key = e.key;
  li.innerHTML = '<span class="bar"></span><span class="what"></span><span class="age"></span>'
    + '<span class="where"></span><span class="sev"></span>';
  // Alerts bring their own title; events and findings are named by type in the page's language.
  li.querySelector(".what").textContent = (e.frame === "alert" && e.text ? e.text : i18n.eventType(e.type))
    + (e.closed ? " ✓" : "");
  const age = li.querySelector(".age");
  age.dataset.ts = String(e.ts);
  age.textContent = i18n.age((now() - e.ts) / 1000);
  const where = [e.device, e.district ? districtNames.get(e.district) || e.district : null, i18n.time(e.ts)];
  li.querySelector(".where").textContent = where.filter(Boolean).join(" · ");
  li.querySelector(".sev").textContent = t(`sev_${e.sev}`);
  return li;
}

// Camera tiles: fixed slots bound to the most relevant cameras (faulty first), images reloaded on `image`
// frames but at most once per CFG.imgMinIntervalMs per tile.
const cams = { slots: [], lastSelect: 0 };

function buildCams() {
  const box = $("cameras");
  cams.slots = [];
  box.replaceChildren();
  for (let i = 0; i < CFG.maxCams; i++) {
    const el = document.createElement("div");
    el.className = "cam";
    el.hidden = true;
    el.innerHTML = '<img alt="" decoding="async"><div class="ph"></div><div class="cap"><span class="id"></span>'
      + '<span class="st"></span></div>';
    const img = el.querySelector("img");
    const slot = { el, img, ph: el.querySelector(".ph"), id: null, shownSnap: undefined, nextLoad: 0, retries: 0 };
    img.onload = () => {
      slot.ph.textContent = "";
      img.style.visibility = "visible";
      slot.retries = 0;
    };
    img.onerror = () => {
      img.style.visibility = "hidden";
      slot.ph.textContent = t("no_image");
      // `image` frames are sent before the snapshot is committed, so the first fetch can miss it: retry soon,
      // a few times, then wait for the next frame.
      const dev = slot.id && devices.get(slot.id);
      if (dev && dev.lastSnapshot != null && slot.retries < 3) {
        slot.retries++;
        slot.shownSnap = undefined;
        slot.nextLoad = Date.now() + 1500;
      }
    };
    cams.slots.push(slot);
    box.append(el);
  }
}

function camRank(dev, at) {
  if (dev.state === "offline") return 0;
  if (dev.state === "degraded" || faultActive(dev, at)) return 1;
  if (dev.state === "unknown") return 2;
  return 3;
}

function renderCams() {
  const at = now();
  const t0 = Date.now();
  if (t0 - cams.lastSelect >= CFG.camReselectMs) {
    cams.lastSelect = t0;
    const list = [];
    for (const dev of devices.values()) if (dev.kind === "camera") list.push(dev);
    list.sort((a, b) => camRank(a, at) - camRank(b, at) || (b.lastSnapshot ?? 0) - (a.lastSnapshot ?? 0)
      || (a.id < b.id ? -1 : 1));
    const chosen = list.slice(0, cams.slots.length);
    // Keep a camera in the slot it already has, so tiles do not shuffle on every update.
    const keep = new Set(chosen.map((d) => d.id));
    const free = [];
    for (const slot of cams.slots) if (!keep.has(slot.id)) free.push(slot);
    const placed = new Set(cams.slots.filter((s) => keep.has(s.id)).map((s) => s.id));
    for (const dev of chosen) {
      if (placed.has(dev.id)) continue;
      const slot = free.shift();
      slot.id = dev.id;
      slot.shownSnap = undefined;
      slot.nextLoad = 0;
      slot.retries = 0;
    }
    for (const slot of free) slot.id = null;
    const total = list.length;
    $("cam-sub").textContent = total ? `${Math.min(total, cams.slots.length)} / ${i18n.num(total)}` : "";
  }
  let any = false;
  for (const slot of cams.slots) {
    const dev = slot.id && devices.get(slot.id);
    slot.el.hidden = !dev;
    if (!dev) continue;
    any = true;
    const fault = faultActive(dev, at);
    slot.el.dataset.state = dev.state;
    slot.el.dataset.fault = fault ? "1" : "0";
    slot.el.querySelector(".id").textContent = dev.id;
    const st = slot.el.querySelector(".st");
    st.dataset.state = dev.state;
    st.dataset.fault = fault ? "1" : "0";
    st.textContent = fault && dev.state === "online" ? i18n.eventType(faultOf(dev, at)) : t(dev.state);
    const snap = dev.lastSnapshot ?? 0;
    if (slot.shownSnap !== snap && t0 >= slot.nextLoad) {
      slot.shownSnap = snap;
      slot.nextLoad = t0 + CFG.imgMinIntervalMs;
      // A camera seeded from the database has no snapshot time yet: try once, the 404 shows a placeholder.
      slot.img.src = `/api/devices/${encodeURIComponent(dev.id)}/snapshot?t=${snap || t0}`;
    }
  }
  const box = $("cameras");
  if (!any && !box.querySelector(".empty-cams")) {
    const p = document.createElement("div");
    p.className = "ph empty-cams";
    p.textContent = t("no_cameras");
    box.append(p);
  } else if (any) {
    box.querySelector(".empty-cams")?.remove();
  }
}

// --- KPI sparklines ----------------------------------------------------------------------------------

const KPIS = [
  { key: "speed", label: "city_speed", unit: "kmh", digits: 1 },
  { key: "bts", label: "bts_online", unit: "%", digits: 1 },
  { key: "cam", label: "cam_healthy", unit: "%", digits: 1 },
  { key: "ev5", label: "events_5m", unit: "", digits: 0 },
];
let history = loadHistory(); // [{t, speed, bts, cam, ev5}], oldest first, bounded by CFG.historyMs

function loadHistory() {
  try {
    const raw = JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]");
    const since = Date.now() - CFG.historyMs;
    return Array.isArray(raw) ? raw.filter((p) => p && p.t > since).slice(-2000) : [];
  } catch {
    return [];
  }
}

function currentKpis(at) {
  const all = districtHealth(at).get("*") || {};
  const ev5 = events.filter((e) => e.frame === "event" && at - e.ts < 300_000).length;
  return { t: at, speed: all.speed ?? null, bts: all.bts ?? null, cam: all.cam ?? null, ev5 };
}

function sampleKpis() {
  if (conn.snapshots === 0) return; // nothing known yet: do not record zeros
  const at = now();
  history.push(currentKpis(at));
  const since = at - CFG.historyMs;
  while (history.length && (history[0].t < since || history.length > 2000)) history.shift();
  try {
    localStorage.setItem(HISTORY_KEY, JSON.stringify(history));
  } catch { /* storage full or disabled: the ring still works in memory */ }
  renderKpis();
}

function buildKpis() {
  const box = $("kpis");
  box.replaceChildren(...KPIS.map((k) => {
    const el = document.createElement("div");
    el.className = "kpi";
    el.dataset.key = k.key;
    el.innerHTML = '<div><div class="label"></div><div class="value"></div></div><canvas></canvas>';
    el.querySelector(".label").textContent = t(k.label);
    return el;
  }));
  $("kpi-sub").textContent = t("last_hours", { h: CFG.historyMs / 3600_000 });
}

function renderKpis() {
  const at = now();
  const cur = currentKpis(at);
  for (const el of $("kpis").children) {
    const k = KPIS.find((x) => x.key === el.dataset.key);
    const v = cur[k.key];
    const text = v == null ? t("no_data") : k.unit === "%" ? i18n.pct(v) : `${i18n.num(v, k.digits)}${k.unit ? ` ${t(k.unit)}` : ""}`;
    el.querySelector(".value").textContent = text;
    sparkline(el.querySelector("canvas"), k.key, cur, at);
  }
}

function sparkline(canvas, key, cur, at) {
  const px = window.devicePixelRatio || 1;
  const dpr = px * (map.rem / 14); // strokes follow the type scale
  const w = Math.max(1, Math.round(canvas.clientWidth * px));
  const h = Math.max(1, Math.round(canvas.clientHeight * px));
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  const pts = history.filter((p) => p[key] != null).map((p) => [p.t, p[key]]);
  if (cur[key] != null) pts.push([at, cur[key]]);
  ctx.strokeStyle = "#1d2a42";
  ctx.lineWidth = dpr;
  ctx.beginPath();
  ctx.moveTo(0, h - 0.5 * dpr);
  ctx.lineTo(w, h - 0.5 * dpr);
  ctx.stroke();
  if (!pts.length) return;
  let lo = Math.min(...pts.map((p) => p[1]));
  let hi = Math.max(...pts.map((p) => p[1]));
  if (hi - lo < 1) { lo -= 0.5; hi += 0.5; } // flat series sit in the middle, not on an edge
  const pad = 4 * dpr;
  const x = (ts) => pad + ((ts - (at - CFG.historyMs)) / CFG.historyMs) * (w - 2 * pad);
  const y = (v) => h - pad - ((v - lo) / (hi - lo)) * (h - 2 * pad);
  ctx.beginPath();
  pts.forEach(([ts, v], i) => (i ? ctx.lineTo(x(ts), y(v)) : ctx.moveTo(x(ts), y(v))));
  ctx.strokeStyle = "#4da3ff";
  ctx.lineWidth = 2 * dpr;
  ctx.stroke();
  const [lt, lv] = pts[pts.length - 1];
  ctx.fillStyle = "#e8eef7";
  ctx.beginPath();
  ctx.arc(x(lt), y(lv), 3 * dpr, 0, Math.PI * 2);
  ctx.fill();
}

// --- clock and loops ---------------------------------------------------------------------------------

function tick() {
  const at = now();
  $("clock-time").textContent = i18n.time(at);
  $("clock-date").textContent = i18n.date(at);
  checkStale();
  if (Math.floor(at / 1000) % 5 === 0) markMapDirty(); // faults age out even when the feed is quiet
  if (isStale() && conn.state !== "stale" && conn.state !== "down") setConnState("stale");
  updateBanner();
}

let uiMs = 0;

function renderUi() {
  const t0 = performance.now();
  const at = now();
  if (uiDirty) {
    uiDirty = false;
    renderCounts();
    renderDistricts(districtHealth(at));
    renderKpis();
  }
  renderEvents();
  renderCams();
  uiMs = performance.now() - t0;
}

async function loadCity() {
  for (let attempt = 0; ; attempt++) {
    try {
      const resp = await fetch("/api/city", { cache: "no-cache" });
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      city = parseCity(await resp.json());
      break;
    } catch (err) {
      console.warn("city map not loaded:", err);
      await new Promise((r) => setTimeout(r, Math.min(CFG.backoffMaxMs, 1000 * 2 ** attempt)));
    }
  }
  $("city-name").textContent = city.name;
  document.title = `IOC · ${city.name}`;
  for (const d of city.districts) districtNames.set(d.code, d.name);
  layoutMap();
  uiDirty = true;
  eventsVersion++; // re-render rows with district names
}

function ringsArea(rings) {
  let a = 0;
  for (const r of rings) for (let i = 0; i + 1 < r.length; i++) a += r[i][0] * r[i + 1][1] - r[i + 1][0] * r[i][1];
  return Math.abs(a) / 2 || 1e-9;
}

function parseCity(doc) {
  const districts = [];
  const roads = [];
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const f of doc.features || []) {
    const p = f.properties || {};
    const g = f.geometry || {};
    if ((p.layer ?? "district") === "district" && (g.type === "Polygon" || g.type === "MultiPolygon")) {
      const polys = g.type === "Polygon" ? [g.coordinates] : g.coordinates;
      const rings = polys.map((poly) => poly[0]); // outer rings; holes do not matter at this scale
      let sx = 0, sy = 0, n = 0;
      for (const ring of rings) {
        for (const [lon, lat] of ring) {
          x0 = Math.min(x0, lon); x1 = Math.max(x1, lon); y0 = Math.min(y0, lat); y1 = Math.max(y1, lat);
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
  if (!districts.length) x0 = 106.4, y0 = 20.6, x1 = 107.0, y1 = 21.0; // still draw devices if the file is empty
  return { name: doc.properties?.name ?? "", districts, roads, bbox: [x0, y0, x1, y1] };
}

function start() {
  map.canvas = $("map");
  map.ctx = map.canvas.getContext("2d");
  buildStatic();
  new ResizeObserver(() => { layoutMap(); renderKpis(); }).observe(map.canvas);
  $("conn-text").textContent = t("connecting");
  loadCity();
  connect();
  tick();
  setInterval(tick, 1000);
  setInterval(renderUi, CFG.uiIntervalMs);
  setInterval(sampleKpis, CFG.sampleMs);
  setTimeout(sampleKpis, 3000); // a first point soon after the snapshot, then one per interval
  // A laptop waking up or a cable plugged back in: do not wait out the backoff.
  window.addEventListener("online", () => { if (!conn.ws) connect(); });

  // Read-only debug hook for tests and for a curious engineer at the console.
  window.__ioc = {
    get devices() { return devices.size; },
    get connected() { return conn.state === "live"; },
    get connState() { return conn.state; },
    get lastSeq() { return conn.lastSeq; },
    get epoch() { return conn.epoch; },
    get events() { return events.length; },
    get frames() { return conn.frames; },
    get connects() { return conn.connects; },
    get snapshots() { return conn.snapshots; },
    get resumes() { return conn.resumes; },
    get lagged() { return conn.lagged; },
    get stale() { return isStale(); },
    get draws() { return map.draws; },
    get drawnDevices() { return map.drawn; },
    get lastDrawMs() { return map.lastMs; },
    get lastUiMs() { return uiMs; },
    get history() { return history.length; },
    lang: i18n.lang,
    device: (id) => (devices.has(id) ? { ...devices.get(id), latest: { ...devices.get(id).latest } } : null),
    district: (code) => districtHealth(now()).get(code) ?? null,
    // Feed synthetic frames through the normal path (load tests of the map without a server).
    inject: (frames) => onFrames(frames),
    // Simulate a network drop: the page reconnects and resumes from lastSeq in the same epoch.
    drop: () => dropConnection(),
  };
}

start();
