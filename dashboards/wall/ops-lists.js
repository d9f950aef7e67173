// The operator's lists: incidents and alerts with filters (state, severity, district, category or rule, text).
// Rows come from the REST API (history included) and are kept current by the live feed's frames.
import { SEV_RANK, SEVERITIES } from "./store.js";
import { el, getPage, parseTs, qs, setText } from "./util.js";

const LIVE = ["open", "acknowledged"];
const STATES = ["open", "acknowledged", "resolved", "closed"];
export const CATEGORIES = ["power", "offline", "camera", "traffic", "bts_quality", "sensor", "anomaly", "device"];
export const RULES = ["mains_power_lost", "battery_low", "device_offline", "device_degraded", "device_silent",
  "camera_fault", "camera_stream", "speed_collapse", "availability_drop", "kpi_degraded", "sensor_stuck", "anomaly",
  "device_event"];
const MAX_ROWS = 300; // what one list shows; older items are a filter away

/** A <select> of [value, label] options bound to one filter key. */
function select(value, options, onChange) {
  const node = el("select", { onchange: () => onChange(node.value) },
    ...options.map(([v, label]) => el("option", { value: v, text: label })));
  node.value = value;
  return node;
}

class ListView {
  constructor(kind) {
    this.kind = kind; // "incidents" | "alerts"
    this.rows = new Map(); // id -> item
    this.ready = false;
    this.search = "";
    this.version = 0;
  }

  mount(root, ctx, params) {
    this.ctx = ctx;
    this.root = root;
    const p = Object.fromEntries(params);
    this.f = { state: p.state || "live", severity: p.severity || "", district: p.district || "", extra: p.extra || "" };
    this.bar = el("div", { class: "filters" });
    this.status = el("div", { class: "list-status" });
    this.cut = el("div", { class: "list-cut", hidden: true }); // "Showing 300 of N" when the list is cut
    this.table = el("table", { class: "list" });
    root.append(el("section", { class: "card" }, this.bar, this.status, this.cut, this.table));
    this.renderFilters();
    this.load();
  }

  renderFilters() {
    const { t, term } = this.ctx.i18n;
    const set = (key) => (v) => {
      this.f[key] = v;
      // Filters live in the URL so a view can be shared or bookmarked; the route re-mounts the list.
      const q = qs({ state: this.f.state === "live" ? "" : this.f.state, severity: this.f.severity,
        district: this.f.district, extra: this.f.extra });
      history.replaceState(null, "", `#/${this.kind}${q}`);
      this.load();
    };
    const districts = this.ctx.city ? this.ctx.city.districts.map((d) => [d.code, d.name]) : [];
    if (this.f.district && !districts.some(([c]) => c === this.f.district)) districts.push([this.f.district, this.f.district]);
    const extra = this.kind === "incidents"
      ? [["", `${t("filter_category")}: ${t("all")}`], ...CATEGORIES.map((c) => [c, term("cat", c)])]
      : [["", `${t("col_rule")}: ${t("all")}`], ...RULES.map((r) => [r, term("rule", r)])];
    const search = el("input", { type: "search", placeholder: t("filter_search"), value: this.search, class: "search",
      oninput: () => { this.search = search.value.trim().toLowerCase(); this.render(); } });
    this.bar.replaceChildren(
      select(this.f.state, [["live", t("live_only")], ["", t("all")], ...STATES.map((s) => [s, t(`st_${s}`)])], set("state")),
      select(this.f.severity, [["", `${t("filter_severity")}: ${t("all")}`], ...SEVERITIES.map((s) => [s, t(`sev_${s}`)])], set("severity")),
      select(this.f.district, [["", `${t("filter_district")}: ${t("all")}`], ...districts], set("district")),
      select(this.f.extra, extra, set("extra")),
      search);
  }

  onCity() {
    this.renderFilters();
    this.render();
  }

  url() {
    const extra = this.kind === "incidents" ? { category: this.f.extra } : { rule: this.f.extra };
    const filters = { severity: this.f.severity, district: this.f.district, ...extra, limit: MAX_ROWS };
    // Live lists: the server picks the most severe matches (incidents: then the oldest; alerts: then the newest)
    // and counts them all (X-Total-Count). The newest MAX_ROWS of a storm's thousands would leave its old
    // critical items out. Members: the count is enough here.
    if (this.f.state === "live") {
      return this.kind === "incidents" ? `/api/incidents/live${qs({ ...filters, members_limit: 0 })}`
        : `/api/alerts${qs({ ...filters, order: "severity" })}`;
    }
    // History: newest first, not counted (years of rows); one more than shown tells whether it was cut.
    const state = this.f.state ? [this.f.state] : null;
    return `/api/${this.kind}${qs({ state, ...filters, limit: MAX_ROWS + 1 })}`;
  }

