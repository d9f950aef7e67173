// Labels of the screens in Vietnamese and English (each entry: [vi, en], side by side so a translation is
// never forgotten), and formatters that show every time in the city's time zone, not the browser's.

export const DEFAULT_TIME_ZONE = "Asia/Ho_Chi_Minh";
export const LANGS = ["vi", "en"];

const T = {
  title: ["Trung tâm Giám sát, Điều hành đô thị thông minh", "Intelligent Operations Center"],
  ops_title: ["Trực ban — Sự cố và cảnh báo", "Duty officer — incidents and alerts"],
  connecting: ["Đang kết nối", "Connecting"],
  live: ["Trực tuyến", "Live"],
  offline_conn: ["Mất kết nối", "Disconnected"],
  stale: ["Dữ liệu không cập nhật", "Data stale"],
  banner_pipeline: ["Hệ thống xử lý đang ngừng: {what}", "The server's pipeline has stopped: {what}"],
  banner_stale: ["Dữ liệu không cập nhật từ {since} ({age}) — đang kết nối lại", "No data since {since} ({age}) — reconnecting"],
  banner_down: ["Mất kết nối máy chủ — thử lại sau {sec} giây (lần {n})", "Server unreachable — retrying in {sec} s (attempt {n})"],
  banner_retrying: ["Mất kết nối máy chủ — đang kết nối lại (lần {n})", "Server unreachable — reconnecting (attempt {n})"],
  banner_lagged: ["Màn hình xử lý chậm: đã bỏ qua {n} bản tin, trạng thái đã được cập nhật lại",
    "Display fell behind: {n} updates skipped, state refreshed"],
  banner_since: ["Số liệu hiển thị là của lúc {since}", "Figures shown are as of {since}"],
  map: ["Bản đồ thiết bị", "Device map"],
  districts: ["Tình trạng theo quận, huyện", "District health"],
  incidents: ["Sự cố đang mở", "Open incidents"],
  events: ["Sự kiện gần đây", "Recent events"],
  cameras: ["Camera", "Cameras"],
  kpis: ["Chỉ số chính", "Key indicators"],
  devices: ["thiết bị", "devices"],
  online: ["Hoạt động", "Online"],
  degraded: ["Suy giảm", "Degraded"],
  offline: ["Mất kết nối", "Offline"],
  unknown: ["Chưa rõ", "Unknown"],
  bts: ["Trạm BTS", "BTS"],
  camera: ["Camera", "Camera"],
  traffic: ["Cảm biến giao thông", "Traffic sensor"],
  kind_traffic: ["Giao thông", "Traffic"],
  bts_online: ["BTS hoạt động", "BTS online"],
  cam_healthy: ["Camera tốt", "Cameras OK"],
  speed_index: ["Chỉ số tốc độ", "Speed index"],
  city_speed: ["Tốc độ TB toàn thành phố", "City mean speed"],
  open_incidents: ["Sự cố đang mở", "Open incidents"],
  no_incidents: ["Không có sự cố đang mở", "No open incidents"],
  newest_critical: ["Báo động mới nhất", "Newest alarm"],
  no_events: ["Chưa có sự kiện", "No events yet"],
  no_cameras: ["Chưa có camera", "No cameras yet"],
  no_image: ["Chưa có ảnh", "No image yet"],
  no_data: ["—", "—"],
  last_hours: ["{h} giờ qua", "last {h} h"],
  ago_s: ["{n} giây", "{n} s"],
  ago_m: ["{n} phút", "{n} min"],
  ago_h: ["{n} giờ", "{n} h"],
  ago_d: ["{n} ngày", "{n} d"],
  ago_hm: ["{h} giờ {m} phút", "{h} h {m} min"],
  sev_critical: ["Khẩn cấp", "Critical"],
  sev_major: ["Nghiêm trọng", "Major"],
  sev_minor: ["Nhẹ", "Minor"],
  sev_warning: ["Cảnh báo", "Warning"],
  sev_info: ["Thông tin", "Info"],
  st_open: ["Mới", "Open"],
  st_acknowledged: ["Đã tiếp nhận", "Acknowledged"],
  st_resolved: ["Đã xử lý", "Resolved"],
  st_closed: ["Đã đóng", "Closed"],
  acked_by: ["{who} đã tiếp nhận", "acked by {who}"],
  assigned_to: ["giao cho {who}", "assigned to {who}"],
  members_n: ["{n} cảnh báo", "{n} alerts"], reopened_n: ["mở lại {n} lần", "reopened {n}×"],
  quiet: ["Tạm tắt báo", "Silenced"],
  inhibited: ["Do sự cố #{id}", "Explained by #{id}"],
  kmh: ["km/h", "km/h"],
  short_bts: ["BTS", "BTS"],
  short_cam: ["Cam", "Cam"],
  no_position: ["{n} chưa có vị trí", "{n} without position"],
  loading_map: ["Đang tải bản đồ…", "Loading map…"],
  urban_core: ["Nội thành", "City centre"],
  // operator view
  nav_incidents: ["Sự cố", "Incidents"],
  nav_alerts: ["Cảnh báo", "Alerts"],
  nav_silences: ["Tạm tắt báo", "Silences"],
  nav_wall: ["Màn hình tường", "Wall display"],
  officer: ["Cán bộ trực", "Officer"],
  officer_prompt: ["Nhập mã cán bộ trực của bạn", "Enter your officer id"],
  logout: ["Đăng xuất", "Log out"],
  role_viewer: ["chỉ xem", "viewer"],
  role_officer: ["cán bộ trực", "officer"],
  role_supervisor: ["trưởng ca", "supervisor"],
  role_admin: ["quản trị", "admin"],
  role_cannot: ["Vai trò của bạn chỉ được xem", "Your role may only view"],
  filter_state: ["Trạng thái", "State"],
  filter_severity: ["Mức độ", "Severity"],
  filter_district: ["Quận, huyện", "District"],
  filter_category: ["Loại", "Category"],
  filter_search: ["Tìm kiếm…", "Search…"],
  filter_device: ["Thiết bị", "Device"],
  all: ["Tất cả", "All"],
  live_only: ["Đang mở", "Live"],
  col_severity: ["Mức độ", "Severity"],
  col_title: ["Nội dung", "What"],
  col_district: ["Khu vực", "Where"],
  col_state: ["Trạng thái", "State"],
  col_started: ["Bắt đầu", "Started"],
  col_age: ["Thời gian", "Age"],
  col_assignee: ["Phụ trách", "Assignee"],
  col_members: ["Cảnh báo", "Alerts"],
  col_device: ["Thiết bị", "Device"],
  col_rule: ["Quy tắc", "Rule"],
  none_found: ["Không có mục nào", "Nothing matches"],
  loading: ["Đang tải…", "Loading…"],
  load_failed: ["Không tải được: {e}", "Could not load: {e}"],
  incident_n: ["Sự cố #{id}", "Incident #{id}"],
  back: ["← Danh sách", "← List"],
  members: ["Cảnh báo thành phần", "Member alerts"],
  members_shown: ["Đang hiển thị {n} / {m} cảnh báo", "Showing {n} of {m} alerts"],
  list_shown: ["Đang hiển thị {n} / {m} — lọc để xem các mục còn lại", "Showing {n} of {m} — filter to see the rest"],
  list_newest: ["Đang hiển thị {n} mục mới nhất — lọc để xem các mục cũ hơn", "Showing the newest {n} — filter to see older ones"],
  members_more: ["Xem thêm {n}", "Show {n} more"],
  members_next: ["Trang tiếp theo (API)", "Next page (API)"],
  member_count: ["Số cảnh báo", "Alerts"],
  evidence: ["Bằng chứng", "Evidence"],
  timeline: ["Diễn biến", "Timeline"],
  act_ack: ["Tiếp nhận", "Acknowledge"],
  act_assign: ["Giao việc", "Assign"],
  act_comment: ["Ghi chú", "Comment"],
  act_resolve: ["Đã xử lý xong", "Resolve"],
  act_close: ["Đóng", "Close"],
  act_silence: ["Tạm tắt báo…", "Silence…"],
  note_ph: ["Ghi chú (không bắt buộc)", "Note (optional)"],
  comment_ph: ["Nội dung ghi chú", "Comment"],
  unassigned: ["(chưa giao)", "(unassigned)"],
  action_ok: ["Đã ghi nhận", "Done"],
  action_failed: ["Không thực hiện được: {e}", "Failed: {e}"],
  started: ["Bắt đầu", "Started"],
  updated: ["Cập nhật", "Updated"],
  resolved_at: ["Xử lý xong", "Resolved"], reopened: ["Mở lại", "Reopened"],
  values: ["Giá trị", "Values"],
  chart_of: ["{metric} quanh thời điểm xảy ra", "{metric} around the start"],
  snapshot: ["Ảnh mới nhất", "Latest snapshot"],
  device_n: ["Thiết bị {id}", "Device {id}"],
  latest_values: ["Giá trị mới nhất", "Latest values"],
  history: ["Lịch sử", "History"],
  status_timeline: ["Trạng thái theo thời gian", "Status timeline"],
  recent_findings: ["Phát hiện bất thường gần đây", "Recent findings"],
  recent_alerts: ["Cảnh báo gần đây", "Recent alerts"],
  device_events: ["Sự kiện từ thiết bị", "Device alarms"],
  range_1h: ["1 giờ", "1 h"],
  range_6h: ["6 giờ", "6 h"],
  range_24h: ["24 giờ", "24 h"],
  kind: ["Loại", "Kind"],
  position: ["Vị trí", "Position"],
  last_seen: ["Lần cuối", "Last seen"],
  state: ["Trạng thái", "State"],
  reason: ["Lý do", "Reason"],
  silences: ["Tạm tắt báo đang hiệu lực", "Active silences"],
  silence_new: ["Tạo tạm tắt báo", "New silence"],
  silence_matchers: ["Áp dụng cho", "Applies to"],
  silence_until: ["Đến", "Until"],
  silence_for: ["Trong", "For"],
  silence_reason: ["Lý do", "Reason"],
  silence_author: ["Người tạo", "Author"],
  silence_create: ["Tạo", "Create"],
  silence_delete: ["Xoá", "Delete"],
  silence_extend: ["+1 giờ", "+1 h"],
  silence_none: ["Không có tạm tắt báo nào", "No active silences"],
  minutes_n: ["{n} phút", "{n} min"],
  hours_n: ["{n} giờ", "{n} h"],
  rule: ["Quy tắc", "Rule"],
  device_id: ["Mã thiết bị", "Device id"],
  category: ["Loại sự cố", "Category"],
  district: ["Quận, huyện", "District"],
  need_matcher: ["Cần ít nhất một điều kiện", "At least one condition is needed"],
  system: ["hệ thống", "system"],
  open_device: ["Mở trang thiết bị", "Open device page"],
  confidence: ["độ tin cậy", "confidence"],
  not_found: ["Không tìm thấy", "Not found"],
};

