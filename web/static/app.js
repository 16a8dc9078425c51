// Sandtrail UI: the "/" shortcut, the app picker and the live tail. No framework, no
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
    var MAX_LINES = 5000; // older lines are removed so a long tail stays responsive
    var PALETTE = 8;      // .c0 .. .c7 in app.css
    var es = null, paused = false, held = [], dropped = 0, heldDropped = 0;

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
        if (paused) {
          held.push(rec);
          if (held.length > MAX_LINES) { held.shift(); heldDropped++; }
          status.textContent = "paused (" + held.length + " waiting)";
        } else {
          append([rec]);
        }
      };
      es.addEventListener("dropped", function (ev) {
        var n = 0;
        try { n = JSON.parse(ev.data).dropped || 0; } catch (e) { return; }
        dropped += n;
        showDropped();
      });
    }

    function showDropped() {
      var total = dropped + heldDropped;
      if (total <= 0) { notice.hidden = true; return; }
      notice.textContent = total + " lines dropped";
      notice.hidden = false;
    }

    function atBottom() {
      return out.scrollHeight - out.scrollTop - out.clientHeight < 8;
    }

    function append(recs) {
      var stick = atBottom();
      var frag = document.createDocumentFragment();
      recs.forEach(function (rec) {
        var line = document.createElement("div");
        var level = rec.level || "";
        line.className = "line" + (level === "error" || level === "fatal" ? " lvl-error"
          : level === "warn" ? " lvl-warn"
          : level === "debug" || level === "trace" ? " lvl-debug" : "");
        var inst = Number(rec.instance) || 0;
        var prefix = document.createElement("span");
        prefix.className = "prefix c" + (inst % PALETTE);
        prefix.textContent = (rec.host || "?") + "/" + inst;
        var ts = document.createElement("span");
        ts.className = "ts";
        ts.textContent = String(rec.ts || "").replace("T", " ").replace("Z", "");
        var msg = document.createElement("span");
        msg.className = "msg";
        msg.textContent = (level ? level.toUpperCase() + " " : "") + (rec.msg || "");
        line.appendChild(prefix);
        line.appendChild(ts);
        line.appendChild(msg);
        frag.appendChild(line);
      });
      out.appendChild(frag);
      while (out.childElementCount > MAX_LINES) out.removeChild(out.firstElementChild);
      if (stick) out.scrollTop = out.scrollHeight;
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
        showDropped();
        status.textContent = "live";
      } else {
        status.textContent = "paused";
      }
    });

    clearBtn.addEventListener("click", function () {
      out.textContent = "";
      held = [];
      dropped = 0;
      heldDropped = 0;
      showDropped();
    });

    window.addEventListener("pagehide", function () { if (es) es.close(); });
    connect();
  }
})();
