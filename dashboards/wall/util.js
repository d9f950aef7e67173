// Small helpers shared by every screen: DOM building, JSON over HTTP, timestamps, page settings.
import { makeI18n, pickLang, pickTimeZone } from "./i18n.js";

export const $ = (id) => document.getElementById(id);

/** el("div", {class: "x", dataset: {k: "v"}}, "text", child...): text is always set as text, never as HTML. */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k === "text") node.textContent = v;
      else if (k === "style") node.style.cssText = v; // CSSOM: a style attribute would break the strict CSP
      else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
      else if (k in node && typeof v !== "string") node[k] = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
  }
  for (const c of children) {
    if (c == null || c === false) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

/** Set text only when it changed: screens run for weeks and needless layout work adds up. */
export function setText(node, text) {
  const s = String(text);
  if (node.textContent !== s) node.textContent = s;
}

export function parseTs(v) {
  if (v == null) return null;
  const ms = typeof v === "number" ? v : Date.parse(v);
  return Number.isFinite(ms) ? ms : null;
}

export class HttpError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
  }
}

/** decodeURIComponent that never throws: a link's malformed escape (`%E0%A4%A`) stays as written instead of
 * stopping the page that reads it. */
export function decodeSafe(s) {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** The session's CSRF token (a readable cookie set at login); sent with every state-changing request. */
export function csrfToken() {
  const m = document.cookie.match(/(?:^|;\s*)ioc_csrf=([^;]+)/);
  return m ? decodeSafe(m[1]) : "";
}

/** Off to the login page, coming back here afterwards. */
export function goLogin() {
  location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search + location.hash)}`);
}

async function request(method, url, body, timeoutMs, withTotal = false) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), timeoutMs);
  try {
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET") headers["X-CSRF-Token"] = csrfToken();
    const resp = await fetch(url, {
      method, cache: "no-cache", signal: ctl.signal, credentials: "same-origin", headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (resp.status === 401 && !url.startsWith("/api/auth/login")) goLogin();
    const text = await resp.text();
    let doc = null;
    try { doc = text ? JSON.parse(text) : null; } catch { doc = null; }
    if (!resp.ok) {
      const detail = doc && doc.detail;
      throw new HttpError(resp.status, typeof detail === "string" ? detail : detail ? JSON.stringify(detail) : text.slice(0, 200));
    }
    if (!withTotal) return doc;
    const total = resp.headers.get("X-Total-Count");
    return { rows: doc, total: total == null || total === "" ? null : Number(total) };
  } catch (err) {
    if (err.name === "AbortError") throw new HttpError(0, "timeout");
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

export const getJson = (url, timeoutMs = 15_000) => request("GET", url, undefined, timeoutMs);
/** A list and the rows matching in all (the X-Total-Count header; null when the route does not count them). */
export const getPage = (url, timeoutMs = 15_000) => request("GET", url, undefined, timeoutMs, true);
export const sendJson = (method, url, body, timeoutMs = 15_000) => request(method, url, body ?? {}, timeoutMs);

/** A query string from an object, leaving out empty values (arrays become repeated keys). */
export function qs(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v == null || v === "") continue;
    for (const item of Array.isArray(v) ? v : [v]) q.append(k, String(item));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** Language and time zone: the URL (`?lang=`, `?tz=`) wins over the server's settings (`/api/ui/config`). */
export async function loadUiSettings() {
  let server = {};
  try {
    server = (await getJson("/api/ui/config", 5000)) || {};
  } catch (err) {
    console.warn("ui settings not loaded, using defaults:", err.message);
  }
  const params = new URLSearchParams(location.search);
  const lang = pickLang(location.search, server.lang);
  const tz = pickTimeZone(params.get("tz"), server.timezone);
  return { i18n: makeI18n(lang, tz), server };
}
