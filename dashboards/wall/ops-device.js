// A device's page: its latest values (live), history charts from the API, the status timeline, the camera's
// latest picture, recent findings, alerts and the alarms the device sent itself.
import { statusStrip, timeChart } from "./chart.js";
import { el, getJson, parseTs, qs } from "./util.js";

const RANGES = [["1h", 3600_000, "1m"], ["6h", 6 * 3600_000, "5m"], ["24h", 24 * 3600_000, "15m"]];
const MAX_CHARTS = 12; // a device has a handful of metrics; never let an odd one create hundreds of canvases

export class DeviceView {
  constructor(id) {
    this.id = id;
    this.range = RANGES[0];
    this.ready = false;
    this.info = null;
    this.latestKey = "";
    this.lastImage = 0;
    this.liveValues = new Map(); // metric -> [value, ts] from reading frames since the page opened
  }

  filter() {
    return { devices: [this.id] }; // everything about this one device, nothing else
  }

  mount(root, ctx) {
    this.ctx = ctx;
    const { t } = ctx.i18n;
    this.head = el("section", { class: "card inc-head" }, t("loading"));
    this.latest = el("table", { class: "kv latest" });
    this.picture = el("div", { class: "picture" });
    this.strip = el("canvas", { class: "strip", id: "status-strip" });
    this.changes = el("ol", { class: "timeline compact" });
    this.rangeBar = el("div", { class: "range" });
    this.charts = el("div", { class: "charts" });
    this.findings = el("table", { class: "list" });
    this.alerts = el("table", { class: "list" });
    this.events = el("table", { class: "list" });
    root.append(this.head, el("div", { class: "cols" },
      el("div", { class: "col" },
        el("section", { class: "card" }, el("h3", { text: t("latest_values") }), this.latest, this.picture),
        el("section", { class: "card" }, el("h3", { text: t("status_timeline") }), this.strip, this.changes),
        el("section", { class: "card" }, el("h3", { text: t("recent_alerts") }), this.alerts),
        el("section", { class: "card" }, el("h3", { text: t("device_events") }), this.events)),
      el("div", { class: "col" },
        el("section", { class: "card" }, el("h3", null, t("history"), this.rangeBar), this.charts),
        el("section", { class: "card" }, el("h3", { text: t("recent_findings") }), this.findings))));
    this.renderRange();
    this.load();
  }

  onFrames(frames) {
    let changed = false;
    for (const f of frames) {
      if (f.device_id !== this.id && f.type !== "snapshot") continue;
      if (f.type === "reading" && f.metrics) {
        const ts = parseTs(f.ts) ?? this.ctx.now();
        for (const [m, v] of Object.entries(f.metrics)) this.liveValues.set(m, [v, ts]);
      }
      if (f.type === "image" && Date.now() - this.lastImage > 5000) this.loadPicture();
      if (f.type === "status") this.later("loadStatus"); // a new state: the timeline gains a segment
      if (f.type === "alert" || f.type === "finding" || f.type === "event") this.later("loadLists");
      changed = true;
    }
    if (changed) this.renderLive();
  }

  tick() {
    this.renderLive();
  }

  renderRange() {
    const { t } = this.ctx.i18n;
    this.rangeBar.replaceChildren(...RANGES.map((r) => el("button", { class: `small${r === this.range ? " on" : ""}`,
      text: t(`range_${r[0]}`), onclick: () => { this.range = r; this.renderRange(); this.loadCharts(); this.loadStatus(); } })));
  }

  async load() {
    try {
      this.info = await getJson(`/api/devices/${encodeURIComponent(this.id)}`);
    } catch (err) {
      this.head.replaceChildren(el("a", { href: "#/incidents", class: "back", text: this.ctx.i18n.t("back") }),
        el("h2", { text: this.ctx.i18n.t("device_n", { id: this.id }) }),
        el("p", { class: "error", text: err.status === 404 ? this.ctx.i18n.t("not_found") : this.ctx.i18n.t("load_failed", { e: err.message }) }));
      return;
    }
    this.renderLive();
    if (this.info.kind === "camera") this.loadPicture();
    await Promise.all([this.loadCharts(), this.loadStatus(), this.loadLists()]);
    this.ready = true;
  }

