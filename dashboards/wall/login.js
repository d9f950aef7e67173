// The login page: user name and password to /api/auth/login (a session cookie comes back), then on to the
// page that sent us here (?next=, only a path on this site).
const form = document.getElementById("login-form");
const error = document.getElementById("login-error");

function nextPage() {
  const next = new URLSearchParams(location.search).get("next") || "/ops";
  return next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/\\") ? next : "/ops";
}

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  error.textContent = "";
  const body = { username: form.username.value.trim(), password: form.password.value };
  try {
    const resp = await fetch("/api/auth/login", {
      method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (resp.ok) {
      location.assign(nextPage());
      return;
    }
    const doc = await resp.json().catch(() => ({}));
    error.textContent = resp.status === 429 ? "Quá nhiều lần thử / Too many attempts: wait a minute"
      : `Sai tên đăng nhập hoặc mật khẩu / ${typeof doc.detail === "string" ? doc.detail : "login failed"}`;
  } catch (err) {
    error.textContent = `Lỗi mạng / Network error: ${err.message}`;
  }
  form.password.value = "";
  form.password.focus();
});

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
