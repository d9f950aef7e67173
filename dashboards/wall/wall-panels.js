// The wall's DOM panels: header counts, district health tiles, the open incident queue, recent events and
// camera tiles. Each panel rebuilds its rows only when its data's version changed, and rewrites a text
// only when it differs: a wall runs for weeks and layout churn adds up.
import { COLORS } from "./palette.js";
import { grade } from "./store.js";
import { $, el, parseTs, setText } from "./util.js";

export class WallPanels {
  constructor({ i18n, devices, incidents, events, city, now, maxCams = 12, shownIncidents = 40, shownEvents = 40,
    newestSlots = 3 }) {
    this.i18n = i18n;
    this.devices = devices;
    this.incidents = incidents;
    this.events = events;
    this.city = city; // set once /api/city arrives
    this.now = now;
    this.shownIncidents = shownIncidents;
    this.newestSlots = newestSlots; // rows kept for the newest unacknowledged critical incidents (queueRows)
    this.fit = 4; // incident rows the panel shows whole, measured at each render (4: a guess before the first)
    this.shownEvents = shownEvents;
    this.rendered = { incidents: -1, events: -1, eventsAt: 0 };
    this.eventsEveryMs = 2000; // an alarm storm must not re-lay the list many times a second
    this.cams = { slots: [], lastSelect: 0, reselectMs: 2000, imgMinIntervalMs: 5000 };
    this.buildStatic(maxCams);
  }

  buildStatic(maxCams) {
    const { t } = this.i18n;
    document.documentElement.lang = this.i18n.lang;
    for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
    const legend = $("legend");
    legend.replaceChildren(
      ...["online", "degraded", "offline", "unknown"].map((s) => el("span", null,
        el("i", { class: "swatch", style: `background:${COLORS[s]}` }), t(s))),
      ...[["traffic", "●", "kind_traffic"], ["bts", "▲", "bts"], ["camera", "■", "camera"]].map(([, glyph, key]) =>
        el("span", null, `${glyph} ${t(key)}`)),
      el("span", null, el("i", { class: "ring" }), t("open_incidents")));
    $("counts").replaceChildren(...["online", "degraded", "offline", "unknown"].map((s) => el("span",
      { class: "c", dataset: { state: s } }, el("i", { class: "swatch", style: `background:${COLORS[s]}` }), el("b"), t(s))));
    this.buildCams(maxCams);
    // A resized panel holds another number of rows: choose the pinned ones again (queueRows).
    new ResizeObserver(() => { this.rendered.incidents = -1; }).observe($("incidents"));
    // An incident on the wall opens on the operator's screen (one listener for the list, not one per row).
    $("incidents").addEventListener("click", (ev) => {
      const row = ev.target.closest(".inc[data-id]");
      if (row) window.open(`/ops${location.search}#/incidents/${row.dataset.id}`, "_blank");
    });
  }

  /** Everything that depends on device state (called at most twice a second). */
  renderState(at) {
    const health = this.devices.districtHealth(at);
    this.renderCounts();
    this.renderDistricts(health);
    return health;
  }

  renderCounts() {
    const counts = { online: 0, degraded: 0, offline: 0, unknown: 0 };
    let noPos = 0;
    for (const dev of this.devices.devices.values()) {
      counts[dev.state in counts ? dev.state : "unknown"]++;
      if (dev.lat == null) noPos++;
    }
    for (const c of $("counts").children) setText(c.querySelector("b"), this.i18n.num(counts[c.dataset.state]));
    const { t, num } = this.i18n;
    setText($("map-sub"), `${num(this.devices.devices.size)} ${t("devices")}` + (noPos ? ` · ${t("no_position", { n: num(noPos) })}` : ""));
  }