  /** Head and latest values: live state when the feed has it, else what the API said. */
  renderLive() {
    if (!this.info) return;
    const { i18n } = this.ctx;
    const { t } = i18n;
    const live = this.ctx.devices.devices.get(this.id);
    const state = live?.state || this.info.state;
    const seen = live?.lastSeen ?? parseTs(this.info.last_seen);
    const district = live?.district || null;
    const facts = [[t("kind"), t(this.info.kind === "traffic" ? "kind_traffic" : this.info.kind)],
      [t("district"), district ? this.ctx.city?.names.get(district) || district : "—"],
      [t("position"), this.info.lat != null ? `${i18n.num(this.info.lat, 2)}, ${i18n.num(this.info.lon, 2)}` : "—"],
      [t("last_seen"), seen ? `${i18n.stamp(seen)} (${i18n.age((this.ctx.now() - seen) / 1000)})` : "—"],
      [t("reason"), live?.reason ?? this.info.state_reason ?? "—"]];
    const headKey = JSON.stringify([state, facts]);
    if (headKey !== this.headKey) {
      this.headKey = headKey;
      this.head.replaceChildren(
        el("div", { class: "head-line" }, el("a", { href: "#/incidents", class: "back", text: t("back") }),
          el("h2", { id: "device-title", text: this.id }),
          el("span", { class: "state-badge", id: "device-state", dataset: { state }, text: t(state) })),
        el("dl", { class: "facts" }, ...facts.map(([k, v]) => el("div", null, el("dt", { text: k }), el("dd", { text: v })))));
    }
    const values = new Map((this.info.latest || []).map((r) => [r.metric, [r.value, parseTs(r.ts)]]));
    for (const [m, v] of this.liveValues) if (!values.has(m) || v[1] >= values.get(m)[1]) values.set(m, v);
    const rows = [...values.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1));
    const key = JSON.stringify(rows);
    if (key === this.latestKey) return;
    this.latestKey = key;
    this.latest.replaceChildren(el("tbody", null, ...rows.map(([m, [v, ts]]) => el("tr", { dataset: { metric: m } },
      el("th", { text: i18n.metric(m) }),
      el("td", { class: "num value", text: `${i18n.num(v, Math.abs(v) < 100 ? 1 : 0)} ${i18n.unit(m)}` }),
      el("td", { class: "muted", text: ts ? i18n.time(ts) : "" })))));
  }

  loadPicture() {
    this.lastImage = Date.now();
    const img = el("img", { class: "snapshot", id: "device-snapshot", alt: this.id,
      src: `/api/devices/${encodeURIComponent(this.id)}/snapshot?t=${Date.now()}` });
    // Swap only once the new picture is decoded, so the tile never flashes empty.
    img.onload = () => this.picture.replaceChildren(el("h4", { text: this.ctx.i18n.t("snapshot") }), img);
    img.onerror = () => { if (!this.picture.firstChild) this.picture.replaceChildren(el("p", { class: "muted", text: this.ctx.i18n.t("no_image") })); };
  }

  window() {
    const end = this.ctx.now();
    return [end - this.range[1], end];
  }

  async loadCharts() {
    const [start, end] = this.window();
    const { i18n } = this.ctx;
    try {
      const rows = await getJson(`/api/telemetry${qs({ device_id: this.id, bucket: this.range[2],
        start: new Date(start).toISOString(), end: new Date(end).toISOString() })}`);
      const byMetric = new Map();
      for (const r of rows || []) {
        if (!byMetric.has(r.metric)) byMetric.set(r.metric, []);
        byMetric.get(r.metric).push([parseTs(r.bucket), r.avg, r.min, r.max]);
      }
      const metrics = [...byMetric.keys()].sort().slice(0, MAX_CHARTS);
      this.charts.replaceChildren(...metrics.map((m) => el("figure", { class: "chart-box", dataset: { metric: m } },
        el("figcaption", { text: `${i18n.metric(m)}${i18n.unit(m) ? ` (${i18n.unit(m)})` : ""}` }), el("canvas", { class: "chart" }))));
      if (!metrics.length) this.charts.replaceChildren(el("p", { class: "muted", text: i18n.t("no_data") }));
      for (const fig of this.charts.querySelectorAll("figure")) {
        const m = fig.dataset.metric;
        timeChart(fig.querySelector("canvas"), [{ label: m, points: byMetric.get(m) }], { start, end, i18n, unit: i18n.unit(m) });
      }
      this.charts.dataset.metrics = String(metrics.length);
    } catch (err) {
      this.charts.replaceChildren(el("p", { class: "error", text: i18n.t("load_failed", { e: err.message }) }));
    }
  }

  async loadStatus() {
    const [start, end] = this.window();
    const { i18n } = this.ctx;
    try {
      const rows = await getJson(`/api/devices/${encodeURIComponent(this.id)}/status${qs({
        start: new Date(start).toISOString(), end: new Date(end).toISOString() })}`);
      const changes = (rows || []).map((r) => ({ t: parseTs(r.ts), state: r.state, reason: r.reason }));
      statusStrip(this.strip, changes, { start, end, i18n });
      this.strip.dataset.changes = String(changes.length);
      this.changes.replaceChildren(...changes.slice(-20).reverse().map((c) => el("li", { dataset: { state: c.state } },
        el("span", { class: "when", text: i18n.stamp(c.t) }), el("span", { class: "what", text: i18n.t(c.state) }),
        el("span", { class: "note", text: c.reason || "" }))));
    } catch (err) {
      this.changes.replaceChildren(el("li", { class: "error", text: i18n.t("load_failed", { e: err.message }) }));
    }
  }

  async loadLists() {
    const { i18n } = this.ctx;
    const { t } = i18n;
    const id = encodeURIComponent(this.id);
    const table = (node, heads, rows) => node.replaceChildren(el("thead", null, el("tr", null, ...heads.map((h) => el("th", { text: t(h) })))),
      el("tbody", null, ...(rows.length ? rows : [el("tr", null, el("td", { class: "none", colSpan: heads.length, text: t("none_found") }))])));
    const [findings, alerts, events] = await Promise.allSettled([
      getJson(`/api/findings${qs({ device_id: this.id, limit: 20 })}`),
      getJson(`/api/alerts${qs({ device_id: this.id, limit: 20 })}`),
      getJson(`/api/devices/${id}/events${qs({ limit: 20 })}`)]);
    if (findings.status === "fulfilled") {
      table(this.findings, ["col_started", "col_rule", "col_title"], findings.value.map((f) => el("tr", null,
        el("td", { class: "num", text: i18n.stamp(parseTs(f.ts)) }), el("td", { text: `${i18n.eventType(f.type)} (${f.series})` }),
        el("td", { class: "title", text: f.explanation || "" }))));
    }
    if (alerts.status === "fulfilled") {
      table(this.alerts, ["col_severity", "col_title", "col_state", "col_started"], alerts.value.map((a) => el("tr", {
        class: "row", onclick: () => a.incident_id != null && this.ctx.navigate(`#/incidents/${a.incident_id}`) },
      el("td", null, el("span", { class: "sev-badge", dataset: { sev: a.severity }, text: t(`sev_${a.severity}`) })),
      el("td", { class: "title", text: i18n.lang === "en" ? a.title : i18n.rule(a.rule) }), el("td", { class: "state", dataset: { state: a.state }, text: t(`st_${a.state}`) }),
      el("td", { class: "num", text: i18n.stamp(parseTs(a.started_at)) }))));
    }
    if (events.status === "fulfilled") {
      table(this.events, ["col_started", "col_title", "col_severity"], events.value.map((e) => el("tr", null,
        el("td", { class: "num", text: i18n.stamp(parseTs(e.ts)) }), el("td", { text: i18n.eventType(e.type) }),
        el("td", null, el("span", { class: "sev-badge", dataset: { sev: e.severity }, text: t(`sev_${e.severity}`) })))));
    }
  }

  /** Reload from the API soon, once per burst: live frames are sent before their rows are committed. */
  later(what) {
    this.pending = this.pending || new Map();
    if (this.pending.has(what)) return;
    this.pending.set(what, setTimeout(() => { this.pending.delete(what); this[what](); }, 1500));
  }

  unmount() {
    for (const timer of this.pending?.values() || []) clearTimeout(timer);
  }
}
