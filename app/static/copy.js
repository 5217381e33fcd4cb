// Copy buttons: reveal them when the Clipboard API is there, and copy the text of the
// element they name. Without JavaScript the URL stays visible and selectable.
document.addEventListener("DOMContentLoaded", function () {
  if (!navigator.clipboard || !window.isSecureContext) { return; }
  var status = document.getElementById("copy-status");
  document.querySelectorAll("button[data-copy-target]").forEach(function (button) {
    button.hidden = false;
    button.addEventListener("click", function () {
      var source = document.getElementById(button.getAttribute("data-copy-target"));
      if (!source) { return; }
      navigator.clipboard.writeText(source.textContent.trim()).then(function () {
        button.textContent = "Copied";
        if (status) { status.textContent = "Copied to the clipboard."; }
        window.setTimeout(function () {
          button.textContent = "Copy";
          if (status) { status.textContent = ""; }
        }, 2000);
      }, function () {
        if (status) { status.textContent = "Could not copy: select the text and copy it."; }
      });
    });
  });
});
