// An incident's page: headline and state, actions (acknowledge, assign, comment, resolve, close, silence),
// its member alerts on the map, the evidence of the selected member (values, a chart of the metric around
// the start, the camera's snapshot) and the timeline of everything that happened to it.
import { timeChart } from "./chart.js";
import { CityMap } from "./citymap.js";
import { SEV_COLORS } from "./palette.js";
import { DeviceStore } from "./store.js";
import { $, el, getJson, parseTs, qs } from "./util.js";

// The metric that shows a rule's condition best, per device kind, when the evidence does not name one.
const RULE_METRIC = {
  mains_power_lost: "battery_pct", battery_low: "battery_pct", speed_collapse: "speed_kmh",
  availability_drop: "availability_pct", camera_fault: "fps", camera_stream: "fps",
};
const KIND_METRIC = { bts: "availability_pct", traffic: "speed_kmh", camera: "fps" };
// Alerts per page of the members table, and the most one page of /api/incidents/{id} embeds (alerts_limit's max).
const PAGE = 500;
const MAX_ALERTS = 5000;

export class IncidentView {
  constructor(id) {
    this.id = id;
    this.inc = null;
    this.selected = null; // alert id whose evidence is shown
    this.ready = false;
    this.refetchTimer = 0;
    this.chartKey = "";
    this.map = null;
    this.want = PAGE; // alerts asked for: a storm's incident has tens of thousands, shown a page at a time
  }

  filter() {
    return { types: ["incident", "alert", "status", "image", "health"] };
  }

  mount(root, ctx) {
    this.ctx = ctx;
    const { t } = ctx.i18n;
    this.head = el("section", { class: "card inc-head" }, t("loading"));
    this.note = el("input", { class: "note", placeholder: t("note_ph"), maxLength: 2000 });
    this.assignee = el("input", { class: "assignee", list: "officer-ids", placeholder: t("col_assignee"), size: 12 });
    this.officerList = el("datalist", { id: "officer-ids" });
    this.actions = el("div", { class: "actions" });
    this.canvas = el("canvas", { class: "inc-map" });
    this.members = el("table", { class: "list members" });
    this.membersTitle = el("h3", { text: t("members") });
    this.membersMore = el("div", { class: "members-more", id: "members-more", hidden: true });
    this.evidence = el("div", { class: "evidence" });
    this.timeline = el("ol", { class: "timeline" });
    this.comment = el("textarea", { class: "comment", rows: 2, placeholder: t("comment_ph"), maxLength: 2000 });
    root.append(
      this.head,
      el("section", { class: "card action-bar" }, this.actions, this.note, this.officerList),
      el("div", { class: "cols" },
        el("div", { class: "col" },
          el("section", { class: "card" }, el("h3", { text: t("map") }), el("div", { class: "map-box" }, this.canvas)),
          el("section", { class: "card" }, this.membersTitle, this.members, this.membersMore)),
        el("div", { class: "col" },
          el("section", { class: "card" }, el("h3", { text: t("evidence") }), this.evidence),
          el("section", { class: "card" }, el("h3", { text: t("timeline") }), this.timeline,
            el("div", { class: "comment-box" }, this.comment,
              el("button", { text: t("act_comment"), onclick: () => this.doComment() }))))));
    this.map = new CityMap(this.canvas, { devices: ctx.devices, label: t, inset: false, minIntervalMs: 500,
      marks: () => this.marks(), onPick: (dev) => ctx.navigate(`#/devices/${encodeURIComponent(dev.id)}`) });
    if (ctx.city) this.map.setCity(ctx.city);
    this.onOfficers();
    this.load();
  }

  unmount() {
    clearTimeout(this.refetchTimer);
    this.map?.destroy();
  }

  onCity(city) {
    this.map.setCity(city);
    this.focusMap();
  }

  onOfficers() {
    this.officerList.replaceChildren(...this.ctx.officers.map((o) => el("option", { value: o.id, text: o.name })));
  }

  onFrames(frames) {
    let mine = false;
    let devs = false;
    for (const f of frames) {
      if (f.type === "incident" && f.incident?.id === this.id) mine = true;
      else if (f.type === "alert" && f.alert?.incident_id === this.id) mine = true;
      else if (f.type === "snapshot") { mine = true; devs = true; }
      else if (f.type === "status" || f.type === "health") devs = true;
      else if (f.type === "image" && this.inc?.alerts.some((a) => a.device_id === f.device_id)) this.refreshSnapshot(f.device_id);
    }
    if (devs) this.map.markDirty();
    if (mine) {
      // The frame says something changed; the page (with its history) comes from the API, once per burst.
      clearTimeout(this.refetchTimer);
      this.refetchTimer = setTimeout(() => this.load(), 300);
    }
  }

