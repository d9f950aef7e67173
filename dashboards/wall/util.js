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

async function request(method, url, body, timeoutMs) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), timeoutMs);
  try {
    const resp = await fetch(url, {
      method, cache: "no-cache", signal: ctl.signal,
      headers: body === undefined ? undefined : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await resp.text();
    let doc = null;
    try { doc = text ? JSON.parse(text) : null; } catch { doc = null; }
    if (!resp.ok) {
      const detail = doc && doc.detail;
      throw new HttpError(resp.status, typeof detail === "string" ? detail : detail ? JSON.stringify(detail) : text.slice(0, 200));
    }
    return doc;
  } catch (err) {
    if (err.name === "AbortError") throw new HttpError(0, "timeout");
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

export const getJson = (url, timeoutMs = 15_000) => request("GET", url, undefined, timeoutMs);
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
