// Operator view: the incident and alert lists, an incident's page, a device's page and silences, addressed by
// the URL fragment (#/incidents, #/incidents/7, #/alerts, #/devices/ID, #/silences). One live connection for
// the whole page; each view says what it wants from the feed and gets its frames.
import { loadCity } from "./citymap.js";
import { LiveConnection } from "./live.js";
import { DeviceView } from "./ops-device.js";
import { IncidentView } from "./ops-incident.js";
import { AlertList, IncidentList } from "./ops-lists.js";
import { SilenceView } from "./ops-silences.js";
import { DeviceStore, IncidentStore } from "./store.js";
import { $, decodeSafe, getJson, goLogin, loadUiSettings, sendJson, setText } from "./util.js";

const ROUTES = [
  [/^#\/incidents\/(\d+)$/, (m) => new IncidentView(Number(m[1]))],
  [/^#\/devices\/(.+)$/, (m) => new DeviceView(decodeSafe(m[1]))],
  [/^#\/alerts$/, () => new AlertList()],
  [/^#\/silences$/, () => new SilenceView()],
  [/^#\/incidents$/, () => new IncidentList()],
];

async function main() {
  const { i18n } = await loadUiSettings();
  const { t } = i18n;
  document.documentElement.lang = i18n.lang;
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  $("wall-link").href = `/${location.search}`;
  // Who is logged in comes from the session (the audit trail names them; nothing is typed or stored here).
  const me = (await getJson("/api/auth/me").catch(() => null)) || { name: "", role: "viewer", can: {} };
  document.body.dataset.role = me.role;
  setText($("user"), `${me.name} · ${t(`role_${me.role}`)}`);
  $("logout").addEventListener("click", async () => {
    await sendJson("POST", "/api/auth/logout").catch(() => {});
    goLogin();
  });

  let view = null;
  let toastTimer = 0;
  const ctx = {
    i18n,
    devices: new DeviceStore(),
    incidents: new IncidentStore({ lingerMs: 0 }),
    city: null,
    officers: [],
    now: () => live.now(),
    me,
    /** The logged-in officer's name, or null (with a notice) when the role may not act. */
    officer() {
      if (!me.can?.act) {
        this.toast(t("role_cannot"), "error");
        return null;
      }
      return me.name;
    },
    navigate(hash) {
      if (location.hash === hash) route();
      else location.hash = hash;
    },
    toast(text, kind = "ok") {
      const node = $("toast");
      node.textContent = text;
      node.dataset.kind = kind;
      node.hidden = false;
      clearTimeout(toastTimer);
      toastTimer = setTimeout(() => { node.hidden = true; }, kind === "error" ? 8000 : 3000);
    },
    /** An officer's action on an incident over REST: a definite answer per request (404, 409, 503...);
     * every screen, this one included, then hears the change on the live feed. */
    async act(incidentId, action, extra = {}) {
      if (!this.officer()) return null;
      try {
        const inc = await sendJson("POST", `/api/incidents/${incidentId}/${action}`, { ...extra });
        this.toast(`${t(`act_${action}`)}: ${t("action_ok")}`);
        return inc;
      } catch (err) {
        this.toast(t("action_failed", { e: err.message }), "error");
        return null;
      }
    },
  };

  const live = new LiveConnection({
    filter: {},
    onFrames: (frames) => {
      const at = live.now();
      for (const f of frames) {
        ctx.devices.apply(f, at);
        ctx.incidents.apply(f, at);
      }
      ctx.devices.version++;
      view?.onFrames?.(frames);
    },
    onState: (state) => {
      $("conn").dataset.state = state;
      setText($("conn-text"), t({ live: "live", stale: "stale", down: "offline_conn" }[state] || "connecting"));
      const banner = $("banner");
      banner.hidden = state === "live";
      if (state === "down") banner.textContent = t("banner_retrying", { n: live.attempt });
      else if (state !== "live") banner.textContent = t("connecting");
    },
  });

  function route() {
    const hash = location.hash.split("?")[0] || "#/incidents";
    let next = null;
    for (const [re, make] of ROUTES) {
      const m = hash.match(re);
      if (m) { next = make(m); break; }
    }
    if (!next) {
      location.replace("#/incidents");
      return;
    }
    view?.unmount?.();
    const root = $("view");
    root.replaceChildren();
    view = next;
    for (const a of document.querySelectorAll("#nav a[data-route]")) a.classList.toggle("on", hash.startsWith(`#/${a.dataset.route}`));
    view.mount(root, ctx, new URLSearchParams(location.hash.split("?")[1] || ""));
    // Each view names what it needs; the server answers a change with a fresh snapshot.
    const filter = view.filter ? view.filter() : { types: ["incident", "alert", "status"] };
    if (JSON.stringify(filter) !== JSON.stringify(live.filter)) live.subscribe(filter);
  }

  window.addEventListener("hashchange", route);
  route(); // first: the view's filter then goes in the URL of the first connection
  live.start();
  const clock = () => setText($("clock"), `${i18n.time(live.now())}`);
  clock();
  setInterval(clock, 1000);
  setInterval(() => view?.tick?.(), 1000);
  loadCity().then((city) => {
    ctx.city = city;
    setText($("city-name"), `IOC · ${city.name}`);
    document.title = `IOC · ${city.name} · Ops`;
    view?.onCity?.(city);
  });
  getJson("/api/officers").then((rows) => { ctx.officers = rows || []; view?.onOfficers?.(); }).catch(() => {});

  // Read-only debug hook for tests.
  window.__ops = {
    get connected() { return live.state === "live"; },
    get snapshots() { return live.stats.snapshots; },
    get devices() { return ctx.devices.devices.size; },
    get view() { return view?.constructor?.name ?? null; },
    get ready() { return !!view?.ready; },
    get filter() { return live.filter; },
    lang: i18n.lang,
  };
}

main();