  tick() {
    if (this.inc) this.renderHead();
  }

  marks() {
    const m = new Map();
    for (const a of this.inc?.alerts || []) {
      if (a.device_id && (a.state === "open" || a.state === "acknowledged")) m.set(a.device_id, { sev: a.severity });
    }
    return m;
  }

  async load() {
    try {
      // The newest `want` alerts; member_count, alert_count and the kept members (live first, as the wall titles
      // them) come from the server whatever was cut.
      const inc = await getJson(`/api/incidents/${this.id}${qs({ alerts_limit: Math.min(this.want, MAX_ALERTS) })}`);
      inc.district_name = this.ctx.city?.names.get(inc.district) || inc.district;
      for (const a of inc.alerts) {
        const lat = a.evidence?._lat, lon = a.evidence?._lon;
        if (a.device_id && typeof lat === "number" && !this.ctx.devices.devices.get(a.device_id)?.lat) {
          DeviceStore.setPos(this.ctx.devices.get(a.device_id, a.kind), lat, lon);
        }
      }
      this.inc = inc;
      if (this.selected == null || !inc.alerts.some((a) => a.id === this.selected)) this.selected = inc.alerts[0]?.id ?? null;
      this.render();
      this.ready = true;
    } catch (err) {
      this.head.replaceChildren(el("h2", { text: this.ctx.i18n.t("incident_n", { id: this.id }) }),
        el("p", { class: "error", text: err.status === 404 ? this.ctx.i18n.t("not_found") : this.ctx.i18n.t("load_failed", { e: err.message }) }));
    }
  }

  render() {
    this.renderHead();
    this.renderActions();
    this.renderMembers();
    this.renderEvidence();
    this.renderTimeline();
    this.focusMap();
  }

  focusMap() {
    if (!this.inc || !this.ctx.city) return;
    const ids = this.inc.alerts.map((a) => a.device_id).filter(Boolean);
    const key = ids.join();
    if (key !== this.focusKey) {
      this.focusKey = key;
      // The members and their district, so the officer sees where in the city this is.
      const district = this.ctx.city.districts.find((d) => d.code === this.inc.district);
      this.map.setFocus(ids.length ? ids : null, district ? district.rings : null);
    } else {
      this.map.markDirty();
    }
  }

  renderHead() {
    const { i18n } = this.ctx;
    const { t } = i18n;
    const inc = this.inc;
    const started = parseTs(inc.started_at);
    const end = parseTs(inc.resolved_at) ?? this.ctx.now();
    const facts = [
      [t("started"), `${i18n.stamp(started)} (${i18n.age((end - started) / 1000)})`],
      [t("district"), inc.district_name || "—"],
      [t("category"), i18n.category(inc.category)],
      [t("col_assignee"), inc.assignee || t("unassigned")],
    ];
    facts.push([t("member_count"), i18n.num(inc.member_count ?? inc.alerts.length)]);
    if (inc.acked_by) facts.push([t("st_acknowledged"), `${inc.acked_by} · ${i18n.stamp(parseTs(inc.acked_at))}`]);
    if (inc.resolved_at) facts.push([t("resolved_at"), i18n.stamp(parseTs(inc.resolved_at))]);
    // how often the problem came back after it had resolved (REST keeps the engine's state under detail)
    const reopened = Number((inc.escalation || inc.detail?.escalation)?.reopened || 0);
    if (reopened) facts.push([t("reopened"), `${reopened}×`]);
    const key = JSON.stringify([inc.state, inc.severity, inc.title, facts]);
    if (key === this.headKey) return;
    this.headKey = key;
    this.head.replaceChildren(
      el("div", { class: "head-line" },
        el("a", { href: "#/incidents", class: "back", text: t("back") }),
        el("span", { class: "sev-badge", dataset: { sev: inc.severity }, text: t(`sev_${inc.severity}`) }),
        el("h2", { id: "inc-title", text: `#${inc.id} ${i18n.incidentTitle(inc)}` }),
        el("span", { class: "state-badge", id: "inc-state", dataset: { state: inc.state }, text: t(`st_${inc.state}`) }),
        inc.suppressed ? el("span", { class: "tag", text: i18n.quiet(inc.suppressed) }) : null),
      el("dl", { class: "facts" }, ...facts.map(([k, v]) => el("div", null, el("dt", { text: k }), el("dd", { text: v })))));
  }

