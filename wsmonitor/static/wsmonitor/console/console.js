/* Live updates for the wsmonitor console: each section is re-rendered by the server
 * (escaped there) and swapped in. A failed update leaves the last good data on screen,
 * says so, and is retried; nothing here builds HTML from data. */
(function () {
  "use strict";
  // At most one refresh every 2 s: each one reads every session of every node.
  var interval = Math.max(2, parseFloat(document.body.dataset.interval) || 5) * 1000;
  var badge = document.getElementById("live");
  var parts = Array.prototype.slice.call(document.querySelectorAll("[data-part]"));
  if (!parts.length) return;
  var failures = 0, timer = null;

  function busy(section) {
    // Never pull a form out from under someone using it.
    return section.contains(document.activeElement) && document.activeElement !== document.body ||
      section.querySelector("details[open]") !== null;
  }

  function status(ok, text) {
    badge.textContent = text;
    badge.className = ok ? "" : "paused";
  }

  function fetchPart(section) {
    var query = new URLSearchParams(window.location.search);
    query.set("part", section.dataset.part);
    return fetch(window.location.pathname + "?" + query.toString(), {
      credentials: "same-origin", cache: "no-store", redirect: "manual",
      headers: {"X-Requested-With": "wsmonitor-console"}
    }).then(function (response) {
      if (response.status === 200) return response.text();
      var error = new Error(response.status === 403 || response.type === "opaqueredirect"
        ? "signed out or no permission: reload to sign in" : "HTTP " + response.status);
      error.fatal = response.status === 403 || response.type === "opaqueredirect";
      throw error;
    }).then(function (html) {
      if (!busy(section)) section.innerHTML = html;  // server-rendered, autoescaped
    });
  }

  function tick() {
    Promise.all(parts.map(fetchPart)).then(function () {
      failures = 0;
      status(true, "live · " + new Date().toLocaleTimeString());
      schedule(interval);
    }).catch(function (error) {
      failures += 1;
      if (error.fatal) { status(false, error.message); return; }
      var wait = Math.min(60000, interval * Math.pow(2, Math.min(failures, 4)));
      status(false, "updates paused (" + error.message + "), retrying in " + Math.round(wait / 1000) + " s");
      schedule(wait);
    });
  }

  function schedule(wait) {
    clearTimeout(timer);
    timer = setTimeout(tick, wait);
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) schedule(0);
  });
  schedule(interval);
})();
