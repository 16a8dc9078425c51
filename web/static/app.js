// Sandtrail UI: the "/" shortcut, the app picker, histogram drag-to-zoom and the live tail. No framework, no
// build step. Log text is only ever inserted with textContent, never parsed as HTML.
(function () {
  "use strict";

  // "/" focuses the query (or the tail filter) unless the reader is typing already.
  document.addEventListener("keydown", function (ev) {
    if (ev.key !== "/" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    var t = ev.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable)) return;
    var box = document.getElementById("q") || document.getElementById("tail-filter");
    if (!box) return;
    ev.preventDefault();
    box.focus();
    box.select();
  });

  // Choosing an app submits the form; the server folds it into q as app:<name>.
  var picker = document.querySelector("select.app-picker");
  if (picker && picker.form) {
    picker.addEventListener("change", function () { picker.form.submit(); });
  }

  // The field sidebar starts folded on narrow screens so the rows come first; without
  // JavaScript it simply stays open.
  var side = document.getElementById("side-fields");
  if (side && window.matchMedia) {
    var narrow = window.matchMedia("(max-width: 900px)");
    if (narrow.matches) side.open = false;
    narrow.addEventListener("change", function (e) { side.open = !e.matches; });
  }

  var bars = document.getElementById("hist-bars");
  if (bars) dragZoom(bars);

  localTimes();
  autoRefresh();
  suggest();

  // Autocomplete of the query box: the word being typed is completed to a field name
  // (`lev` -> `level:`) or, after `field:`, to one of that field's top values in the
  // range, from /ui/fields (fetched once, on first focus). Tab takes the first, arrows
  // choose and Enter takes the chosen one (Enter alone still searches), Escape closes. Without JavaScript the box is a plain text field.
  function suggest() {
    var q = document.getElementById("q");
    var list = document.getElementById("suggest");
    if (!q || !list || !q.getAttribute("data-suggest")) return;
    // Always there, whatever the range holds.
    var known = ["host", "app", "task", "instance", "stream", "level", "msg", "trace_id", "span_id",
      "method", "path", "status", "latency_ms", "peer_app", "peer_host"];
    var fields = null, items = [], active = -1;
    function load() {
      if (fields) return;
      fields = {};
      fetch(q.getAttribute("data-suggest"), { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : { fields: [] }; })
        .then(function (body) {
          (body.fields || []).forEach(function (f) { fields[f.field] = f.values || []; });
          if (document.activeElement === q) show();
        })
        .catch(function () {});
    }
    // The word under the cursor: [start, end) in q.value.
    function word() {
      var v = q.value, end = q.selectionStart == null ? v.length : q.selectionStart;
      var start = end;
      while (start > 0 && !/[\s()]/.test(v[start - 1])) start--;
      return { start: start, end: end, text: v.slice(start, end) };
    }
    function quote(v) { return /^[\w.\/-]+$/.test(v) ? v : '"' + v.replace(/\\/g, "\\\\").replace(/"/g, '\\"') + '"'; }
    function show() {
      var w = word(), t = w.text.replace(/^[-+]/, "");
      var out = [];
      var colon = t.indexOf(":");
      if (colon > 0) {
        var name = t.slice(0, colon), prefix = t.slice(colon + 1).replace(/^"/, "").toLowerCase();
        (fields && fields[name] || []).forEach(function (v) {
          var val = String(v.value);
          if (val.toLowerCase().indexOf(prefix) === 0) out.push({ label: val, n: v.count, text: name + ":" + quote(val) });
        });
      } else if (t.length > 0) {
        var names = known.concat(Object.keys(fields || {}));
        names.filter(function (n, i) { return names.indexOf(n) === i && n.indexOf(t) === 0 && n !== t; })
          .forEach(function (n) { out.push({ label: n + ":", n: "", text: n + ":" }); });
      }
      items = out.slice(0, 12);
      // Nothing chosen until the arrows choose: Enter still submits what was typed.
      active = -1;
      render();
    }
    function render() {
      list.textContent = "";
      items.forEach(function (it, i) {
        var li = document.createElement("li");
        li.setAttribute("role", "option");
        if (i === active) li.className = "active";
        var a = document.createElement("span"); a.textContent = it.label;
        var n = document.createElement("span"); n.className = "n"; n.textContent = it.n;
        li.appendChild(a); li.appendChild(n);
        li.addEventListener("mousedown", function (ev) { ev.preventDefault(); take(i); });
        list.appendChild(li);
      });
      list.hidden = items.length === 0;
    }
    function take(i) {
      var it = items[i]; if (!it) return;
      var w = word(), v = q.value, sign = /^[-+]/.test(w.text) ? w.text[0] : "";
      var done = it.text.slice(-1) !== ":";
      var ins = sign + it.text + (done ? " " : "");
      q.value = v.slice(0, w.start) + ins + v.slice(w.end);
      var at = w.start + ins.length;
      q.setSelectionRange(at, at);
      items = []; render();
      if (!done) show();
    }
    q.addEventListener("focus", load);
    q.addEventListener("input", function () { load(); show(); });
    q.addEventListener("blur", function () { items = []; render(); });
    q.addEventListener("keydown", function (ev) {
      if (list.hidden) return;
      if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
        ev.preventDefault();
        active = (active + (ev.key === "ArrowDown" ? 1 : items.length - 1)) % items.length;
        render();
      } else if ((ev.key === "Enter" && active >= 0) || ev.key === "Tab") {
        ev.preventDefault();
        take(Math.max(active, 0));
      } else if (ev.key === "Escape") {
        // Only the list closes: a search box would otherwise clear what was typed.
        ev.preventDefault();
        items = []; render();
      }
    });
  }

  // Auto-refresh of the search page (JavaScript only, so the control is hidden without
  // it): the interval is kept in the URL as `refresh=<seconds>`, and the count stops
  // while the reader reads: scrolled down, a row open, the query box focused or the tab
  // hidden. It starts over once they are back at the top.
  function autoRefresh() {
    var box = document.getElementById("refresh-box");
    var sel = document.getElementById("refresh");
    var status = document.getElementById("refresh-status");
    if (!box || !sel || !status) return;
    box.hidden = false;
    var params = new URLSearchParams(location.search);
    var every = parseInt(params.get("refresh") || "0", 10);
    if (!Array.prototype.some.call(sel.options, function (o) { return o.value === String(every); })) every = 0;
    sel.value = String(every);
    sel.addEventListener("change", function () {
      var p = new URLSearchParams(location.search);
      if (sel.value === "0") p.delete("refresh"); else p.set("refresh", sel.value);
      location.search = p.toString();
    });
    if (!every) return;
    var left = every;
    var q = document.getElementById("q");
    setInterval(function () {
      var reading = window.scrollY > 40 || document.hidden ||
        document.querySelector("details.rec[open]") || document.activeElement === q;
      if (reading) {
        left = every;
        status.textContent = "paused while you read";
        status.className = "paused";
        return;
      }
      left -= 1;
      status.className = "";
      status.textContent = "in " + Math.max(left, 0) + "s";
      if (left <= 0) location.reload();
    }, 1000);
  }

  // The server renders times in UTC (it does not know the reader's zone); unless the
  // page asks for UTC (tz=utc), each <time> is rewritten in the browser's own zone and
  // the column says which. Without JavaScript the times simply stay in UTC, labelled so.
  function localTimes() {
    var head = document.querySelector("th.time-head");
    if (!head || head.getAttribute("data-utc") === "true") return;
    var pad = function (n, w) { return String(n).padStart(w || 2, "0"); };
    var off = -new Date().getTimezoneOffset();
    var zone = (off >= 0 ? "+" : "-") + pad(Math.floor(Math.abs(off) / 60)) + ":" + pad(Math.abs(off) % 60);
    var local = function (d) {
      return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
        pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." + pad(d.getMilliseconds(), 3);
    };
    document.querySelectorAll("td.time time[datetime], figure.histogram time[datetime]").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d)) return;
      el.textContent = local(d);
      el.title = el.getAttribute("datetime");
    });
    // A bar's tooltip starts with its bucket's time ("<time>: N matches ...").
    document.querySelectorAll("#hist-bars a.bar[data-start]").forEach(function (el) {
      var d = new Date(el.getAttribute("data-start"));
      var at = el.title.indexOf(": ");
      if (isNaN(d) || at < 0) return;
      el.title = local(d) + el.title.slice(at);
    });
    document.querySelectorAll("figure.histogram .tz-utc").forEach(function (el) { el.remove(); });
    head.textContent = "time (local, UTC" + zone + ")";
  }

  // Drag across histogram bars to zoom to their span. A press and release on one bar
  // is left to the bar's own link, so a click zooms to one bucket with or without JS.
  // Zooming is a navigation, so browser Back undoes it.
  function dragZoom(bars) {
    var all = Array.prototype.slice.call(bars.querySelectorAll("a.bar"));
    var from = -1, to = -1, dragging = false;

    function indexAt(x) {
      for (var i = 0; i < all.length; i++) {
        var r = all[i].getBoundingClientRect();
        if (x >= r.left && x < r.right + 1) return i;
      }
      if (!all.length) return -1;
      return x < all[0].getBoundingClientRect().left ? 0 : all.length - 1;
    }
    function paint() {
      var lo = Math.min(from, to), hi = Math.max(from, to);
      all.forEach(function (b, i) { b.classList.toggle("sel", dragging && i >= lo && i <= hi); });
    }
    bars.addEventListener("pointerdown", function (ev) {
      if (ev.button !== 0) return;
      from = to = indexAt(ev.clientX);
      if (from < 0) return;
      dragging = true;
      paint();
      ev.preventDefault(); // no native link drag
    });
    bars.addEventListener("pointermove", function (ev) {
      if (!dragging) return;
      var i = indexAt(ev.clientX);
      if (i !== to) { to = i; paint(); }
    });
    function finish(ev) {
      if (!dragging) return;
      dragging = false;
      paint();
      if (from === to) return; // a click: the bar's link does the zoom
      ev.preventDefault();
      var lo = all[Math.min(from, to)], hi = all[Math.max(from, to)];
      var url = new URL(window.location.href);
      url.searchParams.delete("range");
      url.searchParams.delete("cursor");
      url.searchParams.set("start", lo.dataset.start);
      url.searchParams.set("end", hi.dataset.end);
      suppressClick = true;
      window.location.assign(url.toString());
    }
    var suppressClick = false;
    window.addEventListener("pointerup", finish);
    bars.addEventListener("pointercancel", function () { dragging = false; paint(); });
    // After a drag the browser may still fire a click on the last bar; the drag wins.
    bars.addEventListener("click", function (ev) {
      if (suppressClick) { ev.preventDefault(); suppressClick = false; }
    }, true);
  }

  var root = document.getElementById("tail");
  if (root) startTail(root);

  function startTail(root) {
    var app = root.dataset.app;
    var out = document.getElementById("tail-lines");
    var form = document.getElementById("tail-form");
    var filterBox = document.getElementById("tail-filter");
    var pauseBtn = document.getElementById("tail-pause");
    var clearBtn = document.getElementById("tail-clear");
    var notice = document.getElementById("tail-notice");
    var status = document.getElementById("tail-status");
    var droppedNote = document.getElementById("tail-dropped");
    var skippedNote = document.getElementById("tail-skipped");
    var MAX_LINES = 5000; // older lines are removed so a long tail stays responsive
    var PALETTE = 8;      // .c0 .. .c7 in app.css
    // At most RATE lines are rendered per second, the rest counted as skipped: a noisy
    // app must not freeze the browser, and a person cannot read faster anyway.
    var RATE = Math.max(1, Number(root.dataset.rate) || 200);
    var es = null, paused = false, held = [], dropped = 0, heldDropped = 0, skipped = 0;
    var windowStart = 0, inWindow = 0, pending = [], flushQueued = false;

    // Whether one more line fits in this second's budget.
    function admit() {
      var now = Date.now();
      if (now - windowStart >= 1000) { windowStart = now; inWindow = 0; }
      if (inWindow >= RATE) return false;
      inWindow++;
      return true;
    }

    // Lines are rendered once per frame, in one batch, rather than one layout per
    // event; a hidden tab (no frames) still gets a flush from the timer.
    function queue(rec) {
      pending.push(rec);
      if (pending.length > MAX_LINES) { pending.shift(); heldDropped++; showNotices(); }
      if (flushQueued) return;
      flushQueued = true;
      var done = false;
      function flush() {
        if (done) return;
        done = true;
        flushQueued = false;
        var batch = pending; pending = [];
        if (batch.length) append(batch);
      }
      if (window.requestAnimationFrame) window.requestAnimationFrame(flush);
      setTimeout(flush, 250);
    }

    function connect() {
      if (es) es.close();
      var filter = filterBox.value.trim();
      es = new EventSource('/ui/tail-stream?q=' + encodeURIComponent('app:' + app + ' ' + filter));
      status.textContent = "connecting…";
      es.onopen = function () { status.textContent = paused ? "paused" : "live"; };
      es.onerror = function () { status.textContent = "reconnecting…"; };
      es.onmessage = function (ev) {
        var rec;
        try { rec = JSON.parse(ev.data); } catch (e) { return; }
        if (!admit()) {
          skipped++;
          noticesSoon();
          return;
        }
        if (paused) {
          held.push(rec);
          if (held.length > MAX_LINES) { held.shift(); heldDropped++; }
          status.textContent = "paused (" + held.length + " waiting)";
        } else {
          queue(rec);
        }
      };
      es.addEventListener("dropped", function (ev) {
        var n = 0;
        try { n = JSON.parse(ev.data).dropped || 0; } catch (e) { return; }
        dropped += n;
        showNotices();
      });
    }

    // Two separate counts: lines the indexer could not send because this tail fell
    // behind (or that overflowed while paused), and lines this page chose not to render.
    function showNotices() {
      var lost = dropped + heldDropped;
      droppedNote.hidden = lost <= 0;
      droppedNote.textContent = lost + " lines dropped (the tail fell behind)";
      skippedNote.hidden = skipped <= 0;
      skippedNote.textContent = skipped + " lines skipped (rate capped)";
      notice.hidden = lost <= 0 && skipped <= 0;
    }

    // A capped stream skips thousands of lines a second; the count is redrawn a few
    // times a second rather than once per line.
    var noticesQueued = false;
    function noticesSoon() {
      if (noticesQueued) return;
      noticesQueued = true;
      setTimeout(function () { noticesQueued = false; showNotices(); }, 200);
    }

    function atBottom() {
      return out.scrollHeight - out.scrollTop - out.clientHeight < 8;
    }

    // One colour per task for the life of the page: the instance number's colour when
    // no other task has it yet (so a reload usually keeps colours), else the first free
    // one, so replicas never share a colour while there are colours left.
    var colours = {}, taken = {};
    function colourOf(task, inst) {
      if (colours.hasOwnProperty(task)) return colours[task];
      var c = inst % PALETTE;
      if (taken[c]) {
        for (var i = 0; i < PALETTE; i++) if (!taken[i]) { c = i; break; }
      }
      colours[task] = c;
      taken[c] = true;
      return c;
    }

    // Sort key of a record time: RFC 3339 UTC with the fraction padded to nanoseconds,
    // so plain string comparison orders it.
    function sortKey(ts) {
      var m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$/.exec(String(ts || ""));
      if (!m) return String(ts || "");
      return m[1] + "." + ((m[2] || "") + "000000000").slice(0, 9);
    }

    // Shippers deliver each instance's lines in batches, so lines of one instance can
    // arrive after later lines of another. Each new line is placed by its time among the
    // last REORDER lines: the view reads interleaved in time order, at a bounded cost.
    var REORDER = 1000;
    function place(line) {
      var node = out.lastElementChild, steps = 0;
      while (node && node.dataset.key > line.dataset.key && steps < REORDER) {
        node = node.previousElementSibling;
        steps++;
      }
      out.insertBefore(line, node ? node.nextSibling : out.firstChild);
    }

    function append(recs) {
      var stick = atBottom();
      recs.forEach(function (rec) {
        var line = document.createElement("div");
        var level = rec.level || "";
        line.className = "line" + (level === "error" || level === "fatal" ? " lvl-error"
          : level === "warn" ? " lvl-warn"
          : level === "debug" || level === "trace" ? " lvl-debug" : "");
        var inst = Number(rec.instance) || 0;
        var prefix = document.createElement("span");
        prefix.className = "prefix c" + colourOf(rec.task || rec.host + "/" + inst, inst);
        line.dataset.task = rec.task || "";
        prefix.textContent = (rec.host || "?") + "/" + inst;
        var ts = document.createElement("span");
        ts.className = "ts";
        ts.textContent = shortTime(rec.ts);
        var msg = document.createElement("span");
        msg.className = "msg";
        msg.textContent = (level ? level.toUpperCase() + " " : "") + (rec.msg || "");
        line.appendChild(prefix);
        line.appendChild(ts);
        line.appendChild(msg);
        line.dataset.key = sortKey(rec.ts);
        place(line);
      });
      while (out.childElementCount > MAX_LINES) out.removeChild(out.firstElementChild);
      if (stick) out.scrollTop = out.scrollHeight;
    }

    // "2026-11-23T10:00:00.123456789Z" -> "10:00:00.123": the tail is live, so the time
    // of day at millisecond precision is what a reader compares.
    function shortTime(ts) {
      var m = /T(\d\d:\d\d:\d\d)(?:\.(\d+))?/.exec(String(ts || ""));
      if (!m) return String(ts || "");
      return m[1] + "." + ((m[2] || "") + "000").slice(0, 3);
    }

    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      // Keep the filter in the URL so the view can be shared and survives a reload.
      var url = new URL(window.location.href);
      if (filterBox.value.trim()) url.searchParams.set("filter", filterBox.value.trim());
      else url.searchParams.delete("filter");
      window.history.replaceState(null, "", url.toString());
      connect();
    });

    pauseBtn.addEventListener("click", function () {
      paused = !paused;
      pauseBtn.textContent = paused ? "Resume" : "Pause";
      if (!paused) {
        var batch = held; held = [];
        if (batch.length) append(batch);
        showNotices();
        status.textContent = "live";
      } else {
        status.textContent = "paused";
      }
    });

    clearBtn.addEventListener("click", function () {
      out.textContent = "";
      held = [];
      pending = [];
      dropped = 0;
      heldDropped = 0;
      skipped = 0;
      showNotices();
    });

    window.addEventListener("pagehide", function () { if (es) es.close(); });
    connect();
  }
})();