  renderActions() {
    const { t } = this.ctx.i18n;
    const s = this.inc.state;
    const live = s === "open" || s === "acknowledged";
    const btn = (action, enabled, extra) => el("button", { class: `act act-${action}`, disabled: !enabled, text: t(`act_${action}`),
      onclick: () => this.doAction(action, extra) });
    if (document.activeElement !== this.assignee) this.assignee.value = this.inc.assignee || "";
    const first = this.inc.alerts[0] || {};
    const silence = qs(this.inc.alerts.length === 1 && first.device_id ? { device_id: first.device_id }
      : { district: this.inc.district, category: this.inc.category });
    this.actions.replaceChildren(
      btn("ack", s === "open"),
      el("span", { class: "assign" }, this.assignee, btn("assign", live || s === "resolved", "assign")),
      btn("resolve", live),
      btn("close", s === "resolved"),
      el("a", { class: "button", href: `#/silences${silence}`, text: t("act_silence") }));
  }

  async doAction(action, extra) {
    const body = { note: this.note.value.trim() || null };
    if (extra === "assign") body.assignee = this.assignee.value.trim() || null;
    const done = await this.ctx.act(this.id, action, body);
    if (done) {
      this.note.value = "";
      this.load();
    }
  }

  async doComment() {
    const note = this.comment.value.trim();
    if (!note) return;
    const done = await this.ctx.act(this.id, "comment", { note });
    if (done) {
      this.comment.value = "";
      this.load();
    }
  }

  renderMembers() {
    const { i18n } = this.ctx;
    const { t } = i18n;
    const head = el("tr", null, ...["col_severity", "col_title", "col_device", "col_state", "col_started"].map((k) => el("th", { text: t(k) })));
    const rows = this.inc.alerts.map((a) => el("tr", {
      class: `row${a.id === this.selected ? " selected" : ""}`, dataset: { id: String(a.id), state: a.state },
      onclick: () => { this.selected = a.id; this.renderMembers(); this.renderEvidence(); },
    },
    el("td", null, el("span", { class: "sev-badge", dataset: { sev: a.severity }, text: t(`sev_${a.severity}`) })),
    el("td", { class: "title" }, this.alertTitle(a), a.suppressed ? el("span", { class: "tag", text: i18n.quiet(a.suppressed) }) : null),
    el("td", null, a.device_id ? el("a", { href: `#/devices/${encodeURIComponent(a.device_id)}`, text: a.device_id,
      onclick: (ev) => ev.stopPropagation() }) : "—"),
    el("td", { class: "state", dataset: { state: a.state }, text: t(`st_${a.state}`) }),
    el("td", { class: "num", text: i18n.stamp(parseTs(a.started_at)) })));
    this.members.replaceChildren(el("thead", null, head), el("tbody", null, ...rows));
    this.renderMore();
  }

  /** "Showing N of M" under a cut table: a button for the next page (up to MAX_ALERTS), the API's next page. */
  renderMore() {
    const { i18n } = this.ctx;
    const { t } = i18n;
    const inc = this.inc;
    const shown = inc.alerts.length;
    const total = Math.max(inc.alert_count ?? shown, shown);
    this.membersMore.hidden = total <= shown;
    // the cut said at the top too: the table of a storm's incident is long
    this.membersTitle.textContent = total > shown ? `${t("members")} · ${i18n.num(shown)} / ${i18n.num(total)}` : t("members");
    if (total <= shown) return;
    this.membersMore.dataset.shown = String(shown);
    this.membersMore.dataset.total = String(total);
    const parts = [el("span", { class: "shown", text: t("members_shown", { n: i18n.num(shown), m: i18n.num(total) }) })];
    if (shown < MAX_ALERTS) {
      const n = Math.min(PAGE, total - shown, MAX_ALERTS - shown);
      parts.push(el("button", { class: "small more", text: t("members_more", { n: i18n.num(n) }), onclick: () => {
        this.want = shown + n;
        this.load();
      } }));
    }
    const next = inc.alerts_next || `/api/alerts${qs({ incident_id: inc.id, limit: PAGE, offset: shown })}`;
    parts.push(el("a", { class: "next", href: next, target: "_blank", rel: "noopener", text: t("members_next") }));
    this.membersMore.replaceChildren(...parts);
  }

  /** The engine titles alerts in English; in Vietnamese the rule's name says the same (the device has its column). */
  alertTitle(a) {
    return this.ctx.i18n.lang === "en" ? a.title : this.ctx.i18n.rule(a.rule);
  }

