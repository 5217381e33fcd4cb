// The provider form: callback URLs follow the scheme as it is typed, the client secret stays
// locked until "Replace the client secret" is ticked, and only the chosen protocol's settings
// show. Without JavaScript every input works and the server applies the same rules.
document.addEventListener("DOMContentLoaded", function () {
  var scheme = document.querySelector("[data-scheme-input]");
  if (scheme) {
    var update = function () {
      var value = scheme.value.trim() || "{scheme}";
      document.querySelectorAll("[data-callback-prefix]").forEach(function (el) {
        el.textContent = el.getAttribute("data-callback-prefix") + value +
          (el.getAttribute("data-callback-suffix") || "");
      });
    };
    scheme.addEventListener("input", update);
  }

  document.querySelectorAll("[data-secret-lock]").forEach(function (lock) {
    var input = document.getElementById(lock.getAttribute("data-secret-lock"));
    if (!input) { return; }
    var apply = function () {
      // A disabled input is not submitted: the stored secret is kept.
      input.disabled = !lock.checked;
      if (!lock.checked) { input.value = ""; }
    };
    lock.addEventListener("change", function () {
      apply();
      if (lock.checked) { input.focus(); }
    });
    apply();
  });

  var protocol = document.querySelector("[data-protocol-select]");
  if (protocol) {
    var show = function () {
      document.querySelectorAll("fieldset[data-protocol]").forEach(function (set) {
        // data-protocol lists the protocols a fieldset belongs to ("oidc oauth2").
        set.hidden = set.getAttribute("data-protocol").split(" ").indexOf(protocol.value) < 0;
      });
    };
    protocol.addEventListener("change", show);
    show();
  }
});
