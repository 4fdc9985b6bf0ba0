// Fasten Connect simulator: a stand-in for Fasten's stitch.js. Defines
// <fasten-stitch-element public-id="…" external-id="…" [reconnect-org-connection-id="…"]>
// which renders a button; clicking it opens a small modal where one picks a simulated health
// system and patient and clicks "Log in". It then emits the same `eventBus` DOM events as the
// real widget (detail: {api_mode, event_type, data}); the simulator sends the webhook.
// Script query options: auto_login=1 (no modal: first brand, first patient), detail=string.
(function () {
  "use strict";
  var script = document.currentScript;
  var src = new URL(script ? script.src : "/stitch.js", window.location.href);
  var BASE = src.origin;
  var AUTO_LOGIN = src.searchParams.get("auto_login") === "1";
  var DETAIL_AS_STRING = src.searchParams.get("detail") === "string";

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text) { node.textContent = text; }
    return node;
  }

  class FastenStitchElement extends HTMLElement {
    connectedCallback() {
      if (this._button) { return; }
      this._button = el("button", { type: "button", "class": "fasten-stitch-button" },
        "Connect a health system");
      this._button.addEventListener("click", this.open.bind(this));
      this.appendChild(this._button);
      // Like the real widget, a wrong public id is reported as soon as the element loads.
      var self = this;
      this.fetchCatalog().then(function (result) {
        if (result && !result.ok) {
          self.emit("widget.config_error", { error: result.body.error || "invalid public id" });
        }
      });
    }

    fetchCatalog() {
      return fetch(BASE + "/stitch/catalog?public_id=" + encodeURIComponent(this.publicId()),
        { credentials: "omit" })
        .then(function (response) {
          return response.json().then(function (body) { return { ok: response.ok, body: body }; });
        })
        .catch(function () { return null; });
    }

    emit(eventType, data, apiMode) {
      var detail = { api_mode: apiMode || "test", event_type: eventType, data: data || {} };
      this.dispatchEvent(new CustomEvent("eventBus", {
        detail: DETAIL_AS_STRING ? JSON.stringify(detail) : detail, bubbles: true, composed: true
      }));
    }

    publicId() { return this.getAttribute("public-id") || ""; }

    open() {
      var self = this;
      this.fetchCatalog()
        .then(function (result) {
          if (!result) {
            self.emit("widget.config_error", { error: "simulator unreachable" });
            return;
          }
          if (!result.ok) {
            self.emit("widget.config_error", { error: result.body.error || "invalid public id" });
            return;
          }
          var catalog = result.body;
          if (AUTO_LOGIN) {
            self.login(catalog.api_mode, catalog.brands[0].brand_id, catalog.patients[0].index);
          } else {
            self.showModal(catalog);
          }
        });
    }

    showModal(catalog) {
      var self = this;
      this.closeModal();
      // A backdrop dims and blocks the page behind the dialog, as the real widget does.
      var backdrop = el("div", { "class": "fasten-sim-backdrop",
        style: "position:fixed;inset:0;background:rgba(15,23,42,.55);z-index:9999;" +
               "display:flex;align-items:center;justify-content:center" });
      var modal = el("div", { "class": "fasten-sim-modal", role: "dialog", "aria-modal": "true",
        style: "background:#fff;border-radius:10px;box-shadow:0 12px 40px rgba(0,0,0,.35);" +
               "padding:1.25em 1.5em;min-width:320px;max-width:90vw;font-family:sans-serif;" +
               "display:flex;flex-direction:column;gap:.75em" });
      modal.appendChild(el("h2", {}, "Fasten Connect (simulator)"));
      var brand = el("select", { name: "brand", "aria-label": "Health system" });
      catalog.brands.forEach(function (b) {
        var option = el("option", { value: b.brand_id }, b.name);
        brand.appendChild(option);
      });
      var patient = el("select", { name: "patient", "aria-label": "Patient" });
      catalog.patients.forEach(function (p) {
        patient.appendChild(el("option", { value: String(p.index) }, p.name));
      });
      var label1 = el("label", {}, "Health system ");
      label1.appendChild(brand);
      var label2 = el("label", {}, " Patient ");
      label2.appendChild(patient);
      modal.appendChild(label1);
      modal.appendChild(label2);
      var login = el("button", { type: "button", "class": "fasten-sim-login" }, "Log in");
      var cancel = el("button", { type: "button", "class": "fasten-sim-cancel" }, "Cancel");
      var actions = el("div", { "class": "fasten-sim-actions",
        style: "display:flex;gap:.75em;justify-content:flex-end" });
      login.addEventListener("click", function () {
        self.login(catalog.api_mode, brand.value, parseInt(patient.value, 10));
      });
      cancel.addEventListener("click", function () {
        self.closeModal();
        self.emit("widget.close", {}, catalog.api_mode);
      });
      actions.appendChild(cancel);
      actions.appendChild(login);
      modal.appendChild(actions);
      backdrop.appendChild(modal);
      this._modal = backdrop;
      this.appendChild(backdrop);
    }

    closeModal() {
      if (this._modal) { this._modal.remove(); this._modal = null; }
    }

    login(apiMode, brandId, patientIndex) {
      var self = this;
      this.emit("patient.connection_pending", { brand_id: brandId }, apiMode);
      var body = {
        public_id: this.publicId(),
        external_id: this.getAttribute("external-id") || null,
        external_state: this.getAttribute("external-state") || null,
        brand_id: brandId,
        patient_index: patientIndex,
        reconnect_org_connection_id: this.getAttribute("reconnect-org-connection-id") || null
      };
      fetch(BASE + "/stitch/connect", {
        method: "POST", credentials: "omit",
        headers: { "Content-Type": "application/json" }, body: JSON.stringify(body)
      })
        .then(function (response) {
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.json();
        })
        .then(function (result) {
          self.closeModal();
          self.emit("patient.connection_success", result.connection_success, result.api_mode);
          self.emit("widget.complete", result.widget_complete, result.api_mode);
        })
        .catch(function (err) {
          self.closeModal();
          self.emit("patient.connection_failed", { error: String(err) }, apiMode);
        });
    }
  }

  if (!customElements.get("fasten-stitch-element")) {
    customElements.define("fasten-stitch-element", FastenStitchElement);
  }
})();
