// The buy page's live total for a custom amount: tokens x the student rate, rounded up to
// the cent as the server rounds. Only an estimate: the server's quote, shown on the next
// page before paying, is the price. Without this script the page works, with no total.
(function () {
  "use strict";

  function cents(total) {
    var dollars = Math.floor(total / 100);
    var rest = String(total % 100);
    return "$" + dollars.toLocaleString("en-US") + "." + (rest.length < 2 ? "0" + rest : rest);
  }

  function setUp() {
    var box = document.getElementById("custom-total");
    var input = document.getElementById("custom_tokens");
    if (!box || !input) {
      return;
    }
    var out = box.querySelector("output");
    var rateCents = parseInt(box.dataset.rateCents, 10);
    var rateTokens = parseInt(box.dataset.rateTokens, 10);
    var min = parseInt(box.dataset.min, 10);
    var max = parseInt(box.dataset.max, 10);
    var custom = document.querySelector('input[name="package"][value="custom"]');

    function update() {
      var typed = input.value.replace(/[\s,]/g, "");
      if (!/^\d{1,7}$/.test(typed)) {
        box.hidden = true;
        out.textContent = "";
        return;
      }
      var tokens = parseInt(typed, 10);
      box.hidden = false;
      if (tokens < min || tokens > max) {
        out.textContent = "Buy between " + min.toLocaleString("en-US") + " and " +
          max.toLocaleString("en-US") + " tokens.";
        return;
      }
      // Whole cents, rounded up: tokens x cents / tokens-per-price, as the server's quote.
      var total = Math.ceil((tokens * rateCents) / rateTokens);
      out.textContent = tokens.toLocaleString("en-US") + " tokens ≈ " + cents(total);
    }

    input.addEventListener("input", function () {
      if (custom && input.value) {
        custom.checked = true; // typing an amount chooses "another amount"
      }
      update();
    });
    // An amount typed before this script ran (a slow connection) chooses "another amount"
    // too, unless the student has since chosen something other than the page's default.
    var chosen = document.querySelector('input[name="package"]:checked');
    if (custom && input.value && input.value !== input.defaultValue &&
        (!chosen || chosen.defaultChecked)) {
      custom.checked = true;
    }
    update();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", setUp);
  } else {
    setUp();
  }
})();
