// The login page: user name and password to /api/auth/login (a session cookie comes back), then on to the
// page that sent us here (?next=, only a path on this site).
const form = document.getElementById("login-form");
const error = document.getElementById("login-error");

function nextPage() {
  const next = new URLSearchParams(location.search).get("next") || "/ops";
  return next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/\\") ? next : "/ops";
}

const otpRow = document.getElementById("otp-row");

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  error.textContent = "";
  const body = { username: form.username.value.trim(), password: form.password.value };
  if (!otpRow.hidden && form.otp.value.trim()) body.otp = form.otp.value.trim();
  try {
    const resp = await fetch("/api/auth/login", {
      method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const doc = await resp.json().catch(() => ({}));
    if (resp.ok) {
      if (doc.mfa_setup_required) startSetup(doc.csrf);
      else location.assign(nextPage());
      return;
    }
    if (resp.status === 401 && doc.mfa_required) {
      // The password was right; the user's second factor asks for a code: keep the password, ask for the code.
      otpRow.hidden = false;
      form.otp.value = "";
      form.otp.focus();
      if (body.otp) error.textContent = `Mã không đúng / ${typeof doc.detail === "string" ? doc.detail : "wrong code"}`;
      return;
    }
    error.textContent = resp.status === 429 ? "Quá nhiều lần thử / Too many attempts: wait a minute"
      : `Sai tên đăng nhập hoặc mật khẩu / ${typeof doc.detail === "string" ? doc.detail : "login failed"}`;
  } catch (err) {
    error.textContent = `Lỗi mạng / Network error: ${err.message}`;
  }
  otpRow.hidden = true;
  form.otp.value = "";
  form.password.value = "";
  form.password.focus();
});

// A role that needs a second factor, and the user has none yet: the session reaches the setup routes only, so set
// one up here (the secret is shown this once), then show the recovery codes and move on.
const setup = document.getElementById("mfa-setup");
const setupError = document.getElementById("mfa-error");

async function postJson(path, csrf, payload) {
  const resp = await fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf }, body: JSON.stringify(payload || {}),
  });
  return { resp, doc: await resp.json().catch(() => ({})) };
}

async function startSetup(csrf) {
  form.hidden = true;
  setup.hidden = false;
  const { resp, doc } = await postJson("/api/auth/mfa/setup", csrf);
  if (!resp.ok) {
    setupError.textContent = typeof doc.detail === "string" ? doc.detail : `setup failed (${resp.status})`;
    return;
  }
  document.getElementById("mfa-secret").textContent = doc.secret;
  const link = document.getElementById("mfa-uri");
  link.href = doc.otpauth_uri;
  link.textContent = doc.otpauth_uri;
  const confirmForm = document.getElementById("mfa-confirm-form");
  confirmForm.code.focus();
  confirmForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    setupError.textContent = "";
    const done = await postJson("/api/auth/mfa/confirm", csrf, { code: confirmForm.code.value.trim() });
    if (!done.resp.ok) {
      setupError.textContent = `Mã không đúng / ${typeof done.doc.detail === "string" ? done.doc.detail : "failed"}`;
      confirmForm.code.value = "";
      return;
    }
    confirmForm.hidden = true;
    const list = document.getElementById("mfa-codes");
    for (const code of done.doc.recovery_codes) {
      const item = document.createElement("li");
      item.textContent = code;
      list.appendChild(item);
    }
    document.getElementById("mfa-recovery").hidden = false;
    document.getElementById("mfa-continue").addEventListener("click", () => location.assign(nextPage()));
  });
}

// The login through the province's identity provider (SSO), offered when the server has it configured.
fetch("/api/auth/sso", { credentials: "same-origin" }).then((resp) => (resp.ok ? resp.json() : null)).then((doc) => {
  if (!doc || !doc.enabled) return;
  const link = document.createElement("a");
  link.id = "sso-login";
  link.className = "button";
  link.href = `${doc.login}?next=${encodeURIComponent(nextPage())}`;
  link.textContent = "Đăng nhập qua SSO / Log in with SSO";
  form.insertBefore(link, error);
}).catch(() => {});
