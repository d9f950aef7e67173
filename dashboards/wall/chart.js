// Small canvas charts: KPI sparklines, time-series charts with a min/max band, and a status strip.
// Time ticks fall on whole hours/days of the city's wall clock (timeaxis.js) and are labelled by the page's
// formatter, so they read in the city's time zone (i18n.timeZone, from /api/ui/config).
import { COLORS } from "./palette.js";
import { timeStep, timeTicks } from "./timeaxis.js";

const LINE_COLORS = ["#4da3ff", "#f5a623", "#2ecc71", "#c77dff", "#ff6b81"];

/** Size the backing store to the element (device pixels); returns [ctx, w, h, px]. */
function fit(canvas) {
  const px = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(canvas.clientWidth * px));
  const h = Math.max(1, Math.round(canvas.clientHeight * px));
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  return [ctx, w, h, px];
}

/** A sparkline of [t, v] points over [at - spanMs, at]; `u` scales strokes with the type size. */
export function sparkline(canvas, pts, { at, spanMs, u = 1, color = "#4da3ff" }) {
  const [ctx, w, h, px] = fit(canvas);
  const s = px * u;
  ctx.strokeStyle = "#1d2a42";
  ctx.lineWidth = s;
  ctx.beginPath();
  ctx.moveTo(0, h - 0.5 * s);
  ctx.lineTo(w, h - 0.5 * s);
  ctx.stroke();
  if (!pts.length) return;
  let lo = Infinity, hi = -Infinity;
  for (const p of pts) { lo = Math.min(lo, p[1]); hi = Math.max(hi, p[1]); }
  if (hi - lo < 1) { lo -= 0.5; hi += 0.5; } // flat series sit in the middle, not on an edge
  const pad = 4 * s;
  const x = (ts) => pad + ((ts - (at - spanMs)) / spanMs) * (w - 2 * pad);
  const y = (v) => h - pad - ((v - lo) / (hi - lo)) * (h - 2 * pad);
  ctx.beginPath();
  pts.forEach(([ts, v], i) => (i ? ctx.lineTo(x(ts), y(v)) : ctx.moveTo(x(ts), y(v))));
  ctx.strokeStyle = color;
  ctx.lineWidth = 2 * s;
  ctx.lineJoin = "round";
  ctx.stroke();
  const [lt, lv] = pts[pts.length - 1];
  ctx.fillStyle = "#e8eef7";
  ctx.beginPath();
  ctx.arc(x(lt), y(lv), 3 * s, 0, Math.PI * 2);
  ctx.fill();
}

function niceStep(span, target) {
  const raw = span / Math.max(1, target);
  const mag = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * mag >= raw) return m * mag;
  return 10 * mag;
}

/** Tick instants over [start, end] in the city's zone, and their label ("dd/mm" for whole days). */
function ticksOf(start, end, i18n) {
  const step = timeStep(end - start);
  const label = step >= 86400e3 ? (t) => i18n.stamp(t).slice(0, 5) : (t) => i18n.hhmm(t);
  return timeTicks(start, end, step, i18n.timeZone || "UTC").map((t) => [t, label(t)]);
}

/**
 * A time-series chart. `series`: [{label, points: [[t, avg, min, max]] or [[t, v]]}] drawn as lines (with a
 * min/max band when given); `marks`: [{t, color}] vertical lines (e.g. when an incident started).
 */
