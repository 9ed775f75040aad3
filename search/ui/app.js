// The ltrsearch workbench: plain JavaScript over the public API only (GET/POST /search,
// POST /events?debug=true, GET /model/card, GET /reports). Every text from the index or the
// API is put in the page as text (textContent), never as HTML.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { card: null, reportsLoaded: false };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "style") Object.assign(node.style, v); // CSSOM: allowed by the page's CSP
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function fmt(x, digits = 3) {
  if (x === null || x === undefined) return "–";
  if (typeof x !== "number") return String(x);
  return Number.isInteger(x) ? String(x) : x.toFixed(digits);
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  };
  const resp = await fetch(path, opts);
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const msg = data.error ? `${data.error.code}: ${data.error.message}` : resp.statusText;
    throw new Error(`${resp.status} ${msg}`);
  }
  return data;
}

function setStatus(text, isError) {
  const s = $("#status");
  s.textContent = text;
  s.classList.toggle("error", Boolean(isError));
}

// ---------------------------------------------------------------------------------------
// highlighting: query terms (and words they start) wrapped in <mark>, as text nodes

function termPattern(q) {
  const terms = (q.toLowerCase().match(/[\p{L}\p{N}]{2,}/gu) || [])
    .map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  if (!terms.length) return null;
  return new RegExp(`(?<![\\p{L}\\p{N}])(?:${terms.join("|")})[\\p{L}\\p{N}]*`, "giu");
}

function highlighted(text, pattern) {
  const out = el("span", { class: "snippet" });
  if (!text) return out;
  if (!pattern) { out.textContent = text; return out; }
  let last = 0;
  for (const m of text.matchAll(pattern)) {
    out.append(text.slice(last, m.index), el("mark", { text: m[0] }));
    last = m.index + m[0].length;
  }
  out.append(text.slice(last));
  return out;
}

// ---------------------------------------------------------------------------------------
// the search view

function requestBody(model) {
  const body = { q: $("#q").value, k: Number($("#k").value) || 10, explain: true };
  body.debug = !$("#log").checked || Boolean(model);
  const category = $("#category").value.trim();
  if (category) body.category = category;
  const filters = {};
  for (const row of document.querySelectorAll(".filter")) {
    const spec = {};
    for (const op of ["gte", "lte"]) {
      const v = row.querySelector(`[data-op=${op}]`).value.trim();
      if (v !== "") spec[op] = Number(v);
    }
    if (Object.keys(spec).length) filters[row.dataset.attr] = spec;
  }
  if (Object.keys(filters).length) body.filters = filters;
  if (model) body.model = model;
  return body;
}

async function runSearch(ev) {
  ev.preventDefault();
  const compare = $("#compare").value;
  setStatus("searching…");
  try {
    const base = api("/search", requestBody(null));
    const other = compare ? api("/search", requestBody(compare)) : Promise.resolve(null);
    const [left, right] = await Promise.all([base, other]);
    renderResults(left, right, compare);
    const n = left.hits.length;
    const logged = $("#log").checked ? "logged as user behaviour" : "debug: not logged";
    setStatus(`${n} hits of ${left.candidates} candidates in ${fmt(left.took_ms, 1)} ms (${logged})`);
  } catch (e) {
    $("#results").replaceChildren();
    setStatus(e.message, true);
  }
}

function renderResults(left, right, compare) {
  const pattern = termPattern(left.query);
  const leftPos = new Map(left.hits.map((h) => [h.id, h.position]));
  const rightPos = right ? new Map(right.hits.map((h) => [h.id, h.position])) : null;
  const leftName = left.model_version ? `production model ${left.model_version}` : "production (RRF, no model)";
  const cols = [column(leftName, left, pattern, rightPos ? { other: rightPos, side: "left" } : null)];
  if (right) {
    const name = compare === "rrf" ? "RRF (fusion, no model)" : `model ${right.model_version}`;
    cols.push(column(name, right, pattern, { other: leftPos, side: "right" }));
  }
  const results = $("#results");
  results.classList.toggle("side-by-side", Boolean(right));
  results.replaceChildren(...cols);
}

function column(title, result, pattern, moves) {
  const degraded = result.degraded.length ? ` · degraded: ${result.degraded.join(", ")}` : "";
  return el("div", { class: "column", "data-ranking": moves ? moves.side : "single" },
    el("h2", { text: title }),
    el("p", { class: "meta", text: `${fmt(result.took_ms, 1)} ms${degraded}` }),
    result.explain ? el("p", { class: "note", text: result.explain }) : null,
    el("ol", { class: "hits" }, result.hits.map((h) => hitItem(h, result, pattern, moves))));
}

function moveMark(hit, moves) {
  if (!moves) return null;
  const was = moves.other.get(hit.id);
  if (moves.side === "left") {
    return was === undefined ? el("span", { class: "move out", title: "not in the other ranking's page", text: "out" }) : null;
  }
  if (was === undefined) return el("span", { class: "move new", title: "not on the production page", text: "new" });
  const d = was - hit.position;
  if (d > 0) return el("span", { class: "move up", title: `production position ${was}`, text: `▲${d}` });
  if (d < 0) return el("span", { class: "move down", title: `production position ${was}`, text: `▼${-d}` });
  return el("span", { class: "move same", title: "same position", text: "=" });
}