  renderDistricts(health) {
    const box = $("districts");
    if (!this.city) return;
    const { t, pct, num } = this.i18n;
    if (box.childElementCount !== this.city.districts.length) {
      box.replaceChildren(...this.city.districts.map((d) => el("div", { class: "district", dataset: { code: d.code } },
        el("div", { class: "name", text: d.name }), el("div", { class: "v b" }), el("div", { class: "v c" }), el("div", { class: "v s" }))));
    }
    for (const node of box.children) {
      const h = health.get(node.dataset.code);
      node.dataset.level = h?.level || "none";
      setVal(node.querySelector(".b"), t("short_bts"), pct(h?.bts ?? NaN), grade(h?.bts, 95, 80));
      setVal(node.querySelector(".c"), t("short_cam"), pct(h?.cam ?? NaN), grade(h?.cam, 90, 70));
      // Speed coloured by the index (speed relative to each sensor's own running mean), not by km/h:
      // 30 km/h is normal downtown and a jam on the expressway.
      const s = node.querySelector(".s");
      setVal(s, t("kmh"), h?.speed == null ? t("no_data") : num(h.speed), grade(h?.index, 75, 50));
      s.title = h?.index == null ? "" : `${t("speed_index")} ${pct(h.index)}`;
    }
  }

  renderIncidents(at) {
    const list = $("incidents");
    const { t } = this.i18n;
    if (this.rendered.incidents !== this.incidents.version) {
      this.rendered.incidents = this.incidents.version;
      const items = this.incidents.sorted();
      if (!items.length) list.replaceChildren(el("li", { class: "empty", text: t("no_incidents") }));
      else {
        // Two passes at most: the rows the panel holds are known once rows are laid out (a first render, a
        // resize, a 4K wall); pins chosen for too many rows are chosen again for the rows that fit.
        for (let pass = 0; pass < 2; pass++) {
          const fit = this.fit;
          const { rows, pinned } = this.queueRows(items, fit);
          list.replaceChildren(...rows.map((inc) => this.incidentRow(inc, pinned.has(inc))));
          this.fit = this.fitRows(list);
          if (this.fit >= fit) break;
        }
      }
      const n = this.incidents.liveCount();
      setText($("incidents-sub"), n ? String(n) : "");
      const badge = $("inc-count");
      if (badge) {
        setText(badge.querySelector("b"), String(n));
        const top = items.find((i) => i.endedAt == null);
        badge.dataset.sev = top ? top.severity : "none";
      }
    }
    for (const age of list.querySelectorAll(".age")) setText(age, this.i18n.age((at - Number(age.dataset.ts)) / 1000));
  }

  /** The queue's rows: most severe first, then oldest (what has waited longest), except that the newest open
   * (unacknowledged) critical incidents that order would leave out of the `fit` rows the panel shows are pinned on
   * top (at most `newestSlots`, never half the panel): a new critical alarm behind 1,700 old ones is on the wall at
   * once, not only counted. An acknowledged one leaves the pins to the next newest. */
  queueRows(items, fit) {
    const k = Math.min(this.newestSlots, Math.max(1, Math.floor(fit / 2)));
    const fresh = [];
    items.forEach((inc, at) => {
      if (inc.endedAt == null && inc.state === "open" && inc.severity === "critical") fresh.push([inc, at]);
    });
    const started = (inc) => parseTs(inc.started_at) ?? inc.arrived;
    fresh.sort((a, b) => started(b[0]) - started(a[0]) || b[0].id - a[0].id);
    // One row of slack: a pinned headline of two lines may push the last row of the usual order out of sight.
    const pinned = new Set(fresh.slice(0, k).filter(([, at]) => at >= fit - k - 1).map(([inc]) => inc));
    if (!pinned.size) return { rows: items.slice(0, this.shownIncidents), pinned };
    const rows = [...pinned];
    for (const inc of items) {
      if (rows.length >= this.shownIncidents) break;
      if (!pinned.has(inc)) rows.push(inc);
    }
    return { rows, pinned };
  }

  /** How many incident rows the panel shows whole (all of them when nothing is cut off). */
  fitRows(list) {
    const rows = list.querySelectorAll(".inc");
    const bottom = list.getBoundingClientRect().bottom + 1;
    let n = 0;
    while (n < rows.length && rows[n].getBoundingClientRect().bottom <= bottom) n++;
    return n < rows.length ? Math.max(1, n) : this.shownIncidents;
  }