  renderEvidence() {
    const { i18n } = this.ctx;
    const { t } = i18n;
    const a = this.inc.alerts.find((x) => x.id === this.selected);
    if (!a) {
      this.evidence.replaceChildren(el("p", { class: "muted", text: t("no_data") }));
      this.chartKey = "";
      return;
    }
    const ev = Object.entries(a.evidence || {}).filter(([k]) => !k.startsWith("_"));
    const fmt = (v) => (typeof v === "number" ? i18n.num(v, Math.abs(v) < 10 ? 2 : 1) : typeof v === "object" ? JSON.stringify(v) : String(v));
    const values = el("table", { class: "kv" }, el("tbody", null,
      ...ev.map(([k, v]) => el("tr", null, el("th", { text: k }), el("td", { text: fmt(v) })))));
    const metric = this.metricFor(a);
    const key = `${a.id}|${metric}|${a.state}`;
    if (key === this.chartKey) return; // unchanged: keep the chart and picture already shown
    this.chartKey = key;
    const chart = el("canvas", { class: "chart", id: "evidence-chart" });
    const parts = [el("p", { class: "explain", text: a.explanation || a.title }), el("h4", { text: t("values") }), values];
    if (metric) parts.push(el("h4", { text: t("chart_of", { metric: `${i18n.metric(metric)} (${a.device_id})` }) }), chart);
    if (a.kind === "camera" && a.device_id) {
      this.snapshot = el("img", { class: "snapshot", id: "evidence-snapshot", alt: a.device_id,
        src: `/api/devices/${encodeURIComponent(a.device_id)}/snapshot?t=${Date.now()}` });
      this.snapshot.onerror = () => { this.snapshot.replaceWith(el("p", { class: "muted", text: t("no_image") })); };
      this.snapshotDevice = a.device_id;
      parts.push(el("h4", { text: t("snapshot") }), this.snapshot);
    } else {
      this.snapshot = null;
    }
    this.evidence.replaceChildren(...parts);
    if (metric) this.drawChart(chart, a, metric);
  }

  refreshSnapshot(deviceId) {
    if (this.snapshot && this.snapshotDevice === deviceId && Date.now() - (this.snapshotAt || 0) > 5000) {
      this.snapshotAt = Date.now();
      this.snapshot.src = `/api/devices/${encodeURIComponent(deviceId)}/snapshot?t=${Date.now()}`;
    }
  }

  metricFor(a) {
    if (!a.device_id) return null;
    const series = a.evidence?.series;
    if (series && series !== "snapshot") return series;
    return RULE_METRIC[a.rule] || KIND_METRIC[a.kind] || null;
  }

  async drawChart(canvas, a, metric) {
    const started = parseTs(a.started_at);
    const resolved = parseTs(a.resolved_at);
    const start = started - 3600_000;
    const end = Math.min(this.ctx.now(), (resolved ?? this.ctx.now()) + 1800_000);
    const span = end - start;
    const bucket = span <= 3 * 3600_000 ? "1m" : span <= 12 * 3600_000 ? "5m" : "15m";
    try {
      const rows = await getJson(`/api/telemetry${qs({ device_id: a.device_id, metric, bucket,
        start: new Date(start).toISOString(), end: new Date(end).toISOString() })}`);
      const points = (rows || []).map((r) => [parseTs(r.bucket), r.avg, r.min, r.max]);
      const marks = [{ t: started, color: SEV_COLORS[a.severity] }];
      if (resolved) marks.push({ t: resolved, color: "#2ecc71" });
      timeChart(canvas, [{ label: metric, points }], { start, end, i18n: this.ctx.i18n, unit: this.ctx.i18n.unit(metric), marks });
      canvas.dataset.points = String(points.length);
    } catch (err) {
      canvas.replaceWith(el("p", { class: "muted", text: this.ctx.i18n.t("load_failed", { e: err.message }) }));
    }
  }

  renderTimeline() {
    const { i18n } = this.ctx;
    const { t } = i18n;
    const alerts = new Map(this.inc.alerts.map((a) => [a.id, a]));
    const items = this.inc.history.map((h) => {
      const a = h.alert_id != null ? alerts.get(h.alert_id) : null;
      const system = h.actor === "system";
      const who = system ? t("system") : h.actor;
      // The engine's own notes are English alert titles; officers' notes are shown as they wrote them.
      const note = system && a && i18n.lang !== "en" ? this.alertTitle(a) : h.note;
      return el("li", { dataset: { action: h.action } },
        el("span", { class: "when", text: i18n.stamp(parseTs(h.ts)) }),
        el("span", { class: "what", text: i18n.action(h.action) }),
        el("span", { class: "who", text: who }),
        el("span", { class: "note", text: [a?.device_id, note].filter(Boolean).join(" · ") }));
    });
    this.timeline.replaceChildren(...items);
    $("view").dataset.historyCount = String(items.length);
  }
}
