// Time-axis ticks on whole steps of the city's wall clock (not of UTC), across DST changes and zones
// with half-hour offsets. Pure: no DOM, tested with node (tests/integration/test_wall_timeaxis.py).

/** Tick steps, ms: the first giving at most six ticks over the span is used. */
export const TIME_STEPS = [60e3, 120e3, 300e3, 600e3, 900e3, 1800e3, 3600e3, 7200e3, 10800e3, 21600e3, 43200e3,
  86400e3, 2 * 86400e3, 7 * 86400e3, 14 * 86400e3, 30 * 86400e3, 91 * 86400e3];

const formatters = new Map();

function partsFormatter(timeZone) {
  let f = formatters.get(timeZone);
  if (!f) {
    f = new Intl.DateTimeFormat("en-US", {
      timeZone, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit",
    });
    formatters.set(timeZone, f);
  }
  return f;
}

/** How far `timeZone`'s wall clock is ahead of UTC at instant `ms`, in ms (+7 h for Asia/Ho_Chi_Minh). */
export function zoneOffsetMs(timeZone, ms) {
  const p = {};
  for (const { type, value } of partsFormatter(timeZone).formatToParts(ms)) p[type] = Number(value);
  const wall = Date.UTC(p.year, p.month - 1, p.day, p.hour, p.minute, p.second);
  return wall - Math.floor(ms / 1000) * 1000;
}

/** The instant at which `timeZone`'s wall clock reads `wallMs` (wall time written as if it were UTC). */
function instantOf(timeZone, wallMs) {
  const guess = wallMs - zoneOffsetMs(timeZone, wallMs);
  return wallMs - zoneOffsetMs(timeZone, guess); // second pass: right on either side of a DST change
}

/** The step for a span: at most six ticks. */
export function timeStep(spanMs) {
  return TIME_STEPS.find((s) => spanMs / s <= 6) || TIME_STEPS[TIME_STEPS.length - 1];
}

/**
 * Tick instants in [start, end] on whole multiples of `step` of the local wall clock: a 6-hour step
 * gives 00:00, 06:00, 12:00, 18:00 in `timeZone`, a day step local midnights.
 */
export function timeTicks(start, end, step, timeZone = "UTC") {
  const ticks = [];
  let wall = Math.ceil((start + zoneOffsetMs(timeZone, start)) / step) * step;
  for (let guard = 0; guard < 1000; guard++, wall += step) {
    const t = instantOf(timeZone, wall);
    if (t < start) continue;
    if (t > end) break;
    if (ticks[ticks.length - 1] !== t) ticks.push(t); // a wall time repeated at a DST fall-back: once
  }
  return ticks;
}