// Alert rules, incident categories, audit actions, device alarms and camera/detector labels.
const TERMS = {
  cat_power: ["Mất điện lưới", "Power"], cat_offline: ["Mất kết nối", "Offline"], cat_camera: ["Lỗi camera", "Camera"],
  cat_traffic: ["Ùn tắc giao thông", "Traffic"], cat_bts_quality: ["Chất lượng BTS", "BTS quality"],
  cat_sensor: ["Cảm biến lỗi", "Sensor"], cat_anomaly: ["Bất thường", "Anomaly"], cat_device: ["Sự kiện thiết bị", "Device"],
  rule_mains_power_lost: ["Mất điện lưới", "Mains power lost"], rule_battery_low: ["Pin yếu", "Battery low"],
  rule_device_offline: ["Mất kết nối", "Offline"], rule_device_degraded: ["Suy giảm", "Degraded"],
  rule_device_silent: ["Không gửi dữ liệu", "Silent"], rule_camera_fault: ["Lỗi hình ảnh", "Picture fault"],
  rule_camera_stream: ["Luồng hình kém", "Stream degraded"], rule_speed_collapse: ["Ùn tắc", "Traffic jam"],
  rule_availability_drop: ["Giảm khả dụng", "Availability drop"], rule_kpi_degraded: ["KPI suy giảm", "KPI degraded"],
  rule_sensor_stuck: ["Giá trị đứng yên", "Stuck value"], rule_anomaly: ["Bất thường", "Anomaly"],
  rule_device_event: ["Sự kiện thiết bị", "Device alarm"],
  act_incident_opened: ["Mở sự cố", "Incident opened"], act_incident_reopened: ["Mở lại sự cố", "Incident reopened"], act_alert_opened: ["Cảnh báo mới", "Alert opened"],
  act_alert_resolved: ["Cảnh báo hết", "Alert resolved"], act_incident_resolved: ["Sự cố đã xử lý", "Incident resolved"],
  act_incident_closed: ["Đóng sự cố", "Incident closed"], act_acknowledged: ["Tiếp nhận", "Acknowledged"],
  act_assigned: ["Giao việc", "Assigned"], act_commented: ["Ghi chú", "Comment"], act_closed: ["Đóng", "Closed"],
  act_paged: ["Đã báo tin", "Paged"], act_escalated: ["Báo tin cấp trên", "Escalated"],
  act_suppressed: ["Tạm tắt báo", "Silenced"], act_unsuppressed: ["Bỏ tạm tắt báo", "Unsilenced"],
  ev_mains_power_lost: ["Mất điện lưới", "Mains power lost"], ev_mains_power_restored: ["Có điện lưới trở lại", "Mains power restored"],
  ev_battery_low: ["Pin yếu", "Battery low"], ev_high_temperature: ["Nhiệt độ cao", "High temperature"],
  ev_link_down: ["Mất đường truyền", "Link down"], ev_link_up: ["Có đường truyền", "Link up"],
  ev_door_open: ["Mở cửa tủ", "Cabinet door open"], ev_tamper: ["Camera bị can thiệp", "Camera tampering"],
  ev_video_loss: ["Mất tín hiệu hình", "Video loss"], ev_black: ["Hình đen", "Black picture"],
  ev_freeze: ["Hình đứng", "Frozen picture"], ev_blur: ["Hình mờ", "Blurred picture"],
  ev_occlusion: ["Bị che khuất", "View blocked"], ev_shift: ["Lệch góc quay", "View shifted"],
  ev_brightness: ["Độ sáng bất thường", "Abnormal brightness"], ev_noise: ["Nhiễu hình", "Picture noise"],
  ev_accident: ["Tai nạn", "Accident"], ev_congestion: ["Ùn tắc", "Congestion"], ev_spike: ["Đột biến", "Spike"],
  ev_dip: ["Sụt giảm", "Dip"], ev_level_shift: ["Thay đổi mức", "Level shift"], ev_stuck: ["Giá trị đứng yên", "Stuck value"],
  ev_flatline: ["Giá trị đứng yên", "Flat line"], ev_silence: ["Không gửi dữ liệu", "No data"],
  ev_stale: ["Dữ liệu cũ", "Stale data"], ev_drift: ["Trôi dần", "Drift"],
  ev_speed_collapse: ["Tốc độ giảm mạnh", "Speed collapse"], ev_availability_drop: ["Giảm khả dụng", "Availability drop"],
};

