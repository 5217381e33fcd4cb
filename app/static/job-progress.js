// Live progress of a deprovisioning job: poll the job's progress JSON and update the
// <progress> bar, its ARIA values and the counts, until the job has finished. Without
// JavaScript the page shows the numbers as they were when it loaded.
document.addEventListener("DOMContentLoaded", function () {
  var root = document.getElementById("job");
  if (!root || root.getAttribute("data-finished") === "true") { return; }
  var url = root.getAttribute("data-progress-url");
  var bar = document.getElementById("job-progress");
  var live = document.getElementById("job-live");
  var cancelForm = document.getElementById("cancel-form");
  var POLL_MS = 1000;
  var failures = 0;

  function setField(name, value) {
    root.querySelectorAll('[data-field="' + name + '"]').forEach(function (element) {
      element.textContent = value;
    });
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) { return "—"; }
    seconds = Math.round(seconds);
    if (seconds < 60) { return seconds + " s"; }
    var minutes = Math.floor(seconds / 60);
    if (minutes < 60) { return minutes + " min " + (seconds % 60) + " s"; }
    return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }

  function show(data) {
    var total = data.total || 0;
    bar.max = total || 1;
    bar.value = total ? data.processed : 1;
    bar.setAttribute("aria-valuemax", String(total));
    bar.setAttribute("aria-valuenow", String(data.processed));
    bar.setAttribute("aria-valuetext",
      data.percent + "% (" + data.processed + " of " + total + ")");
    bar.textContent = data.percent + "%";
    setField("percent", String(data.percent));
    setField("processed", String(data.processed));
    setField("total", String(total));
    ["done", "failed", "skipped", "cancelled", "status"].forEach(function (name) {
      setField(name, String(data[name]));
    });
    setField("rate", data.rate === null ? "—" : String(data.rate));
    setField("eta", data.finished ? "none" : duration(data.eta_seconds));
  }

  function finish(data) {
    root.setAttribute("data-finished", "true");
    // Nothing left to cancel (removed, not hidden: the form's own CSS would show it).
    if (cancelForm) { cancelForm.remove(); }
    // Announced once, not at every poll: screen readers read the bar's value on demand.
    live.textContent = "Finished: " + data.status + ". Reload the page to see every user's outcome.";
  }

  function poll() {
    fetch(url, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (data) {
        failures = 0;
        show(data);
        if (data.finished) { finish(data); } else { window.setTimeout(poll, POLL_MS); }
      })
      .catch(function () {
        // A restarting server or a dropped connection: keep trying, more slowly.
        failures += 1;
        live.textContent = "Progress could not be loaded; trying again.";
        window.setTimeout(poll, Math.min(POLL_MS * Math.pow(2, failures), 30000));
      });
  }

  poll();
});
