// Labels of the wall display in Vietnamese (default) and English, and locale-aware formatters.

export const TIME_ZONE = "Asia/Ho_Chi_Minh";

const STRINGS = {
  vi: {
    title: "Trung tâm Giám sát, Điều hành đô thị thông minh",
    connecting: "Đang kết nối",
    live: "Trực tuyến",
    offline_conn: "Mất kết nối",
    stale: "Dữ liệu không cập nhật",
    banner_stale: "Dữ liệu không cập nhật từ {since} ({age}) — đang kết nối lại",
    banner_down: "Mất kết nối máy chủ — thử lại sau {sec} giây (lần {n})",
    banner_retrying: "Mất kết nối máy chủ — đang kết nối lại (lần {n})",
    banner_lagged: "Màn hình xử lý chậm: đã bỏ qua {n} bản tin, trạng thái đã được cập nhật lại",
    map: "Bản đồ thiết bị",
    districts: "Tình trạng theo quận, huyện",
    events: "Sự kiện, sự cố",
    cameras: "Camera",
    kpis: "Chỉ số chính",
    devices: "thiết bị",
    online: "Hoạt động",
    degraded: "Suy giảm",
    offline: "Mất kết nối",
    unknown: "Chưa rõ",
    bts: "Trạm BTS",
    camera: "Camera",
    traffic: "Cảm biến giao thông",
    bts_online: "BTS hoạt động",
    cam_healthy: "Camera tốt",
    speed: "Tốc độ",
    speed_index: "Chỉ số tốc độ",
    city_speed: "Tốc độ TB toàn thành phố",
    events_5m: "Sự kiện / 5 phút",
    no_events: "Chưa có sự kiện",
    no_cameras: "Chưa có camera",
    no_image: "Chưa có ảnh",
    no_data: "—",
    last_hours: "{h} giờ qua",
    updated: "Cập nhật",
    ago_s: "{n} giây",
    ago_m: "{n} phút",
    ago_h: "{n} giờ",
    ago_d: "{n} ngày",
    sev_critical: "Khẩn cấp",
    sev_major: "Nghiêm trọng",
    sev_minor: "Nhẹ",
    sev_warning: "Cảnh báo",
    sev_info: "Thông tin",
    kmh: "km/h",
    short_bts: "BTS",
    short_cam: "Cam",
    short_speed: "Tốc độ",
    no_position: "{n} chưa có vị trí",
    kind_traffic: "Giao thông",
    loading_map: "Đang tải bản đồ…",
    urban_core: "Nội thành",
  },
  en: {
    title: "Intelligent Operations Center",
    connecting: "Connecting",
    live: "Live",
    offline_conn: "Disconnected",
    stale: "Data stale",
    banner_stale: "No data since {since} ({age}) — reconnecting",
    banner_down: "Server unreachable — retrying in {sec} s (attempt {n})",
    banner_retrying: "Server unreachable — reconnecting (attempt {n})",
    banner_lagged: "Display fell behind: {n} updates skipped, state refreshed",
    map: "Device map",
    districts: "District health",
    events: "Events and incidents",
    cameras: "Cameras",
    kpis: "Key indicators",
    devices: "devices",
    online: "Online",
    degraded: "Degraded",
    offline: "Offline",
    unknown: "Unknown",
    bts: "BTS",
    camera: "Camera",
    traffic: "Traffic sensor",
    bts_online: "BTS online",
    cam_healthy: "Cameras OK",
    speed: "Speed",
    speed_index: "Speed index",
    city_speed: "City mean speed",
    events_5m: "Events / 5 min",
    no_events: "No events yet",
    no_cameras: "No cameras yet",
    no_image: "No image yet",
    no_data: "—",
    last_hours: "last {h} h",
    updated: "Updated",
    ago_s: "{n} s",
    ago_m: "{n} min",
    ago_h: "{n} h",
    ago_d: "{n} d",
    sev_critical: "Critical",
    sev_major: "Major",
    sev_minor: "Minor",
    sev_warning: "Warning",
    sev_info: "Info",
    kmh: "km/h",
    short_bts: "BTS",
    short_cam: "Cam",
    short_speed: "Speed",
    no_position: "{n} without position",
    kind_traffic: "Traffic",
    loading_map: "Loading map…",
    urban_core: "City centre",
  },
};

