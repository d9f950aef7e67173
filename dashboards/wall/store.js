// What the screens know, built from live-feed frames: every device's state, the live incidents and a short
// log of recent device events and findings. Every collection is bounded (a screen runs a 24-hour shift).
import { parseTs } from "./util.js";

export const SEVERITIES = ["critical", "major", "minor", "warning", "info"];
export const SEV_RANK = { critical: 4, major: 3, minor: 2, warning: 1, info: 0 };
const FAULT_SEVERITIES = new Set(["critical", "major", "minor"]);
const CLEARING = /(clear|restor|recover|resolv|normal|_ok$|^ok$|_up$)/i;
const LIVE_STATES = new Set(["open", "acknowledged"]);

export class DeviceStore {
  constructor({ faultTtlMs = 30 * 60_000, speedAlpha = 0.05 } = {}) {
    /** @type {Map<string, any>} device id -> device; bounded by the server's registry (snapshots prune it) */
    this.devices = new Map();
    this.version = 0; // bumped by every batch of frames: caches key on it
    this.faultTtlMs = faultTtlMs; // a device fault nobody cleared stops counting after 30 min
    this.speedAlpha = speedAlpha; // running mean of each traffic sensor's own speed
    this.healthCache = { at: 0, version: -1, value: new Map() };
  }

  get(id, kind) {
    let dev = this.devices.get(id);
    if (!dev) {
      dev = {
        id, kind, district: null, lat: null, lon: null, state: "unknown", reason: null, lastSeen: null,
        latest: Object.create(null), lastSnapshot: null, fault: null, health: null, speedMean: null,
      };
      this.devices.set(id, dev);
    }
    if (kind && kind !== "incident" && kind !== "group") dev.kind = kind;
    return dev;
  }

  static setPos(dev, lat, lon) {
    if (typeof lat === "number" && typeof lon === "number" && (lat !== dev.lat || lon !== dev.lon)) {
      dev.lat = lat;
      dev.lon = lon;
    }
  }

  feedSpeed(dev, value) {
    if (!Number.isFinite(value)) return;
    dev.speedMean = dev.speedMean == null ? value : dev.speedMean + this.speedAlpha * (value - dev.speedMean);
  }

  applyFull(s) {
    const dev = this.get(s.device_id, s.kind);
    if ("district" in s) dev.district = s.district;
    DeviceStore.setPos(dev, s.lat, s.lon);
    dev.state = s.state || "unknown";
    dev.reason = s.state_reason ?? null;
    dev.lastSeen = parseTs(s.last_seen) ?? dev.lastSeen;
    const latest = Object.create(null);
    for (const [metric, v] of Object.entries(s.latest || {})) latest[metric] = v && typeof v === "object" ? v.value : v;
    dev.latest = latest;
    if (dev.kind === "traffic" && dev.speedMean == null) this.feedSpeed(dev, latest.speed_kmh);
    const snap = parseTs(s.last_snapshot);
    if (snap != null) dev.lastSnapshot = snap;
    if (s.health && typeof s.health === "object") dev.health = s.health.label ? s.health : null;
    return dev;
  }

  /** Positions from the registry (`GET /api/devices`) for devices the feed has not placed yet: a position
   * rides only on some readings, so a device first heard of mid-run may be unplaced for a while. */
  fillPositions(rows) {
    let n = 0;
    for (const r of rows) {
      const dev = this.devices.get(r.device_id);
      if (dev && dev.lat == null && typeof r.lat === "number" && typeof r.lon === "number") {
        DeviceStore.setPos(dev, r.lat, r.lon);
        n++;
      }
    }
    return n;
  }

  unplaced() {
    let n = 0;
    for (const dev of this.devices.values()) if (dev.lat == null) n++;
    return n;
  }

