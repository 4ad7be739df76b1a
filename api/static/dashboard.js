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

  // --- models page ----------------------------------------------------------------------------
  // The card's headline figures: [metrics key, label, format]; a format is a number of
  // digits or "%". The forecaster's are its walk-forward backtest averaged over steps 1..H.
  const HEADLINE = [
    ["relative_mase", "rel. MASE", 3], ["relative_mae", "rel. MAE", 3],
    ["relative_mase_drift", "rel. MASE (drift)", 3],
    ["coverage_80", "cov 80", "%"], ["coverage_95", "cov 95", "%"],
    ["directional_accuracy", "direction", "%"], ["point", "point"], ["shrinkage", "shrinkage", 2],
    ["n_segments", "segments"], ["silhouette", "silhouette", 3], ["churn", "churn", 3],
  ];

  function figure(value, format) {
    if (value === null || value === undefined) return "–";
    if (Array.isArray(value)) { // one per step (the shrinkage weights): say the range
      const shown = value.map((v) => figure(v, format));
      const [lo, hi] = [shown[0], shown[shown.length - 1]];
      if (shown.every((v) => v === lo)) return `${lo} ×${shown.length}`;
      return value.every((v) => typeof v === "number")
        ? `${figure(Math.min(...value), format)}–${figure(Math.max(...value), format)} (${shown.length} steps)`
        : `${lo} … ${hi}`;
    }
    if (typeof value !== "number") return String(value);
    if (format === "%") return `${(value * 100).toFixed(1)}%`;
    return typeof format === "number" ? value.toFixed(format) : String(value);
  }

  function when(iso) { return (iso || "").replace("T", " ").slice(0, 19); }

  function headline(card) {
    if (card.error) return el("td", { class: "metrics error" }, card.error);
    const m = card.metrics || {};
    // Older cards have relative MAE only: show it when there is no relative MASE.
    const shown = HEADLINE.filter(([key]) => key in m && !(key === "relative_mae" && "relative_mase" in m));
    return el("td", { class: "metrics", title: m.evaluation || "" },
      ...shown.map(([key, label, format]) => el("span", { class: "metric", "data-metric": key }, el("b", {}, label), " ", figure(m[key], format))));
  }

  function why(card) {
    if (card.promoted) {
      const by = card.promoted_by ? ` by ${card.promoted_by}` : "";
      return el("td", { class: "why" }, el("span", {}, `promoted ${when(card.promoted_at)}${by}`), el("br"), el("span", { class: "muted" }, card.reason || ""));
    }
    if (card.reason) return el("td", { class: "why" }, el("span", {}, "not promoted"), el("br"), el("span", { class: "muted" }, card.reason));
    return el("td", { class: "why muted" }, "never promoted");
  }

  function versionRow(model, card) {
    const isCurrent = card.version === model.current;
    // Versions are UTC timestamps: older sorts first, as the worker decides a rollback.
    const older = model.current && card.version < model.current;
    const action = isCurrent
      ? el("span", { class: "current-badge" }, "current")
      : el("span", {}, el("button", { class: "promote", onclick: (event) => promote(model.name, card.version, event.currentTarget) }, "Promote"),
        older ? el("small", { class: "muted" }, " rollback") : "");
    return el("tr", { "data-version": card.version, class: isCurrent ? "current" : "" },
      el("td", { class: "id" }, card.version, card.signed === false ? el("small", { class: "unsigned" }, " unsigned") : ""),
      el("td", {}, when(card.created)), el("td", {}, card.trained_through || ""),
      el("td", { class: "id", title: card.data_version || "" }, (card.data_version || "").slice(0, 12)),
      headline(card), why(card), el("td", { class: "action" }, action));
  }

  function historyList(model) {
    const history = model.history || [];
    return el("details", { class: "history-list" }, el("summary", {}, `Promotion history (${history.length})`),
      el("ol", {}, ...history.map((h) => el("li", {},
        `${when(h.at)} ${h.version}${h.previous ? ` (was ${h.previous})` : ""}${h.by ? ` by ${h.by}` : ""}: ${h.reason || ""}`))));
  }

  function modelSection(model, note) {
    const cols = ["version", "created", "trained through", "data", "headline metrics", "promoted / why", ""];
    return el("section", { class: "card model", "data-model": model.name },
      el("h2", {}, `${model.name} `, el("small", {}, model.current ? `current ${model.current} · ${model.versions.length} version${model.versions.length === 1 ? "" : "s"}` : "no current version")),
      el("p", { class: "note" }, note || ""),
      el("div", { class: "error", role: "alert" }),
      el("table", { class: "versions" }, el("thead", {}, el("tr", {}, ...cols.map((c) => el("th", {}, c)))),
        el("tbody", {}, ...model.versions.map((card) => versionRow(model, card)))),
      historyList(model));
  }

  async function refreshModels(notes = {}) {
    const status = document.getElementById("status");
    try {
      const listing = await api("/models");
      const models = await Promise.all(listing.models.map((m) => api(`/models/${encodeURIComponent(m.name)}`)));
      document.getElementById("models").replaceChildren(...models.map((m) => modelSection(m, notes[m.name])));
      status.textContent = models.length
        ? `artifacts checked by ${listing.signing || "?"} · listing published ${when(listing.published_at)}`
        : "no models yet: the training worker trains the first ones at start";
      status.className = "muted";
      document.getElementById("models-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
      document.body.dataset.ready = "true";
    } catch (e) {
      status.textContent = e.message;
      status.className = "error";
    }
  }

  async function promote(name, version, button) {
    const section = button.closest("section");
    const box = section.querySelector(".error");
    box.textContent = "";
    for (const b of section.querySelectorAll("button.promote")) b.disabled = true;
    button.textContent = "promoting…";
    const body = { version };
    const reason = document.getElementById("promote-reason").value.trim();
    if (reason) body.reason = reason;
    try {
      let answer = await api(`/models/${encodeURIComponent(name)}/promote`, { method: "POST", body });
      if (answer.status !== "succeeded") { // 202: the promote job is still running
        answer = await waitFor(answer.job_id, () => {});
        if (answer.status !== "succeeded") {
          throw new Error(answer.error ? `${answer.error.type}: ${answer.error.message}` : `the promotion was ${answer.status}`);
        }
        answer = { ...answer, ...answer.result };
      }
      const action = answer.action === "rollback" ? "rolled back to" : "promoted";
      await refreshModels({ [name]: `${action} ${version}${answer.previous ? ` (was ${answer.previous})` : ""}` });
    } catch (e) {
      box.textContent = e.message;
      for (const b of section.querySelectorAll("button.promote")) b.disabled = false;
      button.textContent = "Promote";
    }
  }

  function modelsPage() {
    startHealth();
    refreshModels();
  }

  return { api, jobsPage, forecastPage, segmentsPage, modelsPage };
})();
