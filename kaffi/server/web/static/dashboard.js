// The dashboard's live chart: polls /stats and draws jobs processed and failed per poll
// interval as two SVG lines. Served from this package (no CDN) and loaded as a file, so the
// Content-Security-Policy needs no 'unsafe-inline'. The page works without it.
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var HEIGHT = 180, TOP = 14, BOTTOM = 6, KEPT = 40;
  var width = 600;
  var chart = document.getElementById("live-chart");
  document.documentElement.classList.add("js");
  if (!chart) { return; }
  var svg = document.getElementById("live-svg");
  var status = document.getElementById("live-status");
  var select = document.getElementById("poll-interval");
  var statsUrl = chart.getAttribute("data-stats-url");
  var points = [];
  var last = null;
  var timer = null;

  chart.hidden = false;
  var controls = document.querySelectorAll(".js-only");
  for (var i = 0; i < controls.length; i++) { controls[i].hidden = false; }
  try {
    var saved = window.localStorage.getItem("kaffi.poll");
    if (saved !== null && select.querySelector("option[value='" + saved + "']")) { select.value = saved; }
  } catch (e) { /* storage may be disabled: keep the default */ }

  function element(name, attrs, text) {
    var node = document.createElementNS(SVG, name);
    for (var key in attrs) { node.setAttribute(key, attrs[key]); }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function line(values, peak, cls) {
    var step = width / (KEPT - 1);
    var start = KEPT - values.length;
    var coords = values.map(function (v, n) {
      var x = (start + n) * step;
      var y = TOP + (HEIGHT - TOP - BOTTOM) * (1 - v / peak);
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    return element("polyline", { "class": cls, points: coords.join(" ") });
  }

  function draw() {
    // Draw in the SVG's own pixels, so the labels are not stretched with the chart.
    width = Math.max(svg.clientWidth, 100);
    svg.setAttribute("viewBox", "0 0 " + width + " " + HEIGHT);
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var peak = 1;
    points.forEach(function (p) { peak = Math.max(peak, p.processed, p.failed); });
    var marks = peak >= 2 ? [0, Math.round(peak / 2), peak] : [0, peak];
    marks.forEach(function (mark) {
      var y = TOP + (HEIGHT - TOP - BOTTOM) * (1 - mark / peak);
      svg.appendChild(element("line", { "class": "grid", x1: 0, x2: width, y1: y, y2: y }));
      svg.appendChild(element("text", { "class": "axis-label", x: 4, y: y - 3 }, String(mark)));
    });
    if (points.length > 0) {
      svg.appendChild(line(points.map(function (p) { return p.processed; }), peak, "line-processed"));
      svg.appendChild(line(points.map(function (p) { return p.failed; }), peak, "line-failed"));
    }
    svg.setAttribute("data-points", String(points.length));
  }

  function show(info) {
    var f = info.faktory;
    var values = {
      processed: f.total_processed, failed: f.total_failures, enqueued: f.total_enqueued,
      busy: f.sets.working, scheduled: f.sets.scheduled, retries: f.sets.retries, dead: f.sets.dead
    };
    for (var key in values) {
      var node = document.querySelector("[data-stat='" + key + "']");
      if (node) { node.textContent = String(values[key]); }
    }
    if (last !== null) {
      points.push({
        processed: Math.max(0, f.total_processed - last.processed),
        failed: Math.max(0, f.total_failures - last.failed)
      });
      if (points.length > KEPT) { points.shift(); }
    }
    last = { processed: f.total_processed, failed: f.total_failures };
    draw();
    status.textContent = "updated " + info.server_utc_time;
  }

  function poll() {
    fetch(statsUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(show)
      .catch(function (err) { status.textContent = "cannot reach the server (" + err.message + ")"; });
  }

  function schedule() {
    if (timer !== null) { window.clearInterval(timer); timer = null; }
    var seconds = Number(select.value);
    if (seconds > 0) { timer = window.setInterval(poll, seconds * 1000); }
    else { status.textContent = "paused"; }
  }

  select.addEventListener("change", function () {
    try { window.localStorage.setItem("kaffi.poll", select.value); } catch (e) { /* ignored */ }
    schedule();
  });
  draw();
  poll();
  schedule();
}());
