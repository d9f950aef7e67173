// Control-room wall display: live state from /ws/live drawn on a canvas map, district health tiles, the open
// incident queue, recent events, camera tiles and KPI sparklines. No build step, no network but the IOC.
// Wiring only: the connection (live.js), state (store.js), map (citymap.js) and panels live in their modules.
import { CityMap, loadCity } from "./citymap.js";
import { KpiPanel } from "./kpi.js";
import { LiveConnection } from "./live.js";
import { DeviceStore, EventLog, IncidentStore } from "./store.js";
import { $, getJson, loadUiSettings, setText } from "./util.js";
import { WallPanels } from "./wall-panels.js";

const params = new URLSearchParams(location.search);
const intParam = (name, lo, hi, dflt) => {
  const v = Number.parseInt(params.get(name) ?? "", 10);
  return Number.isFinite(v) ? Math.min(hi, Math.max(lo, v)) : dflt;
};

const CFG = {
  maxCams: intParam("cams", 1, 48, 12),
  uiIntervalMs: 1000, // panels once a second: enough to read from across a room, cheap at 4K
  sampleMs: intParam("sample", 1, 600, 30) * 1000,
  mapMinIntervalMs: 200, // at most ~5 map redraws a second, however busy the feed
  dimAfterMs: 5000, // a short reconnect does not grey the wall out; a real outage does
};