  incidentRow(inc, pinned = false) {
    const { i18n } = this;
    const { t } = i18n;
    const started = parseTs(inc.started_at) ?? inc.arrived;
    const shown = this.now();
    if (inc.shownAt == null) inc.shownAt = shown;
    if (inc.shownState !== inc.state) [inc.shownState, inc.stateShownAt] = [inc.state, shown];
    const where = [inc.district ? (this.city?.names.get(inc.district) || inc.district_name || inc.district) : null,
      t("members_n", { n: inc.member_count ?? (inc.members || []).length })];
    let state = t(`st_${inc.state}`);
    if (inc.state === "acknowledged" && inc.acked_by) state = t("acked_by", { who: inc.acked_by });
    if (inc.assignee) where.push(t("assigned_to", { who: inc.assignee }));
    if (inc.escalation?.reopened) where.push(t("reopened_n", { n: inc.escalation.reopened }));  // it keeps coming back
    if (pinned) state = `${t("newest_critical")} · ${state}`;
    const li = el("li", {
      class: `inc${Date.now() - inc.changed < 3000 ? " new" : ""}${inc.endedAt != null ? " ended" : ""}${pinned ? " pinned" : ""}`,
      dataset: { sev: inc.severity, state: inc.state, id: String(inc.id) },
    },
    el("span", { class: "bar" }),
    el("span", { class: "what", text: i18n.incidentTitle(inc) + (inc.endedAt != null ? " ✓" : "") }),
    el("span", { class: "age", dataset: { ts: String(started) }, text: i18n.age((this.now() - started) / 1000) }),
    el("span", { class: "where", text: `#${inc.id} · ${where.filter(Boolean).join(" · ")}` }),
    el("span", { class: "sev", text: t(`sev_${inc.severity}`) }),
    el("span", { class: "st", text: inc.suppressed ? `${state} · ${i18n.quiet(inc.suppressed)}` : state }));
    return li;
  }

  renderEvents(at) {
    const list = $("events");
    const { t } = this.i18n;
    if (this.rendered.events !== this.events.version && Date.now() - this.rendered.eventsAt >= this.eventsEveryMs) {
      const fresh = this.events.version - Math.max(0, this.rendered.events);
      this.rendered.events = this.events.version;
      this.rendered.eventsAt = Date.now();
      // Flash new rows only when a few arrive: in a storm every row would animate, and repainting them all at
      // 60 fps costs more than it tells.
      this.flashEvents = fresh <= 3;
      const items = this.events.items;
      setText($("events-sub"), items.length ? String(items.length) : "");
      if (!items.length) list.replaceChildren(el("li", { class: "empty", text: t("no_events") }));
      else list.replaceChildren(...items.slice(0, this.shownEvents).map((e) => this.eventRow(e)));
    }
    for (const age of list.querySelectorAll(".age")) setText(age, this.i18n.age((at - Number(age.dataset.ts)) / 1000));
  }

  eventRow(e) {
    const { t } = this.i18n;
    const where = [e.device, e.district ? this.city?.names.get(e.district) || e.district : null, this.i18n.time(e.ts)];
    return el("li", { class: `ev${this.flashEvents && Date.now() - e.arrived < 3000 ? " new" : ""}`, dataset: { sev: e.sev } },
      el("span", { class: "bar" }),
      el("span", { class: "what", text: this.i18n.eventType(e.type) }),
      el("span", { class: "age", dataset: { ts: String(e.ts) }, text: this.i18n.age((this.now() - e.ts) / 1000) }),
      el("span", { class: "where", text: where.filter(Boolean).join(" · ") }),
      el("span", { class: "sev", text: t(`sev_${e.sev}`) }));
  }

  // Camera tiles: fixed slots bound to the most relevant cameras (faulty first); images reloaded on `image`
  // frames but at most once per imgMinIntervalMs per tile, so a chatty camera cannot flood the browser.
  buildCams(maxCams) {
    const box = $("cameras");
    this.cams.slots = [];
    box.replaceChildren();
    for (let i = 0; i < maxCams; i++) {
      const img = el("img", { alt: "", decoding: "async" });
      const ph = el("div", { class: "ph" });
      const node = el("div", { class: "cam", hidden: true }, img, ph,
        el("div", { class: "cap" }, el("span", { class: "id" }), el("span", { class: "st" })));
      const slot = { el: node, img, ph, id: null, shownSnap: undefined, nextLoad: 0, retries: 0 };
      img.onload = () => {
        slot.ph.textContent = "";
        img.style.visibility = "visible";
        slot.retries = 0;
      };
      img.onerror = () => {
        img.style.visibility = "hidden";
        slot.ph.textContent = this.i18n.t("no_image");
        // `image` frames are sent before the snapshot is committed, so the first fetch can miss it: retry soon,
        // a few times, then wait for the next frame.
        const dev = slot.id && this.devices.devices.get(slot.id);
        if (dev && dev.lastSnapshot != null && slot.retries < 3) {
          slot.retries++;
          slot.shownSnap = undefined;
          slot.nextLoad = Date.now() + 1500;
        }
      };
      this.cams.slots.push(slot);
      box.append(node);
    }
  }

