// Forwards the Stitch widget's events to the backend: on widget.complete the connection's
// ids go to POST /api/connect/complete with the signed link token (never to the console).
(function () {
  "use strict";
  var MESSAGES = {
    "widget.complete": "Connected. Your records will appear below as they arrive.",
    "widget.close": "The widget was closed.",
    "widget.config_error": "The widget is not configured correctly; please contact support.",
    "patient.connection_pending": "Connecting…",
    "patient.connection_success": "Connection authorized.",
    "patient.connection_failed": "The connection failed; you can try again."
  };

  function setStatus(text) {
    var node = document.getElementById("widget-status");
    if (node) { node.textContent = text; }
  }

  function parse(detail) {
    if (typeof detail === "string") {
      try { return JSON.parse(detail); } catch (e) { return null; }
    }
    return detail;
  }

  function complete(token, mode, payload) {
    var data = payload.data || {};
    var body = {
      org_connection_id: data.org_connection_id,
      endpoint_id: data.endpoint_id,
      brand_id: data.brand_id,
      portal_id: data.portal_id,
      platform_type: data.platform_type,
      api_mode: payload.api_mode || mode
    };
    return fetch("/api/connect/complete", {
      method: "POST",
      credentials: "omit",
      headers: { "Content-Type": "application/json", "X-Connect-Token": token },
      body: JSON.stringify(body)
    }).then(function (response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      setStatus(MESSAGES["widget.complete"]);
      document.body.dispatchEvent(new CustomEvent("connect-complete"));
    }).catch(function () {
      setStatus("We could not record this connection; please try again.");
    });
  }

  // "Connect your hospital directly": ask for the EHR's authorize URL (the link token says
  // who the patient is) and open it in a window opened during the click itself.
  function direct(token, institution) {
    var status = document.getElementById("direct-status");
    var popup = window.open("", "_blank");
    fetch("/connect/direct", {
      method: "POST",
      credentials: "omit",
      headers: { "Content-Type": "application/json", "X-Connect-Token": token },
      body: JSON.stringify({ institution: institution })
    }).then(function (response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.json();
    }).then(function (data) {
      if (status) { status.textContent = "Sign in to your hospital's portal in the new window."; }
      if (popup) { popup.opener = null; popup.location.href = data.authorize_url; }
      else { window.location.href = data.authorize_url; }
    }).catch(function () {
      if (popup) { popup.close(); }
      if (status) { status.textContent = "We could not reach this health system; please try again."; }
    });
  }

  function init() {
    var holder = document.getElementById("connection-status");
    var element = document.getElementById("stitch");
    if (!holder || !element) { return; }
    var token = holder.getAttribute("data-token");
    document.addEventListener("click", function (event) {
      var button = event.target.closest ? event.target.closest("button.connect-direct") : null;
      if (button) { direct(token, button.getAttribute("data-institution")); }
    });
    var mode = holder.getAttribute("data-mode");
    setStatus("Ready.");
    element.addEventListener("eventBus", function (event) {
      var payload = parse(event.detail);
      if (!payload || !payload.event_type) { return; }
      if (payload.event_type === "widget.complete") {
        if (payload.data && payload.data.org_connection_id) { complete(token, mode, payload); }
        return;
      }
      if (MESSAGES[payload.event_type]) { setStatus(MESSAGES[payload.event_type]); }
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