  /** Apply one frame; returns true when it concerned devices. */
  apply(f, now) {
    switch (f.type) {
      case "snapshot": {
        // A fresh snapshot is the whole truth: devices it does not list are gone (or filtered out).
        const seen = new Set();
        for (const s of f.devices || []) seen.add(this.applyFull(s).id);
        for (const id of this.devices.keys()) if (!seen.has(id)) this.devices.delete(id);
        return true;
      }
      case "reading": {
        const dev = this.get(f.device_id, f.kind);
        if (f.district !== undefined) dev.district = f.district;
        DeviceStore.setPos(dev, f.lat, f.lon);
        if (f.metrics) for (const k in f.metrics) dev.latest[k] = f.metrics[k];
        dev.lastSeen = now;
        if (dev.kind === "traffic" && f.metrics) this.feedSpeed(dev, f.metrics.speed_kmh);
        return true;
      }
      case "status": {
        const dev = this.get(f.device_id, f.kind);
        if (f.district !== undefined) dev.district = f.district;
        DeviceStore.setPos(dev, f.lat, f.lon);
        dev.state = f.state || "unknown";
        dev.reason = f.reason ?? null;
        return true;
      }
      case "image": {
        const dev = this.get(f.device_id, f.kind || "camera");
        DeviceStore.setPos(dev, f.lat, f.lon);
        dev.lastSnapshot = parseTs(f.ts) ?? now;
        return true;
      }
      case "device":
        this.applyFull(f);
        return true;
      case "health": {
        // The camera analyser's verdict on the picture (ok, black, freeze, blur...), sent when it changes.
        const dev = this.devices.get(f.device_id);
        if (dev) dev.health = f.label ? { label: f.label, confidence: f.confidence, ts: parseTs(f.ts) } : null;
        return !!dev;
      }
      case "event": {
        const dev = this.devices.get(f.device_id);
        if (!dev) return false;
        const sev = String(f.severity || "").toLowerCase();
        if (sev === "info" || CLEARING.test(String(f.event_type))) dev.fault = null;
        else if (FAULT_SEVERITIES.has(sev)) dev.fault = { type: f.event_type, sev, ts: parseTs(f.ts) ?? now };
        return true;
      }
      default:
        return false;
    }
  }

  /** What is wrong with a device that its own state does not say: the camera analyser's label, or an
   * uncleared device alarm of severity minor or worse. null when nothing is. */
  faultOf(dev, at) {
    if (dev.health && dev.health.label && dev.health.label !== "ok") return dev.health.label;
    if (dev.fault != null && at - dev.fault.ts < this.faultTtlMs) return dev.fault.type;
    return null;
  }

