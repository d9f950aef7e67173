// KPI sparklines of the last hours: backfilled once from /api/ui/kpis (the database's view of the past
// hours), then extended by sampling the live state. The history is a bounded array (time and count).
import { sparkline } from "./chart.js";
import { $, el, getJson, parseTs, setText } from "./util.js";

const KPIS = [
  { key: "speed", label: "city_speed", unit: "kmh", digits: 1, color: "#4da3ff" },
  { key: "bts", label: "bts_online", unit: "%", digits: 1, color: "#2ecc71" },
  { key: "cam", label: "cam_healthy", unit: "%", digits: 1, color: "#c77dff" },
  { key: "inc", label: "open_incidents", unit: "", digits: 0, color: "#ff7a45" },
];

export class KpiPanel {
  constructor({ i18n, current, spanMs = 4 * 3600_000, maxPoints = 2000 }) {
    this.i18n = i18n;
    this.current = current; // (at) => {speed, bts, cam, inc}
    this.spanMs = spanMs;
    this.maxPoints = maxPoints;
    this.history = []; // [{t, speed, bts, cam, inc}], oldest first
    this.drawnAt = 0;
    this.drawnSize = "";
    this.redrawMs = 5000; // sparklines move slowly: redrawing their canvases twice a second buys nothing
    const box = $("kpis");
    box.replaceChildren(...KPIS.map((k) => el("div", { class: "kpi", dataset: { key: k.key } },
      el("div", null, el("div", { class: "label", text: i18n.t(k.label) }), el("div", { class: "value" })),
      el("canvas"))));
    setText($("kpi-sub"), i18n.t("last_hours", { h: spanMs / 3600_000 }));
  }

  /** Fill the past from the database (once; a failure leaves the sparklines to grow from now). */
  async backfill() {
    try {
      const rows = await getJson(`/api/ui/kpis?hours=${Math.round(this.spanMs / 3600_000)}&bucket_min=5`);
      const first = this.history.length ? this.history[0].t : Infinity;
      const past = (rows || []).map((r) => ({ t: parseTs(r.t) + 5 * 60_000, speed: r.speed, bts: r.bts, cam: r.cam,
        inc: r.incidents })).filter((p) => p.t < first);
      this.history = [...past, ...this.history];
      this.trim(Date.now());
      return past.length;
    } catch (err) {
      console.warn("KPI history not loaded:", err.message);
      return 0;
    }
  }

  sample(at) {
    this.history.push({ t: at, ...this.current(at) });
    this.trim(at);
  }

  trim(at) {
    const since = at - this.spanMs;
    let drop = 0;
    while (drop < this.history.length && (this.history[drop].t < since || this.history.length - drop > this.maxPoints)) drop++;
    if (drop) this.history.splice(0, drop);
  }

  render(at, u) {
    const cur = this.current(at);
    const { t, num, pct } = this.i18n;
    const box = $("kpis");
    const size = `${box.clientWidth}x${box.clientHeight}x${u}`;
    const redraw = size !== this.drawnSize || Date.now() - this.drawnAt >= this.redrawMs;
    if (redraw) [this.drawnSize, this.drawnAt] = [size, Date.now()];
    for (const node of box.children) {
      const k = KPIS.find((x) => x.key === node.dataset.key);
      const v = cur[k.key];
      const text = v == null ? t("no_data") : k.unit === "%" ? pct(v) : `${num(v, k.digits)}${k.unit ? ` ${t(k.unit)}` : ""}`;
      setText(node.querySelector(".value"), text);
      if (!redraw) continue;
      const pts = [];
      for (const p of this.history) if (p[k.key] != null) pts.push([p.t, p[k.key]]);
      if (v != null) pts.push([at, v]);
      sparkline(node.querySelector("canvas"), pts, { at, spanMs: this.spanMs, u, color: k.color });
    }
  }
}
