// A stand-in for Fasten's stitch.js in browser tests without the simulator: the element
// renders one button; a click emits the eventBus events a real connection would.
class FakeStitchElement extends HTMLElement {
  connectedCallback() {
    const button = document.createElement("button");
    button.id = "fake-stitch-connect";
    button.textContent = "Connect a health system";
    button.addEventListener("click", () => {
      const emit = (eventType, data, asString) => {
        const detail = { api_mode: "test", event_type: eventType, data: data };
        this.dispatchEvent(new CustomEvent("eventBus", {
          detail: asString ? JSON.stringify(detail) : detail, bubbles: true
        }));
      };
      emit("patient.connection_pending", {}, false);
      emit("widget.complete", {
        org_connection_id: "org-browser-" + this.getAttribute("external-id"),
        endpoint_id: "ep-browser", brand_id: "br-browser", portal_id: "po-browser",
        platform_type: "athena"
      }, true);
    });
    this.appendChild(button);
  }
}
customElements.define("fasten-stitch-element", FakeStitchElement);
