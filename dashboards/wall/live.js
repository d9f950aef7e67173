// The connection to /ws/live (docs/live-feed.md): connect, resume after a drop, back off after a restart,
// notice a dead link by the missing heartbeats, and keep the server's clock. One per page.
import { parseTs } from "./util.js";

// Frames that carry data: only their seq may be resumed from ("resumed" carries the hub's newest seq).
const DATA_FRAMES = new Set(["reading", "status", "event", "image", "finding", "alert", "incident", "health",
  "device", "lagged"]);

export class LiveConnection {
  /**
   * @param {object} opts
   * @param {(frames: object[]) => void} opts.onFrames every message's frames, oldest first
   * @param {(state: string) => void} [opts.onState] connecting | live | stale | down
   * @param {object} [opts.filter] kinds, devices, districts, types (arrays); empty = everything
   */
  constructor({ onFrames, onState = () => {}, filter = {}, staleMs = 30_000, backoffMinMs = 1000,
    backoffMaxMs = 30_000 }) {
    this.onFrames = onFrames;
    this.onState = onState;
    this.filter = filter;
    this.staleMs = staleMs; // the hub sends a heartbeat every 10 s: 30 s of silence means the link is dead
    this.backoffMinMs = backoffMinMs;
    this.backoffMaxMs = backoffMaxMs;
    this.ws = null;
    this.state = "connecting";
    this.epoch = null;
    this.lastSeq = null;
    this.openedAt = 0;
    this.lastMsgAt = 0; // when any message last arrived (our clock)
    this.lastDataAt = 0; // when the feed last proved live (snapshot, resume, heartbeat or data)
    this.attempt = 0;
    this.retryAt = 0;
    this.timer = 0;
    this.clockSkew = 0; // server clock minus ours, from snapshot and heartbeat frames
    this.serverProblems = []; // what stops the server's pipeline (ingest, alerts, analysis), from heartbeats
    this.stats = { connects: 0, snapshots: 0, resumes: 0, lagged: 0, droppedFrames: 0, frames: 0, messages: 0, bytes: 0 };
    this.watchdog = 0;
  }

  /** Server time in ms (our clock corrected by what the server last said). */
  now() {
    return Date.now() + this.clockSkew;
  }

  start() {
    this.connect();
    this.watchdog = setInterval(() => this.checkStale(), 1000);
    // A laptop waking up or a cable plugged back in: do not wait out the backoff.
    window.addEventListener("online", () => { if (!this.ws) this.connect(); });
  }

  get live() {
    return this.state === "live";
  }

  /** True when nothing has arrived for longer than the heartbeat allows (what the screen shows may be old). */
  get stale() {
    return this.lastMsgAt > 0 && Date.now() - this.lastMsgAt > this.staleMs;
  }

  /** Change what the page receives; the server answers with a fresh snapshot. */
  subscribe(filter) {
    this.filter = filter;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ type: "subscribe", ...filter }));
    }
  }

  send(doc) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(doc));
    return true;
  }

  url() {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(this.filter)) {
      if (Array.isArray(v) ? v.length : v) q.set(k, Array.isArray(v) ? v.join(",") : String(v));
    }
    if (this.epoch && this.lastSeq != null) {
      q.set("resume_from", String(this.lastSeq));
      q.set("epoch", this.epoch);
    }
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const s = q.toString();
    return `${proto}//${location.host}/ws/live${s ? `?${s}` : ""}`;
  }

  connect() {
    clearTimeout(this.timer);
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.stats.connects++;
    this.openedAt = Date.now();
    this.setState("connecting");
    ws.onmessage = (msg) => {
      if (ws !== this.ws) return; // a socket we already gave up on
      this.lastMsgAt = Date.now();
      this.stats.messages++;
      this.stats.bytes += msg.data.length;
      let frames;
      try {
        frames = JSON.parse(msg.data);
      } catch {
        return;
      }
      this.handle(Array.isArray(frames) ? frames : [frames]);
    };
    ws.onclose = () => {
      if (ws !== this.ws) return;
      this.ws = null;
      this.scheduleReconnect();
    };
    ws.onerror = () => {}; // a close event always follows
  }

  handle(frames) {
    for (const f of frames) {
      if (!f || typeof f !== "object") continue;
      this.stats.frames++;
      if (DATA_FRAMES.has(f.type) && typeof f.seq === "number") this.lastSeq = Math.max(this.lastSeq ?? 0, f.seq);
      switch (f.type) {
        case "snapshot":
          this.epoch = f.epoch;
          this.lastSeq = f.seq;
          this.stats.snapshots++;
          this.syncClock(f.server_time);
          this.setLive();
          break;
        case "resumed":
          this.stats.resumes++;
          this.setLive();
          break;
        case "heartbeat":
          this.syncClock(f.server_time);
          this.serverProblems = Array.isArray(f.problems) ? f.problems : []; // the pipeline behind the feed
          if (this.state === "stale") this.setState("live");
          break;
        case "lagged":
          this.stats.lagged++;
          this.stats.droppedFrames += f.dropped_frames || 0;
          break;
        case "error":
          console.warn("live feed error:", f.detail);
          break;
        default:
          break;
      }
    }
    this.lastDataAt = Date.now();
    try {
      this.onFrames(frames);
    } catch (err) {
      console.error("frames not applied", err);
    }
  }

  syncClock(serverTime) {
    const ms = parseTs(serverTime);
    if (ms != null) this.clockSkew = ms - Date.now();
  }

  scheduleReconnect() {
    clearTimeout(this.timer);
    // Exponential backoff with jitter, so a wall of screens does not reconnect in lockstep after a restart.
    const base = Math.min(this.backoffMaxMs, this.backoffMinMs * 2 ** this.attempt);
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    this.attempt++;
    this.retryAt = Date.now() + delay;
    this.setState("down");
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Give up on the current socket (also what a test uses to simulate a network drop). */
  drop() {
    const ws = this.ws;
    this.ws = null; // detach first: closing a half-dead TCP link can take long to report
    if (ws) {
      try { ws.close(); } catch { /* already closed */ }
    }
    this.scheduleReconnect();
  }

  setLive() {
    this.attempt = 0;
    this.setState("live");
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.onState(state);
  }

  checkStale() {
    if (!this.ws) return;
    const silent = Date.now() - Math.max(this.lastMsgAt, this.openedAt);
    // Also covers a handshake that hangs (a black-holed network never reports a close).
    if (silent > this.staleMs) {
      if (this.state === "live") this.setState("stale");
      this.drop();
    }
  }
}