// Metric names of docs/device-api.md with their units.
const METRICS = {
  speed_kmh: ["Tốc độ", "Speed", "km/h"], flow_veh_h: ["Lưu lượng", "Flow", "xe/h|veh/h"],
  occupancy_pct: ["Chiếm dụng", "Occupancy", "%"], queue_len_m: ["Hàng chờ", "Queue", "m"],
  heavy_vehicle_pct: ["Xe tải", "Heavy vehicles", "%"], availability_pct: ["Khả dụng", "Availability", "%"],
  prb_util_pct: ["Tải PRB", "PRB load", "%"], active_users: ["Thuê bao", "Active users", ""],
  throughput_mbps: ["Thông lượng", "Throughput", "Mbps"], drop_call_rate_pct: ["Rớt cuộc gọi", "Dropped calls", "%"],
  mains_power: ["Điện lưới", "Mains power", ""], battery_pct: ["Pin", "Battery", "%"],
  temperature_c: ["Nhiệt độ", "Temperature", "°C"], rssi_dbm: ["RSSI", "RSSI", "dBm"], fps: ["Khung hình/s", "Frames/s", "fps"],
  bitrate_kbps: ["Bitrate", "Bitrate", "kbps"], storage_free_pct: ["Bộ nhớ trống", "Storage free", "%"],
};