  camRank(dev, at, marks) {
    if (dev.state === "offline") return 0;
    if (marks.has(dev.id) || dev.state === "degraded" || this.devices.faultOf(dev, at) != null) return 1;
    if (dev.state === "unknown") return 2;
    return 3;
  }

  /** `online`: the feed is up. While it is down, tiles keep the last picture instead of failing to load a new one. */
  renderCams(at, online = true) {
    const cams = this.cams;
    const t0 = Date.now();
    const { t, eventType } = this.i18n;
    if (online && t0 - cams.lastSelect >= cams.reselectMs) {
      cams.lastSelect = t0;
      const marks = this.incidents.deviceMarks();
      const list = [];
      for (const dev of this.devices.devices.values()) if (dev.kind === "camera") list.push([this.camRank(dev, at, marks), dev]);
      list.sort((a, b) => a[0] - b[0] || (b[1].lastSnapshot ?? 0) - (a[1].lastSnapshot ?? 0) || (a[1].id < b[1].id ? -1 : 1));
      const chosen = list.slice(0, cams.slots.length).map((x) => x[1]);
      // Keep a camera in the slot it already has, so tiles do not shuffle on every update.
      const keep = new Set(chosen.map((d) => d.id));
      const free = cams.slots.filter((s) => !keep.has(s.id));
      const placed = new Set(cams.slots.filter((s) => keep.has(s.id)).map((s) => s.id));
      for (const dev of chosen) {
        if (placed.has(dev.id)) continue;
        const slot = free.shift();
        Object.assign(slot, { id: dev.id, shownSnap: undefined, nextLoad: 0, retries: 0 });
      }
      for (const slot of free) slot.id = null;
      setText($("cam-sub"), list.length ? `${Math.min(list.length, cams.slots.length)} / ${this.i18n.num(list.length)}` : "");
    }
    let any = false;
    for (const slot of cams.slots) {
      const dev = slot.id && this.devices.devices.get(slot.id);
      slot.el.hidden = !dev;
      if (!dev) continue;
      any = true;
      const fault = this.devices.faultOf(dev, at);
      slot.el.dataset.state = dev.state;
      slot.el.dataset.fault = fault ? "1" : "0";
      slot.el.dataset.id = dev.id;
      setText(slot.el.querySelector(".id"), dev.id);
      const st = slot.el.querySelector(".st");
      st.dataset.state = dev.state;
      st.dataset.fault = fault ? "1" : "0";
      setText(st, fault && dev.state === "online" ? eventType(fault) : t(dev.state));
      const snap = dev.lastSnapshot ?? 0;
      if (online && slot.shownSnap !== snap && t0 >= slot.nextLoad) {
        slot.shownSnap = snap;
        slot.nextLoad = t0 + cams.imgMinIntervalMs;
        // A camera seeded from the database has no snapshot time yet: try once, a 404 shows a placeholder.
        slot.img.src = `/api/devices/${encodeURIComponent(dev.id)}/snapshot?t=${snap || t0}`;
      }
    }
    const box = $("cameras");
    const empty = box.querySelector(".empty-cams");
    if (!any && !empty) box.append(el("div", { class: "ph empty-cams", text: t("no_cameras") }));
    else if (any && empty) empty.remove();
  }
}

function setVal(node, label, text, cls) {
  const key = `${label}|${text}|${cls}`;
  if (node.dataset.key === key) return;
  node.dataset.key = key;
  node.replaceChildren(el("span", { text: label }), el("b", { class: cls || null, text }));
}
