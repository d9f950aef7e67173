// Colours shared by the map (main thread and its worker), the charts and the panels.

export const COLORS = { online: "#2ecc71", degraded: "#f5a623", offline: "#ff4d4f", unknown: "#8a94a6" };
export const SEV_COLORS = { critical: "#ff3b3b", major: "#ff7a45", minor: "#f5c542", warning: "#e8d44d", info: "#4da3ff" };
export const ROAD_STYLE = {
  expressway: ["#b9853a", 3.2], national: ["#a27a3f", 2.6], arterial: ["#5d6f8f", 2.0],
  urban: ["#4b5a75", 1.5], provincial: ["#55627a", 1.5],
};

// How devices travel to the map worker: one byte each for state and kind, one for a ring's severity.
export const STATE_CODES = ["unknown", "online", "degraded", "offline"]; // also the draw order: problems on top
export const KIND_CODES = ["traffic", "bts", "camera"];
export const MARK_CODES = [null, "critical", "major", "minor", "warning", "info", "fault"];
