// The shadow section's chart: primary and shadow p50 latency per 5 minutes (Chart.js,
// vendored). The data is rendered into the page; the report is a glance, so no polling.
(function () {
  const canvas = document.getElementById("chart-shadow");
  const data = document.getElementById("shadow-series");
  if (!canvas || !data || typeof Chart === "undefined") return;
  const series = JSON.parse(data.textContent);
  const css = getComputedStyle(document.documentElement);
  const accent = (css.getPropertyValue("--accent") || "#2f5bea").trim();
  const warn = (css.getPropertyValue("--warn") || "#8a5a00").trim();
  const line = (label, values, color) => ({
    label, data: values, borderColor: color, backgroundColor: color, spanGaps: true, pointRadius: 2, tension: 0.2,
  });
  new Chart(canvas, {
    type: "line",
    data: {
      labels: series.labels.map((iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })),
      datasets: [line("primary p50 ms", series.primary_p50, accent), line("shadow p50 ms", series.shadow_p50, warn)],
    },
    options: {
      responsive: true, maintainAspectRatio: false, animation: false,
      interaction: { mode: "index", intersect: false },
      plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
      scales: { y: { beginAtZero: true } },
    },
  });
})();
