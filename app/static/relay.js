// Finishes a form_post sign-in: re-submits the identity provider's answer from this origin,
// so the browser sends Keyward's SameSite=Lax session cookie with it.
document.addEventListener("DOMContentLoaded", function () {
  var form = document.getElementById("relay-form");
  if (form) { form.submit(); }
});