/** The language asked for in the URL (`?lang=en`), else the server's setting, else Vietnamese. */
export function pickLang(search, fallback = "vi") {
  const lang = new URLSearchParams(search).get("lang");
  if (LANGS.includes(lang)) return lang;
  return LANGS.includes(fallback) ? fallback : "vi";
}

/** A valid IANA zone name, else the default (a bad `?tz=` must not break every formatter). */
export function pickTimeZone(...candidates) {
  for (const tz of candidates) {
    if (!tz) continue;
    try {
      new Intl.DateTimeFormat("en", { timeZone: tz });
      return tz;
    } catch { /* try the next one */ }
  }
  return DEFAULT_TIME_ZONE;
}

export function makeI18n(lang, timeZone = DEFAULT_TIME_ZONE) {
  const li = lang === "en" ? 1 : 0;
  const locale = li ? "en-GB" : "vi-VN";
  const fmt = (pattern, vars) => pattern.replace(/\{(\w+)\}/g, (_, k) => (vars && k in vars ? vars[k] : ""));
  const df = (opts) => new Intl.DateTimeFormat(locale, { timeZone, hour12: false, ...opts });
  const clock = df({ hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const date = df({ weekday: "long", day: "2-digit", month: "2-digit", year: "numeric" });
  const hhmm = df({ hour: "2-digit", minute: "2-digit" });
  // "dd/mm hh:mm:ss" in both languages: Intl's vi-VN order ("00:13:14 02-12") reads oddly in a table.
  const stampParts = df({ day: "2-digit", month: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const stamp = { format: (ms) => {
    const p = Object.fromEntries(stampParts.formatToParts(ms).map((x) => [x.type, x.value]));
    return `${p.day}/${p.month} ${p.hour}:${p.minute}:${p.second}`;
  } };
  const numbers = [0, 1, 2].map((d) => new Intl.NumberFormat(locale, { maximumFractionDigits: d, minimumFractionDigits: 0 }));
  const fixed1 = new Intl.NumberFormat(locale, { maximumFractionDigits: 1, minimumFractionDigits: 1 });
  // Own entries only: a device may name a metric "constructor" or "toString", which every object inherits.
  const own = (dict, key) => (Object.hasOwn(dict, key) ? dict[key] : undefined);
  const t = (key, vars) => fmt(own(T, key)?.[li] ?? String(key), vars);
  const term = (prefix, key) => {
    const entry = own(TERMS, `${prefix}_${key}`);
    return entry ? entry[li] : String(key ?? "").replace(/[_.]+/g, " ");
  };
  const age = (seconds) => {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return t("ago_s", { n: s });
    if (s < 3600) return t("ago_m", { n: Math.floor(s / 60) });
    if (s < 6 * 3600) return t("ago_hm", { h: Math.floor(s / 3600), m: Math.floor((s % 3600) / 60) });
    if (s < 86400) return t("ago_h", { n: Math.floor(s / 3600) });
    return t("ago_d", { n: Math.floor(s / 86400) });
  };
  return {
    lang,
    locale,
    timeZone,
    t,
    term,
    eventType: (type) => term("ev", type),
    rule: (rule) => term("rule", rule),
    category: (cat) => term("cat", cat),
    action: (action) => term("act", action),
    metric: (name) => own(METRICS, name)?.[li] ?? String(name ?? ""),
    unit: (name) => {
      const parts = (own(METRICS, name)?.[2] ?? "").split("|"); // "vi|en" where the unit is a word
      return parts[Math.min(li, parts.length - 1)];
    },
    time: (ms) => clock.format(ms),
    hhmm: (ms) => hhmm.format(ms),
    date: (ms) => date.format(ms),
    stamp: (ms) => (Number.isFinite(ms) ? stamp.format(ms) : T.no_data[li]),
    num: (v, digits = 0) => (Number.isFinite(v) ? (digits === 1 ? fixed1 : numbers[Math.min(2, digits)]).format(v) : T.no_data[li]),
    pct: (v) => (Number.isFinite(v) ? `${numbers[0].format(v)}%` : T.no_data[li]),
    age,
    incidentTitle: (inc) => incidentTitle(inc, li, term),
    /** Why an alert or incident pages nobody: a silence, or a bigger incident that explains it. */
    quiet: (suppressed) => (String(suppressed).startsWith("inhibited:")
      ? t("inhibited", { id: String(suppressed).split(":")[1] }) : t("quiet")),
  };
}

// The engine writes titles in English; in Vietnamese the headline is rebuilt from the incident's fields
// (category, members, district) so a duty officer never reads a mixed-language line.
function incidentTitle(inc, li, term) {
  if (li === 1 || !inc) return inc?.title ?? "";
  const members = (inc.members || []).filter((m) => m.state === "open" || m.state === "acknowledged");
  const live = members.length ? members : inc.members || [];
  const where = inc.district_name || inc.district;
  const at = where ? ` tại ${where}` : "";
  const kinds = { bts: "trạm BTS", camera: "camera", traffic: "cảm biến giao thông" };
  if (inc.category === "power") {
    // a storm's incident carries some of its members only (members_truncated): count its devices, not them
    const n = (inc.members_truncated && inc.device_count)
      || new Set(live.filter((m) => m.kind === "bts").map((m) => m.device_id)).size || inc.member_count || 0;
    return `Mất điện lưới ${n} trạm BTS${at}`;
  }
  if (live.length > 1) {
    const kind = kinds[live[0].kind] || "thiết bị";
    const n = (inc.members_truncated && inc.device_count) || live.length;
    if (inc.category === "offline") return `${n} ${kind} mất kết nối${at}`;
    if (inc.category === "traffic") return `Ùn tắc lan rộng ${n} cảm biến${at}`;
    return `${term("cat", inc.category)}: ${n} ${kind}${at}`;
  }
  const dev = live[0]?.device_id;
  return `${term("cat", inc.category)}${dev ? ` — ${dev}` : ""}${at}`;
}