function attributes(fields) {
  const chips = [];
  if (fields.category) chips.push(el("span", { class: "chip category", text: fields.category }));
  for (const [k, v] of Object.entries(fields)) {
    if (typeof v === "number") chips.push(el("span", { class: "chip", text: `${k} ${fmt(v)}` }));
  }
  return el("div", { class: "chips" }, chips);
}

function hitItem(hit, result, pattern, moves) {
  const f = hit.fields || {};
  const title = el("button", {
    type: "button", class: "title", title: "record a click on this hit",
    onclick: () => sendClick(result.request_id, hit.id),
  }, highlighted(f.title || hit.id, pattern));
  const panel = el("div", { class: "explain", hidden: true }, explainPanel(hit));
  const toggle = el("button", {
    type: "button", class: "explain-toggle",
    onclick: () => { panel.hidden = !panel.hidden; toggle.textContent = panel.hidden ? "explain" : "hide"; },
  }, "explain");
  return el("li", { class: "hit", "data-id": hit.id },
    el("div", { class: "hit-head" },
      el("span", { class: "pos", text: String(hit.position) }), moveMark(hit, moves), title,
      el("span", { class: "score", title: "the ranking's score", text: fmt(hit.score) }), toggle),
    el("div", { class: "doc-id", text: `id ${hit.id}` }),
    highlighted(f.body || "", pattern),
    attributes(f),
    ranks(hit),
    panel);
}

function ranks(hit) {
  const r = hit.retrievers || {};
  const cells = [["bm25", r.bm25], ["dense", r.dense], ["fusion", hit.fusion]];
  return el("table", { class: "ranks" },
    el("tr", {}, el("th", { text: "" }), cells.map(([n]) => el("th", { text: n }))),
    el("tr", {}, el("th", { text: "rank" }), cells.map(([, v]) => el("td", { text: fmt(v && v.rank) }))),
    el("tr", {}, el("th", { text: "score" }), cells.map(([, v]) => el("td", { text: fmt(v && v.score) }))));
}

function explainPanel(hit) {
  const parts = [el("p", { text: `model score ${fmt(hit.score, 4)}` })];
  const c = hit.contributions;
  if (c) {
    const top = Object.entries(c).filter(([k]) => k !== "_bias")
      .sort((a, b) => Math.abs(b[1]) - Math.abs(a[1])).slice(0, 8);
    const max = Math.max(1e-9, ...top.map(([, v]) => Math.abs(v)));
    parts.push(el("h3", { text: "top feature contributions" }),
      el("table", { class: "contribs" },
        top.map(([k, v]) => el("tr", {},
          el("td", { text: k }),
          el("td", { class: "num", text: fmt(v, 4) }),
          el("td", {}, el("span", {
            class: `bar ${v < 0 ? "neg" : "pos"}`,
            style: { width: `${Math.round((100 * Math.abs(v)) / max)}%` },
          }))))),
      el("p", { class: "meta", text: `bias (incl. the fusion base margin) ${fmt(c._bias, 4)}` }));
  } else {
    parts.push(el("p", { class: "meta", text: "no contributions for this hit (RRF ranking or past api.explain_max_hits)" }));
  }
  const b = hit.behavior;
  if (b) {
    parts.push(el("h3", { text: "click statistics" }),
      el("table", { class: "clicks" },
        el("tr", {}, el("th", { text: "" }), el("th", { text: "impressions" }), el("th", { text: "clicks" }), el("th", { text: "decayed clicks" })),
        el("tr", {}, el("th", { text: "this query" }), el("td", { text: fmt(b.qd_impressions) }), el("td", { text: fmt(b.qd_clicks) }), el("td", { text: fmt(b.qd_decayed_clicks) })),
        el("tr", {}, el("th", { text: "any query" }), el("td", { text: fmt(b.d_impressions) }), el("td", { text: fmt(b.d_clicks) }), el("td", { text: fmt(b.d_decayed_clicks) }))));
  } else {
    parts.push(el("p", { class: "meta", text: "no click statistics (no event store)" }));
  }
  return parts;
}

async function sendClick(requestId, docId) {
  const debug = !$("#log").checked;
  try {
    await api(`/events${debug ? "?debug=true" : ""}`, [{ type: "click", request_id: requestId, doc_id: docId }]);
    setStatus(`click on ${docId} sent${debug ? " (debug: not logged)" : " (logged)"}`);
  } catch (e) {
    setStatus(`click not sent: ${e.message}`, true);
  }
}

// ---------------------------------------------------------------------------------------
// the model card and the drift reports