  /** Per district (and "*" for the city): BTS online %, cameras healthy %, mean speed, speed index, level. */
  districtHealth(at) {
    const cache = this.healthCache;
    if (cache.version === this.version && at - cache.at < 1000) return cache.value;
    const acc = new Map();
    const get = (code) => {
      let a = acc.get(code);
      if (!a) acc.set(code, (a = { bts: 0, btsOn: 0, cam: 0, camOk: 0, speedSum: 0, speedN: 0, idxSum: 0, idxN: 0 }));
      return a;
    };
    const all = get("*");
    for (const dev of this.devices.values()) {
      const one = dev.district ? get(dev.district) : null;
      for (const a of one ? [one, all] : [all]) {
        if (dev.kind === "bts") {
          a.bts++;
          if (dev.state === "online") a.btsOn++;
        } else if (dev.kind === "camera") {
          a.cam++;
          if (dev.state === "online" && this.faultOf(dev, at) == null) a.camOk++;
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
      const worst = Math.max(level(bts, 95, 80), level(cam, 90, 70), level(index, 75, 50));
      const any = a.bts + a.cam + a.speedN > 0;
      out.set(code, {
        bts, cam, speed, index, nBts: a.bts, nCam: a.cam, nTraffic: a.speedN,
        level: any ? ["ok", "warn", "bad"][worst] : null,
      });
    }
    this.healthCache = { at, version: this.version, value: out };
    return out;
  }
}

const level = (v, warn, bad) => (v == null ? 0 : v < bad ? 2 : v < warn ? 1 : 0);
export const grade = (v, warn, bad) => ["", "warn", "bad"][level(v, warn, bad)];

/** Live incidents (open, acknowledged) from the snapshot and `incident` frames; resolved ones linger briefly. */
export class IncidentStore {
  constructor({ lingerMs = 120_000, maxEnded = 50 } = {}) {
    /** @type {Map<number, any>} */
    this.items = new Map();
    this.version = 0;
    this.lingerMs = lingerMs;
    this.maxEnded = maxEnded;
    this.byDevice = new Map(); // device id -> worst live member severity (for the map)
    this.byDeviceVersion = -1;
    // A snapshot holds the server's most severe live incidents only (IOC_LIVE__SNAPSHOT_INCIDENTS): `hidden` live
    // ones were left out, counted in liveCount() until a frame shows one of them (started before the snapshot).
    this.hidden = 0;
    this.snapshotAt = 0;
  }

  /** Apply one frame; returns true when incidents changed. */
  apply(f, now) {
    if (f.type === "snapshot") {
      this.items.clear();
      const shown = f.incidents || [];
      this.hidden = 0;
      for (const inc of shown) this.upsert(inc, now);
      this.hidden = Math.max(0, (f.incidents_total ?? shown.length) - shown.length);
      this.snapshotAt = parseTs(f.server_time) ?? now;
      this.version++;
      return true;
    }
    if (f.type !== "incident" || !f.incident) return false;
    this.upsert(f.incident, now);
    this.version++;
    return true;
  }

  upsert(inc, now) {
    if (inc.id == null) return;
    const prev = this.items.get(inc.id);
    if (!prev && this.hidden > 0 && (parseTs(inc.started_at) ?? Infinity) <= this.snapshotAt) this.hidden--;
    if (inc.state === "closed") {
      this.items.delete(inc.id);
      return;
    }
    // arrived/shownAt: when this screen first heard of it and first drew it (how late a wall is, measurably).
    const item = { ...inc, arrived: prev ? prev.arrived : now, shownAt: prev?.shownAt ?? null,
      shownState: prev?.shownState ?? null, stateShownAt: prev?.stateShownAt ?? null, changed: now,
      endedAt: LIVE_STATES.has(inc.state) ? null : (prev?.endedAt ?? now) };
    this.items.set(inc.id, item);
    this.prune(now);
  }

  prune(now) {
    let ended = 0;
    for (const [id, inc] of this.items) {
      if (inc.endedAt == null) continue;
      if (now - inc.endedAt > this.lingerMs || ++ended > this.maxEnded) {
        this.items.delete(id);
        this.version++;
      }
    }
  }

  /** Live first, most severe first, then oldest first (what has waited longest needs attention). */
  sorted() {
    return [...this.items.values()].sort((a, b) => (a.endedAt != null) - (b.endedAt != null)
      || (SEV_RANK[b.severity] ?? 0) - (SEV_RANK[a.severity] ?? 0)
      || (parseTs(a.started_at) ?? 0) - (parseTs(b.started_at) ?? 0) || a.id - b.id);
  }

  /** Live incidents: those held, and those the snapshot left out. */
  liveCount() {
    let n = this.hidden;
    for (const inc of this.items.values()) if (inc.endedAt == null) n++;
    return n;
  }

  /** Devices that are live members of live incidents, with the worst severity each is part of. */
  deviceMarks() {
    if (this.byDeviceVersion === this.version) return this.byDevice;
    const marks = new Map();
    for (const inc of this.items.values()) {
      if (inc.endedAt != null) continue;
      for (const m of inc.members || []) {
        if (!m.device_id || !LIVE_STATES.has(m.state)) continue;
        const sev = m.severity || inc.severity;
        const prev = marks.get(m.device_id);
        if (!prev || (SEV_RANK[sev] ?? 0) > (SEV_RANK[prev.sev] ?? 0)) marks.set(m.device_id, { sev, incident: inc.id });
      }
    }
    this.byDevice = marks;
    this.byDeviceVersion = this.version;
    return marks;
  }
}

/** The newest device events and detector findings, newest first, at most `max`. */
export class EventLog {
  constructor(max = 200) {
    this.max = max;
    this.items = [];
    this.keys = new Set();
    this.version = 0;
  }

  apply(f, now) {
    if (f.type !== "event" && f.type !== "finding") return false;
    const ts = parseTs(f.ts) ?? now;
    let sev = String(f.severity ?? "").toLowerCase();
    if (!SEVERITIES.includes(sev)) {
      const score = Number(f.score);
      sev = Number.isFinite(score) ? (score >= 0.9 ? "major" : score >= 0.7 ? "minor" : "warning") : "warning";
    }
    const type = String(f.event_type ?? f.finding_type ?? f.type);
    const key = `${f.type}|${f.device_id}|${type}|${ts}`;
    if (this.keys.has(key)) return false; // a frame replayed by a resume
    this.items.unshift({ key, ts, sev, type, frame: f.type, device: f.device_id ?? "", kind: f.kind ?? "",
      district: f.district ?? null, text: f.explanation ?? null, arrived: Date.now() });
    this.keys.add(key);
    if (this.items.length > this.max) for (const old of this.items.splice(this.max)) this.keys.delete(old.key);
    this.version++;
    return true;
  }
}