// Device event types of docs/device-api.md and the camera analyser's fault names; others are shown as sent.
const EVENT_TYPES = {
  vi: {
    mains_power_lost: "Mất điện lưới", mains_power_restored: "Có điện lưới trở lại",
    battery_low: "Pin yếu", high_temperature: "Nhiệt độ cao", link_down: "Mất đường truyền",
    link_up: "Có đường truyền", door_open: "Mở cửa tủ", tamper: "Camera bị can thiệp",
    video_loss: "Mất tín hiệu hình", black: "Hình đen", freeze: "Hình đứng", blur: "Hình mờ",
    occlusion: "Bị che khuất", shift: "Lệch góc quay", brightness: "Độ sáng bất thường", noise: "Nhiễu hình",
    accident: "Tai nạn", congestion: "Ùn tắc", incident: "Sự cố", spike: "Đột biến",
    level_shift: "Thay đổi mức", stuck: "Giá trị đứng yên", silence: "Không gửi dữ liệu",
  },
  en: {
    mains_power_lost: "Mains power lost", mains_power_restored: "Mains power restored", battery_low: "Battery low",
    high_temperature: "High temperature", link_down: "Link down", link_up: "Link up", door_open: "Cabinet door open",
    tamper: "Camera tampering", video_loss: "Video loss", black: "Black picture", freeze: "Frozen picture",
    blur: "Blurred picture", occlusion: "View blocked", shift: "View shifted", brightness: "Abnormal brightness",
    noise: "Picture noise", accident: "Accident", congestion: "Congestion", incident: "Incident", spike: "Spike",
    level_shift: "Level shift", stuck: "Stuck value", silence: "No data",
  },
};

export function pickLang(search) {
  const lang = new URLSearchParams(search).get("lang");
  return lang === "en" ? "en" : "vi";
}

export function makeI18n(lang) {
  const table = STRINGS[lang] || STRINGS.vi;
  const types = EVENT_TYPES[lang] || {};
  const locale = lang === "en" ? "en-GB" : "vi-VN";
  const fmt = (pattern, vars) => pattern.replace(/\{(\w+)\}/g, (_, k) => (vars && k in vars ? vars[k] : ""));
  const clock = new Intl.DateTimeFormat(locale, {
    timeZone: TIME_ZONE, hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
  });
  const date = new Intl.DateTimeFormat(locale, {
    timeZone: TIME_ZONE, weekday: "long", day: "2-digit", month: "2-digit", year: "numeric",
  });
  const hhmm = new Intl.DateTimeFormat(locale, { timeZone: TIME_ZONE, hour: "2-digit", minute: "2-digit", hour12: false });
  const numbers = [0, 1].map((d) => new Intl.NumberFormat(locale, { maximumFractionDigits: d, minimumFractionDigits: d }));
  return {
    lang,
    locale,
    t: (key, vars) => fmt(key in table ? table[key] : key, vars),
    eventType: (type) => types[type] || String(type || "").replace(/[_.]+/g, " "),
    time: (ms) => clock.format(ms),
    hhmm: (ms) => hhmm.format(ms),
    date: (ms) => date.format(ms),
    num: (v, digits = 0) => (Number.isFinite(v) ? numbers[digits].format(v) : table.no_data),
    pct: (v) => (Number.isFinite(v) ? `${numbers[0].format(v)}%` : table.no_data),
    // Ages as a duty officer says them: "45 giây", "5 phút", "2 giờ".
    age: (seconds) => {
      const s = Math.max(0, Math.round(seconds));
      if (s < 60) return fmt(table.ago_s, { n: s });
      if (s < 3600) return fmt(table.ago_m, { n: Math.floor(s / 60) });
      if (s < 86400) return fmt(table.ago_h, { n: Math.floor(s / 3600) });
      return fmt(table.ago_d, { n: Math.floor(s / 86400) });
    },
  };
}
