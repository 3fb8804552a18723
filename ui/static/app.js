// pgdurable run browser: optional niceties over pages that work without
// JavaScript: auto-refresh (pausable, remembered) and confirmations.
(function () {
  "use strict";
  var KEY = "durable-ui-refresh";

  function confirmForms(root) {
    root.querySelectorAll("form[data-confirm]").forEach(function (f) {
      if (f.dataset.bound) return;
      f.dataset.bound = "1";
      f.addEventListener("submit", function (e) {
        if (!window.confirm(f.dataset.confirm)) e.preventDefault();
      });
    });
  }

  function paused() {
    try { return localStorage.getItem(KEY) === "off"; } catch (e) { return false; }
  }

  function setPaused(p) {
    try { localStorage.setItem(KEY, p ? "off" : "on"); } catch (e) { /* private mode */ }
  }

  // openDetails lists the open <details> of main by position.
  function openDetails(main) {
    var open = [];
    main.querySelectorAll("details").forEach(function (d, i) {
      open.push(d.open);
    });
    return open;
  }

  function busy(main) {
    var a = document.activeElement;
    return a && main.contains(a) && /^(INPUT|SELECT|TEXTAREA|BUTTON)$/.test(a.tagName);
  }

  function refresh(main) {
    if (paused() || document.hidden || busy(main)) return Promise.resolve();
    return fetch(location.href, { headers: { "X-Durable-Refresh": "1" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html || busy(main)) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var next = doc.getElementById("live");
        if (!next) return;
        var open = openDetails(main);
        var y = window.scrollY;
        main.innerHTML = next.innerHTML;
        main.querySelectorAll("details").forEach(function (d, i) {
          if (i < open.length) d.open = open[i];
        });
        window.scrollTo(0, y);
        confirmForms(main);
        var every = doc.body.dataset.refresh;
        if (!every) stop();
      })
      .catch(function () { /* offline: try again next time */ });
  }

  var timer = null;
  function stop() {
    if (timer) clearInterval(timer);
    timer = null;
    var b = document.getElementById("refresh-toggle");
    if (b) b.hidden = true;
  }

  document.addEventListener("DOMContentLoaded", function () {
    confirmForms(document);
    var every = parseInt(document.body.dataset.refresh || "0", 10);
    var main = document.getElementById("live");
    var button = document.getElementById("refresh-toggle");
    if (!every || !main || !button) return;
    function label() {
      button.textContent = paused() ? "auto-refresh: paused" : "auto-refresh: every " + every + "s";
      button.setAttribute("aria-pressed", paused() ? "false" : "true");
    }
    button.hidden = false;
    label();
    button.addEventListener("click", function () {
      setPaused(!paused());
      label();
    });
    timer = setInterval(function () { refresh(main); }, every * 1000);
  });
})();
