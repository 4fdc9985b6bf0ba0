// The source console's page script: reads a fragment-mode authorization response and posts
// it to the console (the fragment never reaches a server otherwise), and reveals a token on
// request.
(function () {
  "use strict";

  function fragmentCallback(box) {
    var status = document.getElementById("callback-status");
    var params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    var body = {};
    ["code", "state", "error", "error_description"].forEach(function (name) {
      if (params.get(name) !== null) { body[name] = params.get(name); }
    });
    // Drop the code from the address bar and history.
    history.replaceState(null, "", window.location.pathname);
    if (!body.code && !body.error) {
      status.textContent = "The redirect carried no authorization response.";
      return;
    }
    fetch("/callback", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.json().then(function (data) { return { ok: response.ok, data: data }; });
    }).then(function (answer) {
      if (answer.ok && answer.data.next) { window.location.replace(answer.data.next); return; }
      status.textContent = "Not authorized: " + (answer.data.error || "unknown error");
      status.id = "error";
    }).catch(function () { status.textContent = "The console could not be reached."; });
  }

  function reveal(button) {
    var target = document.getElementById(button.getAttribute("data-target"));
    fetch(button.getAttribute("data-url"), { credentials: "same-origin" })
      .then(function (response) { return response.text(); })
      .then(function (text) { target.textContent = text; button.disabled = true; });
  }

  function init() {
    var box = document.getElementById("callback");
    if (box) { fragmentCallback(box); }
    document.querySelectorAll("button.reveal").forEach(function (button) {
      button.addEventListener("click", function () { reveal(button); });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
