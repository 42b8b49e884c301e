// Live charts (Chart.js, vendored) and, on the dashboard, the live fragment.
// The section #charts names its JSON endpoint in data-url; the answer is either the series
// itself or {html, series}: html replaces #live (counts, health, deployment cards).
(function () {
  const root = document.getElementById("charts");
  if (!root || typeof Chart === "undefined") return;
  const url = root.dataset.url;
  const interval = parseInt(root.dataset.interval || "10000", 10);
  const live = document.getElementById("live");
  const picker = document.getElementById("chart-deployment");
  const empty = document.getElementById("chart-empty");
  const stamp = document.getElementById("refreshed");
  let series = JSON.parse(document.getElementById("series-data").textContent);
  let range = series.range;

  const css = getComputedStyle(document.documentElement);
  const color = (name, fallback) => (css.getPropertyValue(name) || fallback).trim();
  const accent = color("--accent", "#2f5bea"), bad = color("--bad", "#b42318");
  const warn = color("--warn", "#8a5a00"), muted = color("--muted", "#667085");

  function label(iso) {
    const d = new Date(iso);
    if (range === "hour") return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    if (range === "day") return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return d.toLocaleDateString([], { weekday: "short", hour: "2-digit" });
  }
  const common = {
    responsive: true, maintainAspectRatio: false, animation: false,
    interaction: { mode: "index", intersect: false },
    plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
    scales: { x: { ticks: { maxTicksLimit: 8, color: muted }, grid: { display: false } },
              y: { beginAtZero: true, ticks: { color: muted } } },
  };
  const requests = new Chart(document.getElementById("chart-requests"), {
    type: "bar",
    data: { labels: [], datasets: [
      { label: "requests", data: [], backgroundColor: accent + "99", stack: "calls" },
      { label: "errors", data: [], backgroundColor: bad, stack: "errors" },
    ] },
    options: common,
  });
  const latency = new Chart(document.getElementById("chart-latency"), {
    type: "line",
    data: { labels: [], datasets: [
      { label: "p50", data: [], borderColor: accent, backgroundColor: accent, spanGaps: true, pointRadius: 2, tension: 0.2 },
      { label: "p95", data: [], borderColor: warn, backgroundColor: warn, spanGaps: true, pointRadius: 2, tension: 0.2 },
      { label: "p99", data: [], borderColor: bad, backgroundColor: bad, spanGaps: true, pointRadius: 2, tension: 0.2 },
    ] },
    options: common,
  });

  function draw(s) {
    series = s; range = s.range;
    const labels = s.labels.map(label);
    requests.data.labels = labels;
    requests.data.datasets[0].data = s.requests;
    requests.data.datasets[1].data = s.errors;
    latency.data.labels = labels;
    latency.data.datasets[0].data = s.p50;
    latency.data.datasets[1].data = s.p95;
    latency.data.datasets[2].data = s.p99;
    requests.update(); latency.update();
    if (empty) empty.hidden = s.total_requests > 0;
    root.querySelectorAll("[data-range]").forEach((b) => b.classList.toggle("active", b.dataset.range === range));
  }

  let timer = null;
  function poll() {
    clearTimeout(timer);
    const params = new URLSearchParams({ range: range, deployment: picker ? picker.value : "" });
    fetch(url + "?" + params, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then((r) => { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then((data) => {
        if (data.html !== undefined && live) live.innerHTML = data.html;
        draw(data.series || data);
        if (stamp) stamp.textContent = "live · updated " + new Date().toLocaleTimeString();
        const query = new URLSearchParams(window.location.search);
        query.set("range", range);
        if (picker && picker.tagName === "SELECT") { if (picker.value) query.set("deployment", picker.value); else query.delete("deployment"); }
        history.replaceState(null, "", "?" + query);
      })
      .catch(() => { if (stamp) stamp.textContent = "live · update failed, retrying"; })
      .finally(() => { timer = setTimeout(poll, document.hidden ? interval * 3 : interval); });
  }

  root.querySelectorAll("[data-range]").forEach((b) => b.addEventListener("click", () => { range = b.dataset.range; poll(); }));
  if (picker && picker.tagName === "SELECT") picker.addEventListener("change", poll);
  draw(series);
  timer = setTimeout(poll, interval);
})();
