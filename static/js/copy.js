// Copy buttons: <button data-copy="id-of-element">. The Clipboard API needs a secure context
// (https or localhost); elsewhere the text is selected for Ctrl+C and the button says so.
(function () {
  document.querySelectorAll("button[data-copy]").forEach((button) => {
    button.addEventListener("click", () => {
      const el = document.getElementById(button.dataset.copy);
      const status = document.getElementById("copy-status");
      const say = (text) => { button.textContent = text; if (status) status.textContent = ""; };
      const select = () => {
        const range = document.createRange(); range.selectNodeContents(el);
        const sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(el.textContent.trim()).then(() => say("Copied"), () => { select(); say("Press Ctrl+C"); });
      } else { select(); say("Selected: press Ctrl+C"); }
    });
  });
})();