  async load() {
    const seq = ++this.version;
    setText(this.status, this.ctx.i18n.t("loading"));
    try {
      const asked = this.ctx.now();
      const { rows, total } = await getPage(this.url());
      if (seq !== this.version) return; // a newer filter was chosen meanwhile
      this.rows = new Map((rows || []).map((r) => [r.id, r]));
      this.total = total; // null: not counted (history lists)
      this.more = false; // history: rows were dropped (trimmed to MAX_ROWS) since
      this.asked = asked;
      setText(this.status, "");
      this.ready = true;
      this.render();
    } catch (err) {
      if (seq === this.version) setText(this.status, this.ctx.i18n.t("load_failed", { e: err.message }));
    }
  }

  /** Would this item be listed under the current filters? (Live frames are filtered the same way.) */
  matches(item) {
    const f = this.f;
    if (f.state === "live" ? !LIVE.includes(item.state) : f.state && item.state !== f.state) return false;
    if (f.severity && item.severity !== f.severity) return false;
    if (f.district && item.district !== f.district) return false;
    if (f.extra && item[this.kind === "incidents" ? "category" : "rule"] !== f.extra) return false;
    return true;
  }

  upsert(item) {
    if (item?.id == null) return false;
    const had = this.rows.has(item.id);
    if (this.matches(item)) {
      this.rows.set(item.id, { ...this.rows.get(item.id), ...item });
      // The count follows what the frames show: an item started since the list was read is one more (one that
      // was already counted but not loaded, beyond the first MAX_ROWS, is not counted twice).
      if (!had && this.total != null && (parseTs(item.started_at) ?? 0) >= this.asked) this.total += 1;
    } else if (this.rows.delete(item.id)) {
      if (this.total != null) this.total -= 1;
    } else return false;
    // A list left open all shift gains a row per new item: keep its first MAX_ROWS (live: the most severe).
    if (this.rows.size > MAX_ROWS + 50) {
      const first = [...this.rows.values()].sort((a, b) => this.order(a, b));
      this.rows = new Map(first.slice(0, MAX_ROWS).map((r) => [r.id, r]));
      this.more = true;
    }
    return true;
  }

  /** The server's order. Live: most severe first, then incidents that have waited longest, alerts newest first.
   * History: newest first. */
  order(a, b) {
    const newest = (parseTs(b.started_at) ?? 0) - (parseTs(a.started_at) ?? 0) || b.id - a.id;
    if (this.f.state !== "live") return newest;
    const sev = (SEV_RANK[b.severity] ?? 0) - (SEV_RANK[a.severity] ?? 0);
    if (this.kind === "alerts") return sev || newest;
    return sev || (parseTs(a.started_at) ?? 0) - (parseTs(b.started_at) ?? 0) || a.id - b.id;
  }

  sorted() {
    const items = [...this.rows.values()];
    if (this.search) {
      const q = this.search;
      const text = (x) => [x.id, x.title, x.device_id, x.district, x.district_name, x.assignee, x.acked_by, x.rule,
        this.ctx.i18n.incidentTitle?.(x)].join(" ").toLowerCase();
      for (let i = items.length - 1; i >= 0; i--) if (!text(items[i]).includes(q)) items.splice(i, 1);
    }
    items.sort((a, b) => this.order(a, b));
    return items.slice(0, MAX_ROWS);
  }

  districtName(code) {
    return code ? this.ctx.city?.names.get(code) || code : "";
  }

  render() {
    if (!this.ready) return;
    const { t } = this.ctx.i18n;
    const items = this.sorted();
    const head = el("tr", null, ...this.columns().map((c) => el("th", { text: t(c) })));
    const body = items.length ? items.map((x) => this.row(x))
      : [el("tr", null, el("td", { class: "none", colSpan: this.columns().length, text: t("none_found") }))];
    this.table.replaceChildren(el("thead", null, head), el("tbody", null, ...body));
    this.renderCut();
  }

  /** Says when the list holds fewer than match: "Showing 300 of 3,001" (live: the server's count), or for history
   * "Showing the newest 300". */
  renderCut() {
    const { t, num } = this.ctx.i18n;
    const shown = Math.min(this.rows.size, MAX_ROWS);
    const total = this.total == null ? null : Math.max(this.total, shown);
    let text = "";
    if (total != null && total > shown) text = t("list_shown", { n: num(shown), m: num(total) });
    else if (total == null && (this.more || this.rows.size > MAX_ROWS)) text = t("list_newest", { n: num(shown) });
    this.cut.hidden = !text;
    this.cut.dataset.shown = String(shown);
    this.cut.dataset.total = total == null ? "" : String(total);
    setText(this.cut, text);
  }

  tick() {
    const at = this.ctx.now();
    for (const node of this.table.querySelectorAll("td.age")) setText(node, this.ctx.i18n.age((at - Number(node.dataset.ts)) / 1000));
  }

