// Sluice web UI: live updates over server-sent events, and small conveniences.
// No framework: each feature looks for its data attribute on the page.
(function () {
  "use strict";

  function status(text, on) {
    var el = document.getElementById("live-status");
    if (!el) return;
    el.hidden = false;
    el.textContent = text;
    el.classList.toggle("on", !!on);
  }

  function listen(url, handlers) {
    var source = new EventSource(url);
    source.onopen = function () { status("live", true); };
    source.onerror = function () { status("reconnecting…", false); };
    Object.keys(handlers).forEach(function (name) {
      source.addEventListener(name, function (e) { handlers[name](JSON.parse(e.data)); });
    });
    return source;
  }

  function fromHTML(html) {
    var t = document.createElement("template");
    t.innerHTML = html.trim();
    return t.content.firstElementChild;
  }

  // Confirm before a destructive form is sent.
  document.addEventListener("submit", function (e) {
    var msg = e.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) e.preventDefault();
  });

  // The runs table: rows change in place; new matching runs appear on top.
  var runs = document.getElementById("runs");
  if (runs) {
    var body = runs.querySelector("tbody");
    listen(runs.getAttribute("data-live"), {
      run: function (d) {
        var row = fromHTML("<table><tbody>" + d.html + "</tbody></table>").querySelector("tr");
        var old = body.querySelector('tr[data-run-id="' + d.id + '"]');
        if (old) {
          if (old.getAttribute("data-state") !== row.getAttribute("data-state")) row.classList.add("flash");
          old.replaceWith(row);
        } else if (d.insert) {
          row.classList.add("flash");
          body.insertBefore(row, body.firstElementChild);
          var empty = body.querySelector("tr.empty");
          if (empty) empty.hidden = true;
        }
      },
      failed: function (d) { status("live view stopped: " + d.message, false); }
    });
  }

  // One run: its panel is fetched again when it changes; log lines stream in.
  var detail = document.getElementById("run-detail");
  if (detail) {
    var logs = document.getElementById("logs");
    var count = document.getElementById("log-count");
    var lines = 0;
    var timer = null;
    var refresh = function () {
      timer = null;
      fetch(detail.getAttribute("data-part"), { headers: { "Accept": "text/html" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) { if (html !== null) detail.innerHTML = html; });
    };
    listen(detail.getAttribute("data-live"), {
      changed: function () { if (!timer) timer = setTimeout(refresh, 150); },
      reset: function () {
        lines = 0;
        logs.innerHTML = '<div class="log-empty muted">No log lines yet.</div>';
        count.textContent = "";
      },
      log: function (d) {
        var atBottom = logs.scrollHeight - logs.scrollTop - logs.clientHeight < 40;
        var empty = logs.querySelector(".log-empty");
        if (empty) empty.remove();
        logs.appendChild(fromHTML(d.html));
        lines += 1;
        count.textContent = lines + (lines === 1 ? " line" : " lines");
        if (atBottom) logs.scrollTop = logs.scrollHeight;
      },
      failed: function (d) { status("live view stopped: " + d.message, false); }
    });
  }

  // Tables that are simply read again every few seconds (runners, deployments).
  document.querySelectorAll("[data-refresh]").forEach(function (el) {
    status("refreshing every 5s", true);
    setInterval(function () {
      fetch(el.getAttribute("data-refresh"))
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) { if (html !== null) el.innerHTML = html; })
        .catch(function () { status("stack unreachable", false); });
    }, 5000);
  });
})();
