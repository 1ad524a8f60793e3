// Sign-up: fill the hidden time_zone field with the browser's IANA zone (a guess the
// server checks; without this script the account starts in UTC, changed at /account).
(function () {
  "use strict";
  function fill() {
    var zone = "";
    try {
      zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
    } catch (error) {
      return;
    }
    document.querySelectorAll("input[data-browser-time-zone]").forEach(function (input) {
      input.value = zone;
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", fill);
  } else {
    fill();
  }
})();