export function timeChart(canvas, series, { start, end, i18n, unit = "", marks = [] }) {
  const [ctx, w, h, px] = fit(canvas);
  const font = 11 * px;
  ctx.font = `${font}px sans-serif`;
  let lo = Infinity, hi = -Infinity;
  for (const s of series) {
    for (const p of s.points) {
      lo = Math.min(lo, p[2] ?? p[1]);
      hi = Math.max(hi, p[3] ?? p[1]);
    }
  }
  if (!Number.isFinite(lo)) {
    ctx.fillStyle = "#8fa3c0";
    ctx.fillText(i18n.t("no_data"), 8 * px, h / 2);
    return;
  }
  if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
  const step = niceStep(hi - lo, 4);
  lo = Math.floor(lo / step) * step;
  hi = Math.ceil(hi / step) * step;
  const digits = step >= 1 ? 0 : Math.abs(step * 10 - Math.round(step * 10)) < 1e-9 ? 1 : 2;
  const tick = (v) => `${i18n.num(v, digits)}${unit ? ` ${unit}` : ""}`;
  let left = 0;
  for (let v = lo; v <= hi + step / 2; v += step) left = Math.max(left, ctx.measureText(tick(v)).width);
  left += 10 * px;
  const bottom = font * 1.8, top = font * 0.8, right = 8 * px;
  const x = (t) => left + ((t - start) / (end - start)) * (w - left - right);
  const y = (v) => h - bottom - ((v - lo) / (hi - lo)) * (h - bottom - top);
  ctx.strokeStyle = "#1d2a42";
  ctx.fillStyle = "#8fa3c0";
  ctx.lineWidth = px;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let v = lo; v <= hi + step / 2; v += step) {
    ctx.beginPath();
    ctx.moveTo(left, y(v));
    ctx.lineTo(w - right, y(v));
    ctx.stroke();
    ctx.fillText(tick(v), left - 4 * px, y(v));
  }
  ctx.textBaseline = "top";
  for (const [t, text] of ticksOf(start, end, i18n)) {
    const half = ctx.measureText(text).width / 2;
    ctx.textAlign = x(t) + half > w ? "right" : "center"; // the last label stays inside the canvas
    ctx.fillText(text, ctx.textAlign === "right" ? w : x(t), h - bottom + 4 * px);
  }
  for (const m of marks) {
    ctx.strokeStyle = m.color || "#ff4d4f";
    ctx.setLineDash([4 * px, 3 * px]);
    ctx.beginPath();
    ctx.moveTo(x(m.t), top);
    ctx.lineTo(x(m.t), h - bottom);
    ctx.stroke();
    ctx.setLineDash([]);
  }
  series.forEach((s, i) => {
    const color = s.color || LINE_COLORS[i % LINE_COLORS.length];
    const pts = s.points.filter((p) => p[0] >= start && p[0] <= end);
    if (!pts.length) return;
    if (pts[0].length >= 4) {
      ctx.beginPath();
      pts.forEach((p, k) => (k ? ctx.lineTo(x(p[0]), y(p[3])) : ctx.moveTo(x(p[0]), y(p[3]))));
      for (let k = pts.length - 1; k >= 0; k--) ctx.lineTo(x(pts[k][0]), y(pts[k][2]));
      ctx.closePath();
      ctx.globalAlpha = 0.18;
      ctx.fillStyle = color;
      ctx.fill();
      ctx.globalAlpha = 1;
    }
    ctx.beginPath();
    pts.forEach((p, k) => (k ? ctx.lineTo(x(p[0]), y(p[1])) : ctx.moveTo(x(p[0]), y(p[1]))));
    ctx.strokeStyle = color;
    ctx.lineWidth = 2 * px;
    ctx.lineJoin = "round";
    ctx.stroke();
    if (pts.length === 1) {
      ctx.fillStyle = color;
      ctx.beginPath();
      ctx.arc(x(pts[0][0]), y(pts[0][1]), 3 * px, 0, Math.PI * 2);
      ctx.fill();
    }
  });
}

/** A horizontal strip of the states a device was in over [start, end]: `changes` = [{t, state}], oldest first. */
export function statusStrip(canvas, changes, { start, end, i18n }) {
  const [ctx, w, h, px] = fit(canvas);
  const font = 11 * px;
  const barH = h - font * 1.8;
  const x = (t) => ((Math.max(start, Math.min(end, t)) - start) / (end - start)) * w;
  ctx.fillStyle = "#1a2438";
  ctx.fillRect(0, 0, w, barH);
  changes.forEach((c, i) => {
    const t1 = i + 1 < changes.length ? changes[i + 1].t : end;
    if (t1 < start) return;
    ctx.fillStyle = COLORS[c.state] || COLORS.unknown;
    ctx.fillRect(x(c.t), 0, Math.max(px, x(t1) - x(c.t)), barH);
  });
  ctx.font = `${font}px sans-serif`;
  ctx.fillStyle = "#8fa3c0";
  ctx.textBaseline = "top";
  for (const [t, text] of ticksOf(start, end, i18n)) {
    ctx.textAlign = x(t) < 20 * px ? "left" : x(t) > w - 20 * px ? "right" : "center";
    ctx.fillText(text, x(t), barH + 4 * px);
  }
}
