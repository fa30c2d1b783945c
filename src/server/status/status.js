// The status page's script: every 2 s, reads /status.json and fills the elements the server
// wrote (see page.rs: data-k values, data-rows tables, data-show parts, data-chart charts).
// Without it the page is complete as served, and reloads itself every 10 s.
"use strict";
(function () {
  const EVERY_MS = 2000;

  function lookup(data, path) {
    return path.split(".").reduce((v, k) => (v == null ? null : v[k]), data) ?? null;
  }

  function present(v) {
    if (v == null || v === false || v === "") return false;
    if (Array.isArray(v)) return v.length > 0;
    if (typeof v === "object") return Object.keys(v).length > 0;
    return true;
  }

  function count(n) {
    return Math.max(0, Math.floor(n)).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }

  function rate(r) {
    if (!isFinite(r) || r <= 0) return "0";
    return r < 10 ? r.toFixed(1) : count(Math.round(r));
  }

  function duration(secs) {
    const s = Math.floor(secs), two = (n) => String(n).padStart(2, "0");
    if (secs === 0) return "0 s";
    if (secs < 1) return Math.floor(secs * 1000) + " ms";
    if (s < 10) return secs.toFixed(1) + " s";
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + two(s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + two(Math.floor((s % 3600) / 60)) + " min";
    return Math.floor(s / 86400) + " d " + two(Math.floor((s % 86400) / 3600)) + " h";
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let unit = 0;
    while (n >= 1024 && unit + 1 < units.length) {
      n /= 1024;
      unit += 1;
    }
    return unit === 0 ? n + " B" : n.toFixed(1) + " " + units[unit];
  }

  // The same formats as page.rs's `show`.
  function show(v, f) {
    if (v == null) return "none";
    if (f === "count") return count(Number(v));
    if (f === "rate") return rate(Number(v));
    if (f === "secs") return duration(Math.max(0, Number(v)));
    if (f === "bytes") return bytes(Math.max(0, Math.floor(Number(v))));
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (Array.isArray(v)) return v.length ? v.map((i) => show(i, "text")).join(", ") : "none";
    return typeof v === "object" ? JSON.stringify(v) : String(v);
  }

  function rows(v) {
    if (Array.isArray(v)) return v;
    if (v && typeof v === "object") return Object.entries(v).map(([key, value]) => ({ key, value }));
    return [];
  }

  function fillTable(body, data) {
    const cols = body.dataset.cols.split(",").map((c) => c.split(":"));
    const items = rows(lookup(data, body.dataset.rows));
    body.replaceChildren();
    if (!items.length) {
      const td = body.insertRow().insertCell();
      td.colSpan = cols.length;
      td.className = "none";
      td.textContent = "none";
    }
    for (const item of items) {
      const tr = body.insertRow();
      for (const [key, f] of cols) tr.insertCell().textContent = show(lookup(item, key), f || "text");
    }
  }

  function fillChart(svg, data) {
    const rates = (lookup(data, svg.dataset.chart) || []).map(Number);
    const max = Math.max(0, ...rates);
    const step = 360 / (Math.max(rates.length, 2) - 1);
    const points = rates.map((r, i) => {
      const y = max > 0 ? 58 - (56 * r) / max : 58;
      return (i * step).toFixed(1) + "," + y.toFixed(1);
    });
    svg.querySelector("polyline").setAttribute("points", points.join(" "));
    const peak = document.querySelector('[data-peak="' + svg.dataset.chart + '"]');
    if (peak) peak.textContent = "peak " + rate(max) + "/s";
  }

  function fill(data) {
    document.querySelectorAll("[data-show]").forEach((el) => (el.hidden = !present(lookup(data, el.dataset.show))));
    document.querySelectorAll("[data-k]").forEach((el) => (el.textContent = show(lookup(data, el.dataset.k), el.dataset.f)));
    document.querySelectorAll("[data-rows]").forEach((el) => fillTable(el, data));
    document.querySelectorAll("[data-chart]").forEach((el) => fillChart(el, data));
    document.querySelectorAll("[data-pct]").forEach((el) => {
      const [done, total] = el.dataset.pct.split(":").map((p) => Number(lookup(data, p)) || 0);
      el.style.width = (total > 0 ? Math.min(100, (100 * done) / total) : 0).toFixed(1) + "%";
    });
  }

  const state = document.getElementById("state");
  async function refresh() {
    try {
      const answer = await fetch("/status.json", { cache: "no-store" });
      if (!answer.ok) throw new Error("HTTP " + answer.status);
      fill(await answer.json());
      state.textContent = "live";
      state.className = "state";
      document.body.dataset.refreshed = String(Date.now());
    } catch (e) {
      state.textContent = "not answering (" + e.message + ")";
      state.className = "state down";
    }
  }

  refresh();
  setInterval(refresh, EVERY_MS);
})();
