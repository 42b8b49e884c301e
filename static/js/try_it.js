// "Try it": send the edited body through the real prediction URL, with the session's CSRF token.
(function () {
  const form = document.getElementById("try-form");
  if (!form) return;
  const body = document.getElementById("try-body");
  const answer = document.getElementById("try-answer");
  const status = document.getElementById("try-status");
  const button = document.getElementById("try-send");
  const explain = document.getElementById("try-explain");
  const explained = document.getElementById("try-explanations");
  const cell = (tag, text, cls) => {
    const el = document.createElement(tag);
    el.textContent = text;
    if (cls) el.className = cls;
    return el;
  };
  // One table per explained row: contributions, largest first, with a bar each.
  const showExplanations = (doc) => {
    explained.replaceChildren();
    const rows = doc && doc.explanations;
    explained.hidden = !rows;
    if (!rows) return;
    const info = doc.explainer || {};
    explained.appendChild(cell("p", `${info.method} (${info.exact ? "exact" : "estimate"}) of ${info.output}`, "muted small"));
    rows.forEach((row, i) => {
      const entries = Object.entries(row.contributions).sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
      const top = Math.max(...entries.map((e) => Math.abs(e[1])), 1e-12);
      const table = document.createElement("table");
      table.className = "table small explain-table";
      const head = `row ${i}` + ("class" in row ? `, class ${row.class}` : "") +
        `: base ${row.base_value.toPrecision(4)} → output ${row.output.toPrecision(4)}`;
      table.appendChild(cell("caption", head));
      entries.forEach(([name, value]) => {
        const tr = document.createElement("tr");
        tr.appendChild(cell("td", name));
        tr.appendChild(cell("td", (value >= 0 ? "+" : "") + value.toPrecision(3), "num"));
        const bar = cell("td", "");
        const span = cell("span", "", value >= 0 ? "bar pos" : "bar neg");
        span.style.display = "inline-block";
        span.style.height = "0.7em";
        span.style.width = `${Math.round((100 * Math.abs(value)) / top)}px`;
        span.style.background = value >= 0 ? "#2f7d4f" : "#b3402a";
        bar.appendChild(span);
        tr.appendChild(bar);
        table.appendChild(tr);
      });
      explained.appendChild(table);
    });
  };
  const csrf = () => {
    const field = document.querySelector("input[name=csrfmiddlewaretoken]");
    const cookie = document.cookie.split("; ").find((c) => c.startsWith("csrftoken="));
    return cookie ? decodeURIComponent(cookie.split("=")[1]) : field ? field.value : "";
  };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    let sent = body.value;
    try {
      const doc = JSON.parse(body.value);
      if (explain && explain.checked && doc && typeof doc === "object" && !Array.isArray(doc)) {
        doc.params = Object.assign({}, doc.params, { explain: true });
        sent = JSON.stringify(doc);
      }
    } catch (e) {
      status.textContent = "Not valid JSON: " + e.message; status.className = "small error"; return;
    }
    button.disabled = true; status.className = "muted small"; status.textContent = "sending…";
    const started = performance.now();
    fetch(form.dataset.url, {
      method: "POST", credentials: "same-origin", body: sent,
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrf() },
    }).then(async (r) => {
      const text = await r.text();
      let shown = text;
      let parsed = null;
      try { parsed = JSON.parse(text); shown = JSON.stringify(parsed, null, 2); } catch (e) { /* not JSON: show as is */ }
      showExplanations(r.ok ? parsed : null);
      answer.textContent = shown; answer.hidden = false;
      answer.className = r.ok ? "ok" : "bad";
      status.className = "small " + (r.ok ? "ok-text" : "error");
      status.textContent = `HTTP ${r.status} in ${Math.round(performance.now() - started)} ms`;
    }).catch((e) => { status.className = "small error"; status.textContent = "request failed: " + e.message; })
      .finally(() => { button.disabled = false; });
  });
})();
