// The class tracker's figures between two polls: each [data-tick] figure moves by a
// second a second from the value the server rendered (data-seconds), up or down.
// The server's next answer replaces it with the truth; this only keeps it moving.
(function () {
  "use strict";

  function pad(n) {
    return n < 10 ? "0" + n : String(n);
  }

  // Written as soma.classes.tracker writes it: mm:ss, or h:mm:ss and days for a wait.
  function format(seconds, style) {
    seconds = Math.max(0, Math.floor(seconds));
    if (style !== "countdown") {
      return pad(Math.floor(seconds / 60)) + ":" + pad(seconds % 60);
    }
    var days = Math.floor(seconds / 86400);
    var hours = Math.floor((seconds % 86400) / 3600);
    var minutes = Math.floor((seconds % 3600) / 60);
    var rest = pad(minutes) + ":" + pad(seconds % 60);
    if (days) {
      return days + " d " + pad(hours) + ":" + rest;
    }
    return hours ? hours + ":" + rest : rest;
  }

  var rendered = new WeakMap(); // figure -> when this page first saw it

  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-tick]").forEach(function (figure) {
      if (!rendered.has(figure)) {
        rendered.set(figure, now);
        return;
      }
      var base = parseInt(figure.getAttribute("data-seconds"), 10);
      if (isNaN(base)) {
        return;
      }
      var passed = Math.floor((now - rendered.get(figure)) / 1000);
      var value = figure.getAttribute("data-tick") === "down" ? base - passed : base + passed;
      figure.textContent = format(value, figure.getAttribute("data-style"));
    });
  }

  setInterval(tick, 250);
  document.addEventListener("DOMContentLoaded", tick);
})();
