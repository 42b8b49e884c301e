// The deployment page follows its deployment: state, version, buttons, stat cards, latest
// calls, replicas, rollout, history and build log are re-rendered by the server (deployment_status)
// and swapped in place. Fast while work is in progress, slower when settled, slower still in
// a hidden tab. The buttons and the build log are swapped only when they changed, so a
// version being picked or a log being read is left alone.
(function () {
  const script = document.getElementById("deployment-js");
  if (!script) return;
  const url = script.dataset.url;
  const busy = ["pending", "building", "starting", "stopping"];
  const FAST = 1000, SETTLED = 3000;
  const parts = {
    summary: document.getElementById("live-summary"),
    actions: document.getElementById("live-actions"),
    stats: document.getElementById("call-stats"),
    calls: document.getElementById("latest-calls"),
    replicas: document.getElementById("replicas"),
    events: document.getElementById("events"),
    build: document.getElementById("live-build"),
    rollout: document.getElementById("live-rollout"),
  };
  const keyed = { actions: "actions_key", build: "build_key" };

  function logToEnd() {
    const log = document.getElementById("build-log");
    if (log) log.scrollTop = log.scrollHeight;
  }

  function apply(data) {
    Object.entries(parts).forEach(([name, el]) => {
      const html = data.html[name];
      if (!el || html === undefined) return;
      const keyName = keyed[name];
      if (keyName) {
        if (el.dataset.key === data[keyName]) return;
        el.dataset.key = data[keyName];
      }
      el.innerHTML = html;
      if (name === "build") logToEnd();
    });
    document.body.dataset.state = data.state;
    document.body.dataset.version = data.version;
  }

  let timer = null;
  let state = (document.getElementById("state") || {}).textContent || "";
  function poll() {
    clearTimeout(timer);
    const shown = new URLSearchParams();
    Object.entries(keyed).forEach(([name]) => { if (parts[name]) shown.set(name, parts[name].dataset.key || ""); });
    fetch(url + "?" + shown, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then((r) => { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then((data) => { apply(data); state = data.state; })
      .catch(() => { /* keep what is shown; try again */ })
      .finally(() => {
        const wait = busy.includes(state.trim()) ? FAST : SETTLED;
        timer = setTimeout(poll, document.hidden ? wait * 5 : wait);
      });
  }
  // After a command (the page was just redirected here), look again soon.
  document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(); });
  logToEnd();
  timer = setTimeout(poll, busy.includes(state.trim()) ? FAST : SETTLED);
})();
