// The goverse admin dashboard: polls api/dashboard and draws what it says.
// No library and no network beyond this admin's own JSON endpoints.
"use strict";

(function () {
  var REFRESH_MS = 3000;
  var PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
                 "#b07aa1", "#ff9da7", "#9c755f", "#86bcb6", "#8cd17d", "#d37295"];
  var UNOWNED = "#c9ced8";

  // Script errors land in #errors, so a page test can read them from the DOM.
  function recordError(message) {
    var box = document.getElementById("errors");
    if (!box) { return; }
    var line = document.createElement("div");
    line.textContent = message;
    box.appendChild(line);
    box.setAttribute("data-count", String(box.childNodes.length));
  }
  window.addEventListener("error", function (event) {
    recordError("error: " + event.message + " (" + event.filename + ":" + event.lineno + ")");
  });
  window.addEventListener("unhandledrejection", function (event) {
    recordError("unhandled rejection: " + event.reason);
  });

  function colorOf(index) {
    if (index < 0) { return UNOWNED; }
    if (index < PALETTE.length) { return PALETTE[index]; }
    return "hsl(" + ((index * 137.508) % 360).toFixed(1) + ", 55%, 55%)";
  }

  function cell(row, text, className) {
    var td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "—" : String(text);
    if (className) { td.className = className; }
    row.appendChild(td);
    return td;
  }

  function clearBody(tableId) {
    var body = document.querySelector("#" + tableId + " tbody");
    while (body.firstChild) { body.removeChild(body.firstChild); }
    return body;
  }

  function seconds(value) {
    if (value === null || value === undefined) { return null; }
    if (value < 120) { return value.toFixed(1) + " s"; }
    if (value < 7200) { return (value / 60).toFixed(1) + " min"; }
    return (value / 3600).toFixed(1) + " h";
  }

  function renderHeader(data) {
    var status = data.status || {};
    document.getElementById("mode").textContent =
      data.mode === "cluster" ? "cluster" : "node " + status.address;
    var readiness = document.getElementById("readiness");
    var ready = data.ready && data.ready.ready;
    readiness.textContent = ready ? "ready" : "not ready: " + (data.ready ? data.ready.reason : "?");
    readiness.className = "badge " + (ready ? "ok" : "bad");
    document.getElementById("summary").textContent =
      data.nodes.length + " nodes, " + data.shards.num_shards + " shards, leader " +
      (status.leader || "none");
    document.getElementById("updated").textContent =
      "updated " + new Date().toLocaleTimeString();
  }

  function renderNodes(nodes) {
    var body = clearBody("nodes");
    nodes.forEach(function (node) {
      var row = document.createElement("tr");
      row.setAttribute("data-node", node.address);
      cell(row, node.address + (node.this_node ? " (this node)" : ""));
      cell(row, node.role);
      cell(row, node.shards_owned);
      cell(row, node.shards_targeted);
      cell(row, node.objects);
      cell(row, seconds(node.uptime_seconds));
      cell(row, node.pid);
      var problems = [];
      if (node.error) problems.push(node.error);
      if (node.unreachable_to && node.unreachable_to.length) {
        problems.push((node.suspect ? "suspect: " : "") + "unreachable to " +
                      node.unreachable_to.join(", "));
      }
      var problem = problems.join("; ");
      cell(row, problem, problem ? "problem-cell" : "");
      body.appendChild(row);
    });
  }

  function renderShards(shards) {
    var canvas = document.getElementById("shard-map");
    var owners = shards.owners || [];
    var count = owners.length;
    var columns = Math.max(1, Math.min(128, Math.ceil(Math.sqrt(count * 2))));
    var size = Math.max(2, Math.floor(768 / columns));
    var rows = Math.max(1, Math.ceil(count / columns));
    canvas.width = columns * size;
    canvas.height = rows * size;
    var ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    for (var shard = 0; shard < count; shard++) {
      ctx.fillStyle = colorOf(owners[shard]);
      ctx.fillRect((shard % columns) * size, Math.floor(shard / columns) * size,
                   size > 3 ? size - 1 : size, size > 3 ? size - 1 : size);
    }
    canvas.setAttribute("data-shards", String(count));
    canvas.setAttribute("data-drawn", String(count));
    canvas.setAttribute("data-nodes", String(shards.nodes.length));

    document.getElementById("shard-summary").textContent =
      count + " shards, " + shards.unowned + " without a live owner, " +
      shards.moving + " moving";
    renderLegend(shards);
  }

  function renderLegend(shards) {
    var legend = document.getElementById("shard-legend");
    while (legend.firstChild) { legend.removeChild(legend.firstChild); }
    var entries = shards.nodes.map(function (address, index) {
      var counts = shards.per_node ? shards.per_node[address] : null;
      return [address, colorOf(index), counts ? counts.owned : null];
    });
    entries.push(["no live owner", UNOWNED, shards.unowned]);
    entries.forEach(function (entry) {
      var item = document.createElement("li");
      item.setAttribute("data-owner", entry[0]);
      var swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = entry[1];
      item.appendChild(swatch);
      var label = document.createElement("span");
      label.textContent = entry[0] + (entry[2] === null ? "" : " (" + entry[2] + ")");
      item.appendChild(label);
      legend.appendChild(item);
    });
  }

  function renderObjects(nodes) {
    var body = clearBody("objects-by-type");
    nodes.forEach(function (node) {
      var types = node.objects_by_type;
      if (!types) {
        var row = document.createElement("tr");
        cell(row, node.address);
        cell(row, node.error ? "(no answer)" : "(not known here)");
        cell(row, node.objects);
        body.appendChild(row);
        return;
      }
      Object.keys(types).forEach(function (type) {
        var typeRow = document.createElement("tr");
        typeRow.setAttribute("data-node", node.address);
        cell(typeRow, node.address);
        cell(typeRow, type);
        cell(typeRow, types[type]);
        body.appendChild(typeRow);
      });
    });
  }

  function renderFailures(failures, mode) {
    var body = clearBody("failures");
    if (!failures.length) {
      var empty = document.createElement("tr");
      var td = cell(empty, mode === "cluster"
        ? "operations are recorded on the node that started them (see its embedded admin)"
        : "none recorded", "muted");
      td.colSpan = 5;
      body.appendChild(empty);
      return;
    }
    failures.forEach(function (op) {
      var row = document.createElement("tr");
      cell(row, op.id);
      cell(row, op.kind);
      cell(row, op.object_id);
      cell(row, op.error, "problem-cell");
      cell(row, seconds(op.elapsed_seconds));
      body.appendChild(row);
    });
  }

  function render(data) {
    renderHeader(data);
    renderNodes(data.nodes);
    renderShards(data.shards);
    renderObjects(data.nodes);
    renderFailures(data.failures || [], data.mode);
  }

  function showProblem(text) {
    var box = document.getElementById("fetch-problem");
    box.hidden = !text;
    box.textContent = text || "";
  }

  function refresh() {
    return fetch("api/dashboard", {cache: "no-store"}).then(function (response) {
      return response.json().then(function (body) {
        if (!response.ok) {
          throw new Error(body.error || ("HTTP " + response.status));
        }
        return body;
      });
    }).then(function (data) {
      render(data);
      showProblem(null);
    }, function (problem) {
      // The admin being unreachable is expected trouble, not a page error.
      showProblem("could not refresh: " + problem.message);
    }).then(function () {
      window.setTimeout(refresh, REFRESH_MS);
    });
  }

  document.addEventListener("DOMContentLoaded", refresh);
})();