function kv(rows) {
  return el("table", { class: "kv" }, rows.map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", {}, v))));
}

function renderCard(card) {
  const box = $("#card");
  if (!card.version) {
    box.replaceChildren(el("p", { text: "No model serves: hits are ranked by RRF (fusion of BM25 and dense)." }));
    return;
  }
  const sizes = Object.entries(card.data_sizes || {})
    .map(([split, s]) => `${split}: ${s.queries} queries, ${s.rows} rows`).join("; ");
  const metrics = Object.entries(card.metrics || {}).sort();
  const imp = Object.entries(card.feature_importance || {}).sort((a, b) => b[1] - a[1]);
  const picker = el("select", { id: "card-version", onchange: (e) => loadCard(e.target.value) },
    card.versions.map((v) => el("option", { value: v, selected: v === card.version, text: v + (v === card.serving_version ? " (serving)" : "") })));
  box.replaceChildren(
    el("div", { class: "row" }, el("label", {}, "version ", picker)),
    el("h2", { text: `model ${card.version}` }),
    kv([
      ["serving", card.version === card.serving_version ? "yes" : `no (serving ${card.serving_version || "RRF"})`],
      ["promoted", card.promoted_version || "–"],
      ["featureset", card.featureset_id],
      ["features", (card.feature_names || []).join(", ")],
      ["base margin", card.base_margin ? card.base_margin.name : "none"],
      ["training data", `${card.label_source} · ${sizes}`],
      ["trained", `${card.created_at} · xgboost ${card.xgboost_version} · best iteration ${card.best_iteration}`],
      ["index", card.index_version || "–"],
    ]),
    el("p", { id: "card-drift", class: "meta", text: "latest drift report: …" }),
    el("h3", { text: "offline metrics" }),
    kv(metrics.map(([k, v]) => [k, fmt(v, 4)])),
    el("h3", { text: "feature importance (share of total gain)" }),
    el("table", { class: "importance" }, imp.map(([k, v]) => el("tr", {},
      el("td", { text: k }), el("td", { class: "num", text: `${(100 * v).toFixed(1)}%` }),
      el("td", {}, el("span", { class: "bar pos", style: { width: `${Math.round(100 * v)}%` } }))))));
  latestReport();
}

async function latestReport() {
  const box = $("#card-drift");
  if (!box) return;
  try {
    const { reports } = await api("/reports");
    const r = reports[0];
    if (!r) { box.textContent = "latest drift report: none yet"; return; }
    const decision = r.summary ? ` (${r.summary.decision}, model ${r.summary.model_version})` : "";
    box.replaceChildren(`latest drift report ${r.name}${decision}: `,
      ...Object.entries(r.files).map(([name, href]) =>
        el("a", { href, target: "_blank", rel: "noopener noreferrer", text: name })));
  } catch (e) {
    box.textContent = `drift reports unavailable: ${e.message}`;
  }
}

async function loadCard(version) {
  try {
    const card = await api(`/model/card${version ? `?version=${encodeURIComponent(version)}` : ""}`);
    renderCard(card);
  } catch (e) {
    $("#card").replaceChildren(el("p", { class: "error", text: e.message }));
  }
}

async function loadReports() {
  const box = $("#reports");
  try {
    const { reports } = await api("/reports");
    if (!reports.length) {
      box.replaceChildren(el("p", { text: "No drift reports in the report directory yet (ltrsearch-drift writes them)." }));
      return;
    }
    box.replaceChildren(el("ul", { class: "report-list" }, reports.map((r) => el("li", {},
      el("strong", { text: r.name }), " ",
      r.summary ? el("span", { class: `chip ${r.summary.drifted ? "drift" : "ok"}`, text: r.summary.decision }) : null,
      r.summary && r.summary.window ? el("span", { class: "meta", text: ` ${r.summary.window.since} → ${r.summary.window.until}, model ${r.summary.model_version}` }) : null,
      el("div", {}, Object.entries(r.files).map(([name, href]) =>
        el("a", { href, target: "_blank", rel: "noopener noreferrer", text: name })))))));
  } catch (e) {
    box.replaceChildren(el("p", { class: "error", text: e.message }));
  }
}

function showView(name) {
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.view === name);
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== `view-${name}`;
  if (name === "reports") loadReports();
}

async function init() {
  for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => showView(b.dataset.view));
  $("#query").addEventListener("submit", runSearch);
  try {
    const card = await api("/model/card");
    state.card = card;
    $("#serving").textContent = card.version ? `model ${card.version} · index ${card.index_version}` : `RRF (no model) · index ${card.index_version}`;
    const compare = $("#compare");
    for (const v of card.versions) {
      if (v !== card.serving_version) compare.append(el("option", { value: v, text: `model ${v}` }));
    }
    $("#filters").replaceChildren(...card.attributes.map((a) => el("span", { class: "filter", "data-attr": a },
      `${a} `, el("input", { type: "number", step: "any", placeholder: "≥", "data-op": "gte" }),
      el("input", { type: "number", step: "any", placeholder: "≤", "data-op": "lte" }))));
    renderCard(card);
  } catch (e) {
    $("#serving").textContent = "API unavailable";
    setStatus(e.message, true);
  }
  document.body.dataset.ready = "true";
}

document.addEventListener("DOMContentLoaded", init);