  ageCell(item) {
    const ts = parseTs(item.started_at) ?? 0;
    const end = parseTs(item.resolved_at) ?? this.ctx.now();
    return item.resolved_at
      ? el("td", { class: "num", text: this.ctx.i18n.age((end - ts) / 1000) })
      : el("td", { class: "age num", dataset: { ts: String(ts) }, text: this.ctx.i18n.age((end - ts) / 1000) });
  }
}

export class IncidentList extends ListView {
  constructor() {
    super("incidents");
  }

  columns() {
    return ["col_severity", "col_title", "col_district", "col_members", "col_state", "col_assignee", "col_started", "col_age", ""];
  }

  onFrames(frames) {
    let changed = false;
    for (const f of frames) {
      if (f.type === "incident" && f.incident) changed = this.upsert(f.incident) || changed;
      // A fresh snapshot after a reconnect: the live list may have changed while we were away. A storm's snapshot
      // holds the most severe incidents only (incidents_truncated): the list is read again from the API instead.
      if (f.type === "snapshot" && this.ready && this.f.state === "live") {
        if (f.incidents_truncated) {
          this.load();
          continue;
        }
        this.rows = new Map((f.incidents || []).filter((i) => this.matches(i)).map((i) => [i.id, i]));
        this.total = this.rows.size; // every live incident: the snapshot was not cut
        changed = true;
      }
    }
    if (changed) this.render();
  }

  row(inc) {
    const { i18n } = this.ctx;
    const { t } = i18n;
    const open = () => this.ctx.navigate(`#/incidents/${inc.id}`);
    let state = t(`st_${inc.state}`);
    if (inc.acked_by) state += ` · ${inc.acked_by}`;
    const ack = inc.state === "open"
      ? el("button", { class: "small", text: t("act_ack"), onclick: async (ev) => {
        ev.stopPropagation();
        const done = await this.ctx.act(inc.id, "ack");
        if (done) this.upsert(done) && this.render();
      } })
      : null;
    return el("tr", { class: "row", dataset: { sev: inc.severity, state: inc.state, id: String(inc.id) }, onclick: open },
      el("td", null, el("span", { class: "sev-badge", dataset: { sev: inc.severity }, text: t(`sev_${inc.severity}`) })),
      el("td", { class: "title" }, el("a", { href: `#/incidents/${inc.id}`,
        text: `#${inc.id} ${i18n.incidentTitle({ ...inc, district_name: this.districtName(inc.district) })}` }),
        inc.suppressed ? el("span", { class: "tag", text: i18n.quiet(inc.suppressed) }) : null),
      el("td", { text: this.districtName(inc.district) }),
      el("td", { class: "num", text: String(inc.member_count ?? (inc.members || []).length) }),
      el("td", { class: "state", dataset: { state: inc.state }, text: state }),
      el("td", { text: inc.assignee || "" }),
      el("td", { class: "num", text: i18n.stamp(parseTs(inc.started_at)) }),
      this.ageCell(inc),
      el("td", null, ack));
  }
}

export class AlertList extends ListView {
  constructor() {
    super("alerts");
  }

  columns() {
    return ["col_severity", "col_title", "col_device", "col_district", "col_rule", "col_state", "col_started", "col_age"];
  }

  onFrames(frames) {
    let changed = false;
    for (const f of frames) if (f.type === "alert" && f.alert) changed = this.upsert(f.alert) || changed;
    if (changed) this.render();
  }

  row(a) {
    const { i18n } = this.ctx;
    const { t } = i18n;
    return el("tr", { class: "row", dataset: { sev: a.severity, state: a.state, id: String(a.id) },
      onclick: () => a.incident_id != null && this.ctx.navigate(`#/incidents/${a.incident_id}`) },
    el("td", null, el("span", { class: "sev-badge", dataset: { sev: a.severity }, text: t(`sev_${a.severity}`) })),
    el("td", { class: "title" }, `#${a.id} ${a.title}`, a.incident_id != null ? el("span", { class: "tag", text: `→ #${a.incident_id}` }) : null,
      a.suppressed ? el("span", { class: "tag", text: i18n.quiet(a.suppressed) }) : null),
    el("td", null, a.device_id ? el("a", { href: `#/devices/${encodeURIComponent(a.device_id)}`, text: a.device_id,
      onclick: (ev) => ev.stopPropagation() }) : ""),
    el("td", { text: this.districtName(a.district) }),
    el("td", { text: i18n.rule(a.rule) }),
    el("td", { class: "state", dataset: { state: a.state }, text: t(`st_${a.state}`) }),
    el("td", { class: "num", text: i18n.stamp(parseTs(a.started_at)) }),
    this.ageCell(a));
  }
}
