// The mlstock dashboard: plain JavaScript, no dependencies, no network beyond this API.
"use strict";
const mlstock = (() => {
  const FINAL = ["succeeded", "failed", "cancelled"];
  const SVGNS = "http://www.w3.org/2000/svg";
  const keyInput = document.getElementById("api-key");
  keyInput.value = localStorage.getItem("mlstock-api-key") || "";
  keyInput.addEventListener("change", () => localStorage.setItem("mlstock-api-key", keyInput.value.trim()));

  async function api(path, options = {}) {
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    const key = localStorage.getItem("mlstock-api-key");
    if (key) headers["X-API-Key"] = key;
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(path, { ...options, headers, body: options.body === undefined ? undefined : JSON.stringify(options.body) });
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      const fields = (data.errors || []).map((e) => `${e.field}: ${e.message}`).join("\n");
      const err = new Error(fields || data.detail || `${resp.status} ${resp.statusText}`);
      err.status = resp.status;
      err.data = data;
      throw err;
    }
    return data;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
    return node;
  }

  function svg(tag, attrs = {}) {
    const node = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  }

  function duration(job) {
    if (!job.started_at) return "";
    const end = job.finished_at ? Date.parse(job.finished_at) : Date.now();
    return `${((end - Date.parse(job.started_at)) / 1000).toFixed(2)}s`;
  }

  async function health() {
    const strip = document.getElementById("health");
    let data;
    try { data = await api("/ready"); } catch (e) { data = e.data && e.data.checks ? e.data : { checks: [{ name: "api", ok: false, detail: e.message }] }; }
    strip.replaceChildren(...(data.checks || []).map((c) => el("span", { class: `chip ${c.ok ? "ok" : "bad"}`, title: c.detail }, `${c.ok ? "✓" : "✗"} ${c.name}`)));
  }

  function startHealth() { health(); setInterval(health, 10000); }

  // --- jobs page ------------------------------------------------------------------------------
  function jobLink(job) {
    const href = job.type === "predict" ? `/forecast/${job.job_id}` : `/result/${job.job_id}`;
    return el("a", { href }, job.job_id.slice(0, 8));
  }

  async function refreshJobs() {
    const body = document.querySelector("#jobs tbody");
    try {
      const { jobs } = await api("/jobs?limit=50");
      body.replaceChildren(...jobs.map((j) => el("tr", { "data-job": j.job_id },
        el("td", { class: "id" }, jobLink(j)), el("td", {}, j.type),
        el("td", { class: `status-${j.status}` }, j.status),
        el("td", {}, `${Math.round((j.progress || 0) * 100)}%`), el("td", {}, j.stage || ""),
        el("td", {}, (j.submitted_at || "").replace("T", " ").slice(0, 19)), el("td", {}, duration(j)),
        el("td", {}, FINAL.includes(j.status) ? "" : el("button", { class: "cancel", onclick: () => cancel(j.job_id) }, "cancel")))));
      document.getElementById("jobs-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      document.getElementById("jobs-updated").textContent = e.message;
    }
  }

  async function cancel(id) {
    try { await api(`/jobs/${id}`, { method: "DELETE" }); } catch (e) { alert(e.message); }
    refreshJobs();
  }

  function showFields() {
    const type = document.getElementById("job-type").value;
    for (const label of document.querySelectorAll("#submit-form label[class]")) {
      label.style.display = label.classList.contains(`for-${type}`) ? "" : "none";
    }
  }

  async function submit(event) {
    event.preventDefault();
    const type = document.getElementById("job-type").value;
    const tickers = document.getElementById("tickers").value.split(/[\s,]+/).filter(Boolean);
    const errorBox = document.getElementById("form-error");
    errorBox.textContent = "";
    const body = {};
    if (type === "predict") {
      if (tickers.length === 1) body.ticker = tickers[0]; else body.tickers = tickers;
      body.horizon = parseInt(document.getElementById("horizon").value, 10);
      const asOf = document.getElementById("as-of").value;
      if (asOf) body.as_of = asOf;
      body.history = 60;
    } else if (type === "segment") {
      if (tickers.length) body.tickers = tickers;
    } else {
      const model = document.getElementById("models").value;
      if (model) body.models = [model];
    }
    try {
      const job = await api(`/jobs/${type}`, { method: "POST", body });
      if (type === "predict") window.location.href = `/forecast/${job.job_id}`;
      else if (type === "segment") window.location.href = `/segments?job=${job.job_id}`;
      else refreshJobs();
    } catch (e) {
      errorBox.textContent = e.message;
    }
  }

  function jobsPage() {
    startHealth();
    document.getElementById("job-type").addEventListener("change", showFields);
    document.getElementById("submit-form").addEventListener("submit", submit);
    showFields();
    refreshJobs();
    setInterval(refreshJobs, 2000);
  }

  // --- forecast page --------------------------------------------------------------------------
  async function waitFor(id, onUpdate) {
    for (;;) {
      const record = await api(`/result/${id}?wait=10`);
      onUpdate(record);
      if (FINAL.includes(record.status)) return record;
    }
  }

  function chart(forecast) {
    const W = 760, H = 300, L = 56, R = 12, T = 12, B = 28;
    const history = forecast.history || [{ date: forecast.last_date, close: forecast.last_close }];
    const steps = forecast.steps;
    const n = history.length + steps.length;
    const values = [...history.map((p) => p.close), ...steps.flatMap((s) => [s.lower_95, s.upper_95])];
    const lo = Math.min(...values), hi = Math.max(...values), pad = (hi - lo) * 0.05 || 1;
    const x = (i) => L + (i * (W - L - R)) / Math.max(1, n - 1);
    const y = (v) => T + ((hi + pad - v) * (H - T - B)) / (hi - lo + 2 * pad);
    const at = history.length - 1; // the last close joins the forecast
    const line = (pts) => pts.map(([i, v], k) => `${k ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    const band = (lower, upper) => {
      const top = [[at, forecast.last_close], ...steps.map((s, k) => [at + 1 + k, s[upper]])];
      const bottom = [...steps.map((s, k) => [at + 1 + k, s[lower]])].reverse().concat([[at, forecast.last_close]]);
      return `${line(top)} ${bottom.map(([i, v]) => `L${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ")} Z`;
    };
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", class: "chart", role: "img", "aria-label": `forecast of ${forecast.ticker}` });
    for (const v of [lo, (lo + hi) / 2, hi]) {
      root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      const label = svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }); label.textContent = v.toFixed(2); root.append(label);
    }
    root.append(svg("path", { class: "band-95", d: band("lower_95", "upper_95") }));
    root.append(svg("path", { class: "band-80", d: band("lower_80", "upper_80") }));
    root.append(svg("path", { class: "history", d: line(history.map((p, i) => [i, p.close])) }));
    root.append(svg("path", { class: "forecast", d: line([[at, forecast.last_close], ...steps.map((s, k) => [at + 1 + k, s.close])]) }));
    const first = svg("text", { x: L, y: H - 8 }); first.textContent = history[0].date || "";
    const last = svg("text", { x: W - R, y: H - 8, "text-anchor": "end" }); last.textContent = steps[steps.length - 1].date || "";
    root.append(first, last);
    return root;
  }

  function forecastTable(forecast) {
    const cols = ["step", "date", "close", "lower_80", "upper_80", "lower_95", "upper_95"];
    return el("table", { class: "steps" }, el("thead", {}, el("tr", {}, ...cols.map((c) => el("th", {}, c)))),
      el("tbody", {}, ...forecast.steps.map((s) => el("tr", {}, ...cols.map((c) => el("td", {}, String(s[c])))))));
  }

  async function forecastPage(id) {
    startHealth();
    const status = document.getElementById("status");
    try {
      const record = await waitFor(id, (r) => { status.textContent = `${r.status} ${Math.round((r.progress || 0) * 100)}% ${r.stage || ""}`; });
      if (record.status !== "succeeded") {
        status.textContent = `${record.status}: ${record.error ? `${record.error.type}: ${record.error.message}` : record.stage}`;
        status.className = "error";
        return;
      }
      status.textContent = `model ${record.model_version} · ${duration(record)}`;
      const charts = document.getElementById("charts");
      for (const f of record.result.forecasts) {
        charts.append(el("h3", {}, `${f.ticker} from ${f.last_date} (last close ${f.last_close})`),
          el("div", { class: "legend" }, el("span", {}, "— history"), el("span", {}, "- - forecast"), el("span", {}, "▮ 80% band"), el("span", {}, "▯ 95% band")),
          chart(f), forecastTable(f));
      }
      document.body.dataset.ready = "true";
    } catch (e) {
      status.textContent = e.message;
      status.className = "error";
    }
  }

  // --- segments page --------------------------------------------------------------------------
  function scatter(segments) {
    const W = 520, H = 300, P = 40;
    const keys = Object.keys((segments[0] || {}).profile || {});
    const [kx, ky] = [keys[0], keys[1]];
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "520", class: "scatter" });
    if (!kx || !ky) return root;
    const xs = segments.map((s) => s.profile[kx]), ys = segments.map((s) => s.profile[ky]);
    const sx = (v) => P + ((v - Math.min(...xs)) * (W - 2 * P)) / ((Math.max(...xs) - Math.min(...xs)) || 1);
    const sy = (v) => H - P - ((v - Math.min(...ys)) * (H - 2 * P)) / ((Math.max(...ys) - Math.min(...ys)) || 1);
    for (const s of segments) {
      root.append(svg("circle", { class: "segment-dot", cx: sx(s.profile[kx]), cy: sy(s.profile[ky]), r: 6 + Math.sqrt(s.size || s.train_size || 1) * 2 }));
      const t = svg("text", { x: sx(s.profile[kx]) + 10, y: sy(s.profile[ky]) }); t.textContent = `${s.segment}: ${s.label}`; root.append(t);
    }
    const ax = svg("text", { x: W / 2, y: H - 6, "text-anchor": "middle" }); ax.textContent = kx;
    const ay = svg("text", { x: 4, y: 14 }); ay.textContent = ky;
    root.append(ax, ay);
    return root;
  }

  async function showSegments(id) {
    const status = document.getElementById("status");
    const record = await waitFor(id, (r) => { status.textContent = `job ${id}: ${r.status}`; });
    if (record.status !== "succeeded") { status.textContent = `job ${id} ${record.status}`; return; }
    const { assignments, segments } = record.result;
    status.textContent = `model ${record.model_version} · job ${id}`;
    document.getElementById("scatter").replaceChildren(scatter(segments));
    const box = document.getElementById("segments");
    box.replaceChildren(...segments.map((s) => el("div", { class: "segment" },
      el("h3", {}, `Segment ${s.segment}: ${s.label} (${s.size})`),
      el("p", { class: "muted" }, Object.entries(s.profile).map(([k, v]) => `${k} ${v}`).join(" · ")),
      el("p", {}, assignments.filter((a) => a.segment === s.segment).map((a) => a.ticker ?? `row ${a.row}`).join(", ")))));
  }

  async function segmentsPage() {
    startHealth();
    const status = document.getElementById("status");
    document.getElementById("run-segment").addEventListener("click", async () => {
      try { const job = await api("/jobs/segment", { method: "POST", body: {} }); await showSegments(job.job_id); } catch (e) { status.textContent = e.message; }
    });
    try {
      let id = new URLSearchParams(window.location.search).get("job");
      if (!id) {
        const { jobs } = await api("/jobs?type=segment&status=succeeded&limit=1");
        id = jobs.length ? jobs[0].job_id : null;
      }
      if (id) await showSegments(id); else status.textContent = "no segmentation yet: run one";
    } catch (e) { status.textContent = e.message; }
  }

  return { api, jobsPage, forecastPage, segmentsPage };
})();
