// Silences: quiet matching alerts for a maintenance window (they are still recorded; nobody is paged).
// Create (prefilled from an incident's "Silence…" link), extend by an hour, delete.
import { CATEGORIES, RULES } from "./ops-lists.js";
import { el, getJson, parseTs, sendJson } from "./util.js";

const DURATIONS_MIN = [30, 60, 120, 240, 480, 1440];
const KEYS = ["district", "kind", "device_id", "category", "rule"];

export class SilenceView {
  constructor() {
    this.ready = false;
  }

  mount(root, ctx, params) {
    this.ctx = ctx;
    this.params = params;
    const { t } = ctx.i18n;
    this.form = el("form", { class: "silence-form", onsubmit: (ev) => { ev.preventDefault(); this.create(); } });
    this.list = el("table", { class: "list silences" });
    root.append(el("div", { class: "cols" },
      el("section", { class: "card col" }, el("h3", { text: t("silence_new") }), this.form),
      el("section", { class: "card col" }, el("h3", { text: t("silences") }), this.list)));
    this.renderForm();
    this.load();
  }

  onCity() {
    this.renderForm();
  }

  renderForm() {
    const { i18n } = this.ctx;
    const { t, term } = i18n;
    const p = this.params;
    const pick = (name, options) => {
      const node = el("select", { name }, el("option", { value: "", text: t("all") }),
        ...options.map(([v, label]) => el("option", { value: v, text: label })));
      if (p.get(name) && !options.some(([v]) => v === p.get(name))) node.append(el("option", { value: p.get(name), text: p.get(name) }));
      node.value = p.get(name) || "";
      return node;
    };
    const row = (label, input) => el("label", null, el("span", { text: label }), input);
    const districts = this.ctx.city ? this.ctx.city.districts.map((d) => [d.code, d.name]) : [];
    const maxH = this.ctx.me?.silence_max_h; // an officer's silences are capped; what is not allowed is not offered
    const durations = DURATIONS_MIN.filter((m) => maxH == null || m <= maxH * 60);
    const duration = el("select", { name: "duration" }, ...durations.map((m) => el("option", { value: String(m),
      text: m < 60 ? t("minutes_n", { n: m }) : t("hours_n", { n: m / 60 }) })));
    duration.value = "120";
    this.form.replaceChildren(
      el("fieldset", null, el("legend", { text: t("silence_matchers") }),
        row(t("district"), pick("district", districts)),
        row(t("kind"), pick("kind", [["bts", t("bts")], ["camera", t("camera")], ["traffic", t("traffic")]])),
        row(t("device_id"), el("input", { name: "device_id", value: p.get("device_id") || "", spellcheck: false })),
        row(t("category"), pick("category", CATEGORIES.map((c) => [c, term("cat", c)]))),
        row(t("rule"), pick("rule", RULES.map((r) => [r, term("rule", r)])))),
      row(t("silence_for"), duration),
      row(t("silence_reason"), el("input", { name: "reason", required: true, maxLength: 500, value: p.get("reason") || "" })),
      el("button", { type: "submit", class: "primary", text: t("silence_create") }));
  }

  async create() {
    const { t } = this.ctx.i18n;
    const data = new FormData(this.form);
    const matchers = {};
    for (const k of KEYS) {
      const v = String(data.get(k) || "").trim();
      if (v) matchers[k] = v;
    }
    if (!Object.keys(matchers).length) {
      this.ctx.toast(t("need_matcher"), "error");
      return;
    }
    if (!this.ctx.officer()) return;
    const ends = new Date(this.ctx.now() + Number(data.get("duration")) * 60_000).toISOString();
    try {
      await sendJson("POST", "/api/silences", { matchers, ends_at: ends, reason: String(data.get("reason")).trim() });
      this.ctx.toast(`${t("silence_create")}: ${t("action_ok")}`);
      this.form.querySelector("[name=reason]").value = "";
      this.load();
    } catch (err) {
      this.ctx.toast(t("action_failed", { e: err.message }), "error");
    }
  }

  async load() {
    const { i18n } = this.ctx;
    const { t } = i18n;
    let rows;
    try {
      rows = await getJson("/api/silences");
    } catch (err) {
      this.list.replaceChildren(el("tbody", null, el("tr", null, el("td", { class: "error", text: t("load_failed", { e: err.message }) }))));
      return;
    }
    const label = (k, v) => {
      if (k === "district") return this.ctx.city?.names.get(v) || v;
      if (k === "category") return i18n.category(v);
      if (k === "rule") return i18n.rule(v);
      if (k === "kind") return t(v === "traffic" ? "kind_traffic" : v);
      return v;
    };
    const head = el("tr", null, ...["silence_matchers", "silence_until", "silence_reason", "silence_author", ""].map((k) => el("th", { text: k ? t(k) : "" })));
    const body = rows.length ? rows.map((s) => el("tr", { dataset: { id: String(s.id) } },
      el("td", null, ...Object.entries(s.matchers).map(([k, v]) => el("span", { class: "tag", text: `${t(k)}: ${label(k, v)}` }))),
      el("td", { class: "num", text: `${i18n.stamp(parseTs(s.starts_at))} → ${i18n.stamp(parseTs(s.ends_at))}` }),
      el("td", { text: s.reason }),
      el("td", { text: s.author }),
      el("td", { class: "buttons" },
        el("button", { class: "small", text: t("silence_extend"), onclick: () => this.extend(s) }),
        el("button", { class: "small danger", text: t("silence_delete"), onclick: () => this.remove(s) }))))
      : [el("tr", null, el("td", { class: "none", colSpan: 5, text: t("silence_none") }))];
    this.list.replaceChildren(el("thead", null, head), el("tbody", null, ...body));
    this.ready = true;
  }

  async extend(s) {
    await this.change("PATCH", s, { ends_at: new Date(parseTs(s.ends_at) + 3600_000).toISOString() }, "silence_extend");
  }

  async remove(s) {
    await this.change("DELETE", s, undefined, "silence_delete");
  }

  async change(method, s, body, label) {
    const { t } = this.ctx.i18n;
    try {
      await sendJson(method, `/api/silences/${s.id}`, body);
      this.ctx.toast(`${t(label)}: ${t("action_ok")}`);
    } catch (err) {
      this.ctx.toast(t("action_failed", { e: err.message }), "error");
    }
    this.load();
  }
}
