// Draws the overview charts from the JSON the server embedded in the page.
(function () {
  "use strict";
  var node = document.getElementById("chart-data");
  if (!node || typeof Chart === "undefined") { return; }
  var data = JSON.parse(node.textContent);
  var palette = ["#2f6fde", "#1f8a4c", "#b7791f", "#c53030", "#6b46c1", "#0e7490", "#be185d", "#4b5563"];
  var color = function (i) { return palette[i % palette.length]; };
  var STATUS_COLORS = {
    complete: "#1f8a4c", partial: "#b7791f", failed: "#c53030", timed_out: "#dd6b20",
    expired: "#9b2c2c", cancelled: "#6b7280", requested: "#93b4f0", pending: "#2f6fde",
    downloading: "#0e7490", ingesting: "#6b46c1"
  };
  var statusColor = function (s, i) { return STATUS_COLORS[s] || color(i); };
  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  Chart.defaults.maintainAspectRatio = false;
  Chart.defaults.animation = false;

  function empty(config) {
    return config.data.datasets.every(function (set) {
      return set.data.every(function (v) { return !v; });
    });
  }

  function draw(id, config) {
    var canvas = document.getElementById(id);
    if (!canvas) { return; }
    if (empty(config)) {
      var note = document.createElement("p");
      note.className = "muted empty-chart";
      note.textContent = "Nothing in this period.";
      canvas.replaceWith(note);
      return;
    }
    new Chart(canvas, config);
  }

  var d = data.deliveries;
  draw("chart-deliveries", {
    type: "bar",
    data: {
      labels: d.labels,
      datasets: d.series.map(function (s, i) { return { label: s.name, data: s.values, backgroundColor: color(i), stack: "all" }; })
    },
    options: { scales: { x: { stacked: true, ticks: { maxTicksLimit: 16 } }, y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } },
               plugins: { legend: { position: "bottom" } } }
  });
  draw("chart-exports", {
    type: "doughnut",
    data: { labels: data.exports.labels, datasets: [{ data: data.exports.values, backgroundColor: data.exports.labels.map(statusColor) }] },
    options: { plugins: { legend: { position: "right" } } }
  });
  draw("chart-histogram", {
    type: "bar",
    data: { labels: data.histogram.labels, datasets: [{ label: "exports", data: data.histogram.values, backgroundColor: color(0) }] },
    options: { plugins: { legend: { display: false } }, scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } }
  });
  draw("chart-failures", {
    type: "bar",
    data: { labels: data.failures.labels, datasets: [{ label: "count", data: data.failures.values, backgroundColor: color(3) }] },
    options: { indexAxis: "y", plugins: { legend: { display: false } }, scales: { x: { beginAtZero: true, ticks: { precision: 0 } } } }
  });
})();

// Copy buttons: <button data-copy-target="ID"> copies the href (or text) of element ID.
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("[data-copy-target]") : null;
    if (!button) { return; }
    var target = document.getElementById(button.getAttribute("data-copy-target"));
    if (!target || !navigator.clipboard) { return; }
    var text = target.getAttribute("href") || target.textContent;
    navigator.clipboard.writeText(text).then(function () {
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = "Copy"; }, 2000);
    });
  });
})();
