// Upload with a progress bar: XHR reports upload progress, fetch does not.
(function () {
  const form = document.getElementById("upload-form");
  if (!form) return;
  const drop = document.getElementById("dropzone");
  const input = form.querySelector("input[type=file]");
  const bar = document.getElementById("progress");
  const button = document.getElementById("upload-button");
  ["dragenter", "dragover"].forEach((e) => drop.addEventListener(e, (ev) => { ev.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((e) => drop.addEventListener(e, (ev) => { ev.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (ev) => { if (ev.dataTransfer.files.length) input.files = ev.dataTransfer.files; });

  function showErrors(errors) {
    form.querySelectorAll(".errorlist").forEach((ul) => (ul.innerHTML = ""));
    Object.entries(errors || {}).forEach(([field, list]) => {
      const ul = form.querySelector(`[data-for="${field}"]`) || document.getElementById("form-errors");
      list.forEach((e) => { const li = document.createElement("li"); li.textContent = e.message || e; ul.appendChild(li); });
    });
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.action || window.location.href);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) { bar.hidden = false; bar.value = Math.round((100 * e.loaded) / e.total); }
    });
    xhr.onload = () => {
      button.disabled = false;
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (_) { body = { errors: { __all__: ["The server answered " + xhr.status + "."] } }; }
      if (xhr.status < 300 && body.redirect) { window.location = body.redirect; return; }
      bar.hidden = true;
      showErrors(body.errors);
    };
    xhr.onerror = () => { button.disabled = false; showErrors({ __all__: ["The upload failed: network error."] }); };
    button.disabled = true;
    xhr.send(new FormData(form));
  });
})();
