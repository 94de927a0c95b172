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

  // A session that ended while the page was open: reloading leads to the login page.
  function loggedOut(response) {
    if (response.status !== 401) return false;
    location.reload();
    return true;
  }

  function fromHTML(html) {
    var t = document.createElement("template");
    t.innerHTML = html.trim();
    return t.content.firstElementChild;
  }

  // Times come as UTC <time> elements; show them in the browser's zone, UTC on hover.
  function pad(n, w) { n = String(n); while (n.length < (w || 2)) n = "0" + n; return n; }
  function localTimes(root) {
    (root || document).querySelectorAll("time[datetime]:not([data-local])").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d.getTime())) return;
      var clock = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
      if (el.hasAttribute("data-precise")) clock += "." + pad(d.getMilliseconds(), 3);
      el.textContent = el.hasAttribute("data-clock") ? clock
        : d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + clock;
      el.setAttribute("data-local", "1");
    });
  }
  localTimes();
  new MutationObserver(function () { localTimes(); })
    .observe(document.body, { childList: true, subtree: true });

  // Stale: while the stack (or this server) cannot be reached, say so and turn buttons off.
  var staleBanner = document.getElementById("stale");
  var stale = false;
  function setStale(on) {
    if (on === stale) return;
    stale = on;
    staleBanner.hidden = !on;
    document.body.classList.toggle("stale", on);
    document.querySelectorAll("form[method=post] button, a.button.primary").forEach(function (b) {
      if (b.closest("form.logout")) return;
      if (b.tagName === "BUTTON") b.disabled = on;
      else b.setAttribute("aria-disabled", on ? "true" : "false");
    });
    if (on) status("stack unreachable", false);
  }
  function checkStack() {
    fetch("/stack", { cache: "no-store" })
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (d) {
          staleBanner.title = d.problem || "";
          setStale(!r.ok);
        });
      })
      .catch(function () { staleBanner.title = "this server does not answer"; setStale(true); });
  }
  setInterval(checkStack, 4000);
  new MutationObserver(function () { if (stale) { stale = false; setStale(true); } })
    .observe(document.querySelector("main"), { childList: true, subtree: true });

  // An event stream that reopens itself (with a fresh URL) after an error.
  function listen(url, handlers) {
    var source = null;
    function open() {
      source = new EventSource(typeof url === "function" ? url() : url);
      source.onopen = function () { status("live", true); checkStack(); };
      source.onerror = function () {
        status("reconnecting…", false);
        checkStack();
        source.close();
        setTimeout(open, 2000);
      };
      Object.keys(handlers).forEach(function (name) {
        source.addEventListener(name, function (e) { handlers[name](JSON.parse(e.data)); });
      });
    }
    open();
  }

  // Confirm before a destructive form is sent; nothing is sent while stale.
  document.addEventListener("submit", function (e) {
    if (stale && !e.target.classList.contains("logout") && e.target.method === "post") {
      e.preventDefault();
      return;
    }
    var msg = e.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) e.preventDefault();
  });
  document.addEventListener("click", function (e) {
    var a = e.target.closest && e.target.closest("a[aria-disabled=true]");
    if (a) e.preventDefault();
  });

  // A new matching run: one more in the heading and in the current tab.
  function countOneMore() {
    var total = document.getElementById("run-total");
    if (total) {
      var n = parseInt(total.textContent, 10) + 1;
      total.textContent = n + (n === 1 ? " run" : " runs");
    }
    var tab = document.querySelector("#run-tabs a.current .count");
    if (tab) tab.textContent = String(parseInt(tab.textContent, 10) + 1);
  }

  // The state filter's menu closes when the user clicks elsewhere.
  document.addEventListener("click", function (e) {
    document.querySelectorAll("details.multi[open]").forEach(function (d) {
      if (!d.contains(e.target)) d.open = false;
    });
  });

  // Copy buttons: data-copy names the element whose text is copied.
  document.addEventListener("click", function (e) {
    var id = e.target.getAttribute && e.target.getAttribute("data-copy");
    var source = id && document.getElementById(id);
    if (source && navigator.clipboard) navigator.clipboard.writeText(source.textContent);
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
          countOneMore();
        }
      },
      failed: function (d) { status("live view stopped: " + d.message, false); }
    });
  }

  // One run: its panel is fetched again when it changes; new log lines stream in.
  var detail = document.getElementById("run-detail");
  if (detail) {
    var logs = document.getElementById("logs");
    var live = new URL(detail.getAttribute("data-live"), location.href);
    var lastSeq = Number(live.searchParams.get("after") || 0);
    var timer = null;
    var refresh = function () {
      timer = null;
      fetch(detail.getAttribute("data-part"))
        .then(function (r) { return loggedOut(r) || !r.ok ? null : r.text(); })
        .then(function (html) {
          if (html === null) return;
          detail.innerHTML = html;
          hoverEdges();
          taskChoices();
        });
    };
    // The log filter offers every task run, also those that started after the page loaded.
    var taskChoices = function () {
      var select = document.querySelector('#log-filters select[name="task"]');
      if (!select) return;
      detail.querySelectorAll("#task-runs tr[data-task-run]").forEach(function (tr) {
        var id = tr.getAttribute("data-task-run");
        if (select.querySelector('option[value="' + id + '"]')) return;
        var option = document.createElement("option");
        option.value = id;
        option.textContent = tr.getAttribute("data-name");
        select.appendChild(option);
      });
    };
    listen(function () { live.searchParams.set("after", String(lastSeq)); return live.toString(); }, {
      changed: function () { if (!timer) timer = setTimeout(refresh, 150); },
      log: function (d) {
        if (d.seq <= lastSeq) return;
        lastSeq = d.seq;
        var atBottom = logs.scrollHeight - logs.scrollTop - logs.clientHeight < 40;
        var empty = logs.querySelector(".log-empty");
        if (empty) empty.remove();
        logs.appendChild(fromHTML(d.html));
        if (atBottom) logs.scrollTop = logs.scrollHeight;
      },
      failed: function (d) { status("live view stopped: " + d.message, false); }
    });
    logs.scrollTop = logs.scrollHeight;

    // "Show earlier lines": the page before the oldest line shown, same filters.
    var earlier = document.getElementById("log-earlier");
    if (earlier) {
      earlier.addEventListener("click", function () {
        fetch(earlier.getAttribute("data-url") + earlier.getAttribute("data-before"))
          .then(function (r) {
            if (loggedOut(r) || !r.ok) throw new Error(r.statusText);
            var next = r.headers.get("X-Earlier");
            return r.text().then(function (html) { return { html: html, next: next }; });
          })
          .then(function (page) {
            var t = document.createElement("template");
            t.innerHTML = page.html;
            logs.insertBefore(t.content, logs.firstChild);
            if (page.next) earlier.setAttribute("data-before", page.next);
            else earlier.remove();
          })
          .catch(function () { setStale(true); });
      });
    }
  }

  // The task-run Gantt: hovering a task lights up its edges to and from other tasks.
  function hoverEdges() {
    var gantt = document.getElementById("gantt");
    if (!gantt) return;
    gantt.querySelectorAll(".g-row").forEach(function (row) {
      var id = row.getAttribute("data-task-run");
      var edges = gantt.querySelectorAll('.g-edge[data-from="' + id + '"], .g-edge[data-to="' + id + '"]');
      row.addEventListener("mouseenter", function () { edges.forEach(function (e) { e.classList.add("hot"); }); });
      row.addEventListener("mouseleave", function () { edges.forEach(function (e) { e.classList.remove("hot"); }); });
    });
  }
  hoverEdges();

  // Tables that are simply read again every few seconds (runners, deployments).
  document.querySelectorAll("[data-refresh]").forEach(function (el) {
    status("refreshing every 5s", true);
    setInterval(function () {
      fetch(el.getAttribute("data-refresh"))
        .then(function (r) {
          if (loggedOut(r)) return null;
          if (!r.ok) { setStale(true); return null; }
          return r.text();
        })
        .then(function (html) { if (html !== null) { el.innerHTML = html; setStale(false); status("refreshing every 5s", true); } })
        .catch(function () { setStale(true); });
    }, 5000);
  });
})();