async function main() {
  const { i18n } = await loadUiSettings();
  const { t } = i18n;
  const devices = new DeviceStore();
  const incidents = new IncidentStore();
  const events = new EventLog(200);
  let uiDirty = true;
  let bannerNote = null; // {text, until}
  let incidentFrame = 0;
  let city = null;

  const live = new LiveConnection({
    onFrames: (frames) => {
      const at = live.now();
      let incidentNews = false;
      for (const f of frames) {
        try {
          devices.apply(f, at);
          incidentNews = incidents.apply(f, at) || incidentNews;
          events.apply(f, at);
          if (f.type === "lagged") {
            bannerNote = { text: t("banner_lagged", { n: f.dropped_frames || 0 }), until: Date.now() + 15_000 };
          }
        } catch (err) {
          console.error("frame failed", f.type, err);
        }
      }
      devices.version++;
      uiDirty = true;
      map.markDirty();
      // A new or changed incident is drawn at the next frame, not at the next once-a-second pass.
      if (incidentNews && !incidentFrame) {
        incidentFrame = requestAnimationFrame(() => { incidentFrame = 0; panels.renderIncidents(live.now()); });
      }
    },
    onState: (state) => {
      const node = $("conn");
      node.dataset.state = state;
      setText($("conn-text"), t({ live: "live", stale: "stale", down: "offline_conn" }[state] || "connecting"));
      updateBanner();
    },
  });

  const map = new CityMap($("map"), {
    devices, label: t, minIntervalMs: CFG.mapMinIntervalMs,
    marks: () => incidents.deviceMarks(),
    health: () => devices.districtHealth(live.now()),
    onPick: (dev) => window.open(`/ops${location.search}#/devices/${encodeURIComponent(dev.id)}`, "_blank"),
  });
  const panels = new WallPanels({ i18n, devices, incidents, events, city: null, now: () => live.now(), maxCams: CFG.maxCams });
  const kpis = new KpiPanel({
    i18n,
    current: (at) => {
      const all = devices.districtHealth(at).get("*") || {};
      return { speed: all.speed ?? null, bts: all.bts ?? null, cam: all.cam ?? null, inc: incidents.liveCount() };
    },
  });
  const typeScale = () => (Number.parseFloat(getComputedStyle(document.documentElement).fontSize) || 14) / 14;
  new ResizeObserver(() => kpis.render(live.now(), typeScale())).observe($("kpis"));

  function updateBanner() {
    const node = $("banner");
    let text = null;
    let kind = "alarm";
    const outageMs = Date.now() - live.lastMsgAt; // reconnect attempts do not count as news
    if (live.stale) {
      text = t("banner_stale", { since: i18n.time(live.lastMsgAt + live.clockSkew), age: i18n.age((Date.now() - live.lastMsgAt) / 1000) });
    } else if (live.state === "down") {
      text = t("banner_down", { sec: Math.max(0, Math.ceil((live.retryAt - Date.now()) / 1000)), n: live.attempt });
    } else if (live.state === "connecting" && live.attempt > 0) {
      text = t("banner_retrying", { n: live.attempt });
    } else if (live.serverProblems.length) {
      // The link is up but the server's pipeline is not moving: what the wall shows may be old.
      text = t("banner_pipeline", { what: live.serverProblems.join(" · ") });
    } else if (bannerNote && Date.now() < bannerNote.until) {
      text = bannerNote.text;
      kind = "info";
    }
    if (text != null && kind === "alarm" && live.lastMsgAt) text += ` · ${t("banner_since", { since: i18n.time(live.lastMsgAt + live.clockSkew) })}`;
    node.hidden = text == null;
    if (text != null) {
      setText(node, text);
      node.dataset.kind = kind;
    }
    // Grey out what can no longer be trusted, so nobody acts on a frozen picture of the city.
    document.body.classList.toggle("stale", live.state !== "live" && live.stats.snapshots > 0 && outageMs > CFG.dimAfterMs);
  }

  // Devices the feed has not placed yet get their registry position, asked only while some are unplaced:
  // again 15 s later while that helps, backing off to 10 min while it does not (a device without a position
  // anywhere must not cost a registry download every few seconds).
  let placing = false;
  let placeAt = 0;
  let placeGap = 15_000;
  async function placeDevices() {
    if (placing || Date.now() < placeAt || !devices.unplaced()) return;
    placing = true;
    try {
      let placed = 0;
      for (let offset = 0; offset < 100_000; offset += 10_000) {
        const rows = await getJson(`/api/devices?limit=10000&offset=${offset}`);
        placed += devices.fillPositions(rows || []);
        if (!rows || rows.length < 10_000) break;
      }
      if (placed) map.markDirty();
      placeGap = placed ? 15_000 : Math.min(600_000, 2 * placeGap);
      placeAt = Date.now() + placeGap;
    } catch (err) {
      console.warn("registry positions not loaded:", err.message);
      placeAt = Date.now() + placeGap;
    } finally {
      placing = false;
    }
  }

  let uiMs = 0;
  function renderUi() {
    const t0 = performance.now();
    const at = live.now();
    incidents.prune(at);
    if (uiDirty) {
      uiDirty = false;
      panels.renderState(at);
      kpis.render(at, typeScale());
    }
    panels.renderIncidents(at);
    panels.renderEvents(at);
    panels.renderCams(at, live.live);
    uiMs = performance.now() - t0;
  }

  function tick() {
    const at = live.now();
    setText($("clock-time"), i18n.time(at));
    setText($("clock-date"), i18n.date(at));
    if (Math.floor(at / 1000) % 5 === 0) map.markDirty(); // faults age out even when the feed is quiet
    if (live.live) placeDevices();
    updateBanner();
  }

  setText($("conn-text"), t("connecting"));
  live.start();
  tick();
  setInterval(tick, 1000);
  setInterval(renderUi, CFG.uiIntervalMs);
  setInterval(() => { if (live.stats.snapshots) kpis.sample(live.now()); }, CFG.sampleMs);
  kpis.backfill().then(() => { uiDirty = true; });
  loadCity().then((c) => {
    city = c;
    setText($("city-name"), city.name);
    document.title = `IOC · ${city.name}`;
    panels.city = city;
    map.setCity(city);
    uiDirty = true;
    panels.rendered.incidents = panels.rendered.events = -1; // re-render rows with district names
  });

  // Read-only debug hook for tests, the benchmark and a curious engineer at the console.
  window.__ioc = {
    get devices() { return devices.devices.size; },
    get connected() { return live.state === "live"; },
    get connState() { return live.state; },
    get lastSeq() { return live.lastSeq; },
    get epoch() { return live.epoch; },
    get incidents() { return incidents.liveCount(); },
    get events() { return events.items.length; },
    get frames() { return live.stats.frames; },
    get connects() { return live.stats.connects; },
    get snapshots() { return live.stats.snapshots; },
    get resumes() { return live.stats.resumes; },
    get lagged() { return live.stats.lagged; },
    get stale() { return live.stale; },
    get draws() { return map.stats.draws; },
    get drawnDevices() { return map.stats.drawn; },
    get lastDrawMs() { return map.stats.lastMs; },
    get mapIntervalMs() { return map.stats.intervalMs; },
    get mapBusy() { return map.busy; }, // a draw is with the worker (the benchmark times publish -> map)
    get lastUiMs() { return uiMs; },
    get history() { return kpis.history.length; },
    get cityLoaded() { return city != null; },
    lang: i18n.lang,
    timeZone: i18n.timeZone,
    device: (id) => (devices.devices.has(id) ? { ...devices.devices.get(id), latest: { ...devices.devices.get(id).latest } } : null),
    district: (code) => devices.districtHealth(live.now()).get(code) ?? null,
    incident: (id) => { const inc = incidents.items.get(id); return inc ? { ...inc } : null; },
    /** The live incident a device is a member of (id, state, and when this screen heard of it and drew it). */
    incidentOf: (deviceId) => {
      for (const inc of incidents.items.values()) {
        if ((inc.members || []).some((m) => m.device_id === deviceId)) {
          return { id: inc.id, state: inc.state, started_at: inc.started_at, arrived: inc.arrived, shownAt: inc.shownAt,
            shownState: inc.shownState, stateShownAt: inc.stateShownAt, acked_by: inc.acked_by, members: (inc.members || []).length };
        }
      }
      return null;
    },
    // Feed synthetic frames through the normal path (load tests of the map without a server).
    inject: (frames) => live.handle(frames),
    // Simulate a network drop: the page reconnects and resumes from lastSeq in the same epoch.
    drop: () => live.drop(),
  };
}

main();
