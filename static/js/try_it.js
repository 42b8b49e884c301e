// "Try it": send the edited body through the real prediction URL, with the session's CSRF token.
(function () {
  const form = document.getElementById("try-form");
  if (!form) return;
  const body = document.getElementById("try-body");
  const answer = document.getElementById("try-answer");
  const status = document.getElementById("try-status");
  const button = document.getElementById("try-send");
  const csrf = () => {
    const field = document.querySelector("input[name=csrfmiddlewaretoken]");
    const cookie = document.cookie.split("; ").find((c) => c.startsWith("csrftoken="));
    return cookie ? decodeURIComponent(cookie.split("=")[1]) : field ? field.value : "";
  };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    try { JSON.parse(body.value); } catch (e) {
      status.textContent = "Not valid JSON: " + e.message; status.className = "small error"; return;
    }
    button.disabled = true; status.className = "muted small"; status.textContent = "sending…";
    const started = performance.now();
    fetch(form.dataset.url, {
      method: "POST", credentials: "same-origin", body: body.value,
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrf() },
    }).then(async (r) => {
      const text = await r.text();
      let shown = text;
      try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { /* not JSON: show as is */ }
      answer.textContent = shown; answer.hidden = false;
      answer.className = r.ok ? "ok" : "bad";
      status.className = "small " + (r.ok ? "ok-text" : "error");
      status.textContent = `HTTP ${r.status} in ${Math.round(performance.now() - started)} ms`;
    }).catch((e) => { status.className = "small error"; status.textContent = "request failed: " + e.message; })
      .finally(() => { button.disabled = false; });
  });
})();
