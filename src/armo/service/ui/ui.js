// The explain page: a conversation and up to 16 responses → /v1/explain (and /v1/compare for two or more), drawn as
// numbers and bars; steering sliders re-score live. Plain DOM + SVG-free bars (CSS widths), no dependencies.
// Every number shown carries its exact value in data-value, so a test can compare the page with the API.
"use strict";

const BASE = new URL("..", window.location.href).href.replace(/\/$/, "");
const MAX_RESPONSES = 16;
const state = {
  key: null, // the API key: this tab's memory only
  model: null, // /v1/models "loaded"
  learned: null, // {objective: weight} of the last unsteered explain (this prompt's gating)
  unsteeredRanking: null, // ranking before any steering, to show how steering moves it
  last: null, // the last request sent: {path, body}
  timer: null,
};
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

// -- the API ----------------------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, detail) {
    super(detail ? detail.message : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  let response;
  try {
    response = await fetch(BASE + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, { type: "network", message: `the server did not answer (${e.message})` });
  }
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, data && data.error ? data.error : null);
  return data;
}

function showError(e) {
  const box = $("error");
  box.replaceChildren();
  if (!e) {
    box.hidden = true;
    return;
  }
  const d = e.detail || { type: "error", message: e.message };
  box.append(el("strong", { text: `${e.status || ""} ${d.type}`.trim() }), ": ", el("span", { class: "message", text: d.message }));
  if (d.field) box.append(" ", el("span", { class: "field", text: `(field: ${d.field})` }));
  box.hidden = false;
  if (e.status === 401) showKeyBox();
}

function showKeyBox() {
  $("key-box").hidden = false;
  $("api-key").focus();
}

// -- the model --------------------------------------------------------------------------------------------------
async function loadModel() {
  try {
    const info = await api("GET", "/v1/models");
    showError(null);
    if (!info.loaded) {
      $("model").textContent = "no model loaded yet; retrying…";
      setTimeout(loadModel, 2000);
      return;
    }
    state.model = info.loaded;
    const m = info.loaded;
    $("model").textContent =
      `${m.model} ${m.version} · backbone ${m.backbone.id} on ${m.backbone.backend} · pooling ${m.pooling} · ` +
      `${m.objectives.length} objectives · at most ${info.limits.max_tokens} tokens per sequence`;
    const list = $("objectives");
    list.replaceChildren();
    for (const o of m.objectives) {
      list.append(el("dt", { text: `${o.name} (${o.kind})` }), el("dd", { text: o.description || o.source || "—" }));
    }
    buildSteering(m.objectives.map((o) => o.name));
  } catch (e) {
    showError(e);
  }
}

// -- the editors ------------------------------------------------------------------------------------------------
function addTurn(role = "user", content = "") {
  const list = $("turns");
  const n = list.children.length + 1;
  const select = el("select", { "aria-label": `Role of turn ${n}` });
  for (const r of ["user", "assistant"]) select.append(el("option", { value: r, text: r }));
  select.value = role;
  const text = el("textarea", { rows: "3", "aria-label": `Turn ${n}`, class: "turn-text" });
  text.value = content;
  const remove = el("button", { type: "button", text: "Remove", "aria-label": `Remove turn ${n}` });
  const item = el("li", { class: "turn" }, select, text, remove);
  remove.addEventListener("click", () => item.remove());
  list.append(item);
  return text;
}

function addResponse(content = "") {
  const list = $("responses");
  if (list.children.length >= MAX_RESPONSES) return null;
  const n = list.children.length + 1;
  const text = el("textarea", { rows: "3", "aria-label": `Response ${n}`, class: "response-text" });
  text.value = content;
  const remove = el("button", { type: "button", text: "Remove", "aria-label": `Remove response ${n}` });
  const item = el("li", { class: "response" }, text, remove);
  remove.addEventListener("click", () => item.remove());
  list.append(item);
  $("add-response").disabled = list.children.length >= MAX_RESPONSES;
  return text;
}

function messages() {
  const out = [];
  const system = $("system").value.trim();
  if (system) out.push({ role: "system", content: system });
  for (const li of $("turns").children) {
    out.push({ role: li.querySelector("select").value, content: li.querySelector("textarea").value });
  }
  return out;
}

const responses = () => [...$("responses").querySelectorAll("textarea")].map((t) => t.value);

async function splitTemplated() {
  try {
    const parsed = await api("POST", "/v1/untemplate", { text: $("templated").value });
    showError(null);
    $("system").value = "";
    $("turns").replaceChildren();
    for (const m of parsed.messages) {
      if (m.role === "system") $("system").value = m.content;
      else addTurn(m.role, m.content);
    }
    const first = $("responses").querySelector("textarea") || addResponse();
    first.value = parsed.response;
    $("split-note").textContent =
      `Read as ${parsed.family}: ${parsed.messages.length} turns and a response` +
      (parsed.unterminated ? " with no end-of-turn marker." : ".");
    selectTab("turns");
  } catch (e) {
    showError(e);
  }
}

function selectTab(which) {
  for (const [name, tab, pane] of [["turns", "tab-turns", "turns-pane"], ["templated", "tab-templated", "templated-pane"]]) {
    const on = name === which;
    $(tab).setAttribute("aria-selected", String(on));
    $(tab).tabIndex = on ? 0 : -1;
    $(pane).hidden = !on;
  }
}

// -- steering ---------------------------------------------------------------------------------------------------
function buildSteering(names) {
  const box = $("steering");
  box.replaceChildren();
  names.forEach((name, i) => {
    const keep = el("input", { type: "checkbox", id: `keep-${i}`, "data-objective": name });
    keep.checked = true;
    const slider = el("input", {
      type: "range", id: `weight-${i}`, min: "0", max: "2", step: "0.01", value: "0",
      "aria-label": `Weight of ${name}`, "data-objective": name, disabled: "",
    });
    const out = el("output", { for: `weight-${i}`, text: "—" });
    const row = el("div", { class: "steer-row" }, keep, el("label", { for: `keep-${i}`, text: name }), slider, out);
    slider.addEventListener("input", () => {
      slider.dataset.touched = "1";
      out.textContent = Number(slider.value).toFixed(2);
      rescoreSoon();
    });
    keep.addEventListener("change", rescoreSoon);
    box.append(row);
  });
}

function setLearned(weights) {
  state.learned = weights;
  for (const slider of $("steering").querySelectorAll("input[type=range]")) {
    const w = weights[slider.dataset.objective] ?? 0;
    const max = Math.max(2, Math.ceil(w * 2));
    slider.max = String(max);
    slider.value = String(w);
    slider.disabled = false;
    delete slider.dataset.touched;
    slider.nextElementSibling.textContent = w.toFixed(2);
  }
}

function steeringOptions() {
  const opts = {};
  const sliders = [...$("steering").querySelectorAll("input[type=range]")];
  if (sliders.some((s) => s.dataset.touched)) {
    opts.weights = Object.fromEntries(sliders.map((s) => [s.dataset.objective, Number(s.value)]));
  }
  const masked = [...$("steering").querySelectorAll("input[type=checkbox]")].filter((c) => !c.checked);
  if (masked.length) opts.mask = masked.map((c) => c.dataset.objective);
  return opts;
}

function resetSteering() {
  for (const c of $("steering").querySelectorAll("input[type=checkbox]")) c.checked = true;
  if (state.learned) setLearned(state.learned);
  score();
}

function rescoreSoon() {
  clearTimeout(state.timer);
  state.timer = setTimeout(score, 250);
}

// -- scoring ----------------------------------------------------------------------------------------------------
async function score() {
  const msgs = messages();
  const resp = responses();
  if (!resp.length) {
    showError(new ApiError(0, { type: "input", message: "add at least one response" }));
    return;
  }
  const opts = steeringOptions();
  const steered = Object.keys(opts).length > 0;
  const body = { items: resp.map((r) => ({ messages: msgs, response: r })), ...opts };
  state.last = { path: "/v1/explain", body };
  writeSnippet();
  $("status").textContent = "scoring…";
  try {
    const explained = await api("POST", "/v1/explain", body);
    const compared = resp.length >= 2 ? await api("POST", "/v1/compare", { messages: msgs, responses: resp, ...opts }) : null;
    showError(null);
    if (!steered) {
      const ok = explained.results.find((r) => r.score !== null);
      if (ok) setLearned(ok.weights);
      state.unsteeredRanking = compared ? compared.ranking : null;
    }
    render(explained, compared, steered);
    $("status").textContent = `scored by ${explained.model} ${explained.version}${steered ? " (steered)" : ""}`;
  } catch (e) {
    $("status").textContent = "";
    showError(e);
  }
}

// -- drawing ----------------------------------------------------------------------------------------------------
function num(value, digits = 4, field = "") {
  const span = el("span", { class: "num", "data-value": String(value), text: value === null ? "—" : value.toFixed(digits) });
  if (field) span.dataset.field = field;
  return span;
}

function bar(value, scale, fromZero = false) {
  // A horizontal bar from the centre (right for positive, left for negative), or from the left edge for values that
  // are never negative (weights); its length is relative to `scale`.
  const track = el("span", { class: fromZero ? "bar from-zero" : "bar", "aria-hidden": "true" });
  const fill = el("span", { class: value >= 0 ? "fill pos" : "fill neg" });
  const share = scale > 0 ? Math.min(1, Math.abs(value) / scale) : 0;
  fill.style.width = `${(share * (fromZero ? 100 : 50)).toFixed(2)}%`;
  fill.style[value >= 0 ? "left" : "right"] = fromZero ? "0" : "50%";
  track.append(fill);
  return track;
}

function render(explained, compared, steered) {
  const names = explained.objectives;
  const weights = explained.results.find((r) => r.score !== null)?.weights || {};
  const gating = $("gating");
  gating.replaceChildren(el("h3", { text: steered ? "Weights (steered)" : "Gating weights for this prompt (learned)" }));
  const gmax = Math.max(...Object.values(weights), 1e-9);
  const glist = el("table", { class: "chart", id: "gating-table" });
  for (const n of names) {
    glist.append(el("tr", { "data-objective": n }, el("th", { scope: "row", text: n }),
      el("td", {}, num(weights[n] ?? 0, 3, "weight")), el("td", { class: "bar-cell" }, bar(weights[n] ?? 0, gmax, true))));
  }
  gating.append(glist);

  const rankOf = (ranking, i) => (ranking ? ranking.indexOf(i) + 1 : null);
  const box = $("results");
  box.replaceChildren();
  explained.results.forEach((r, i) => {
    const card = el("article", { class: "card", id: `result-${i}`, "aria-label": `Response ${i + 1}` });
    const head = el("h3", { text: `Response ${i + 1}` });
    card.append(head);
    if (r.error) {
      card.append(el("p", { class: "item-error", role: "status", text: `${r.error.type}: ${r.error.message}${r.error.field ? ` (field: ${r.error.field})` : ""}` }));
      box.append(card);
      return;
    }
    const facts = el("p", { class: "facts" }, "score ", num(r.score, 4, "score"), ` · ${r.tokens} tokens`);
    facts.dataset.tokens = String(r.tokens);
    if (r.truncated) facts.append(" · ", el("strong", { class: "flag", text: "truncated" }));
    if (compared) {
      const now = rankOf(compared.ranking, i);
      const before = steered ? rankOf(state.unsteeredRanking, i) : null;
      const rank = el("span", { class: "rank", "data-rank": String(now), text: ` · rank ${now} of ${compared.ranking.length}` });
      facts.append(rank);
      if (before !== null && before !== now) {
        facts.append(el("span", { class: now < before ? "moved up" : "moved down", text: ` (was ${before} ${now < before ? "▲" : "▼"})` }));
      }
    }
    card.append(facts);
    const scale = Math.max(...names.map((n) => Math.max(Math.abs(r.rewards[n]), Math.abs(r.debiased[n]))), 1e-9);
    const cscale = Math.max(...names.map((n) => Math.abs(r.contributions[n])), 1e-9);
    const table = el("table", { class: "chart objectives" });
    table.append(el("tr", {}, ...["objective", "raw r", "", "debiased r′", "", "contribution g·r′", ""].map((t) => el("th", { scope: "col", text: t }))));
    for (const n of names) {
      table.append(el("tr", { "data-objective": n }, el("th", { scope: "row", text: n }),
        el("td", {}, num(r.rewards[n], 3, "raw")), el("td", { class: "bar-cell" }, bar(r.rewards[n], scale)),
        el("td", {}, num(r.debiased[n], 3, "debiased")), el("td", { class: "bar-cell" }, bar(r.debiased[n], scale)),
        el("td", {}, num(r.contributions[n], 4, "contribution")), el("td", { class: "bar-cell" }, bar(r.contributions[n], cscale))));
    }
    const total = names.reduce((s, n) => s + r.contributions[n], 0);
    table.append(el("tr", { class: "total" }, el("th", { scope: "row", text: "sum = score" }), el("td"), el("td"), el("td"), el("td"),
      el("td", {}, num(total, 4, "sum")), el("td")));
    card.append(table);
    card.append(el("p", { class: "note", text: `verbosity penalty ${r.verbosity_penalty.toFixed(4)} (what debiasing took off)` }));
    box.append(card);
  });
  renderBestOfN(compared);
}

function heat(p) {
  // 0 → blue, 0.5 → white, 1 → red; the text stays dark enough to read on every shade.
  const t = Math.abs(p - 0.5) * 2;
  const [r, g, b] = p >= 0.5 ? [255, 255 - 150 * t, 255 - 150 * t] : [255 - 150 * t, 255 - 150 * t, 255];
  return `rgb(${r | 0}, ${g | 0}, ${b | 0})`;
}

function renderBestOfN(compared) {
  $("bon").hidden = !compared;
  if (!compared) return;
  const ranking = $("ranking");
  ranking.replaceChildren();
  for (const i of compared.ranking) {
    ranking.append(el("li", { "data-index": String(i) }, `Response ${i + 1}: `, num(compared.scores[i], 4, "score")));
  }
  const n = compared.scores.length;
  const p = Array.from({ length: n }, () => Array(n).fill(null));
  for (const x of compared.pairwise) {
    p[x.a][x.b] = x.p_a_over_b;
    p[x.b][x.a] = 1 - x.p_a_over_b;
  }
  const table = el("table", { class: "heatmap", id: "heatmap-table" });
  table.append(el("caption", { text: "P(row ≻ column), Bradley-Terry" }));
  table.append(el("tr", {}, el("th"), ...Array.from({ length: n }, (_, j) => el("th", { scope: "col", text: `#${j + 1}` }))));
  for (let a = 0; a < n; a++) {
    const row = el("tr", {}, el("th", { scope: "row", text: `#${a + 1}` }));
    for (let b = 0; b < n; b++) {
      const cell = el("td");
      if (a === b) cell.textContent = "—";
      else {
        cell.append(num(p[a][b], 2, "p"));
        cell.style.background = heat(p[a][b]);
        cell.dataset.a = String(a);
        cell.dataset.b = String(b);
      }
      row.append(cell);
    }
    table.append(row);
  }
  $("heatmap").replaceChildren(table);
}

// -- reproducing the request ------------------------------------------------------------------------------------
function shellQuote(s) {
  return `'${s.replace(/'/g, "'\\''")}'`;
}

function snippets() {
  if (!state.last) return { curl: "", python: "" };
  const { path, body } = state.last;
  const auth = state.key ? ` \\\n  -H "Authorization: Bearer $ARMO_API_KEY"` : "";
  const curl = `curl -s ${BASE}${path} -H 'Content-Type: application/json'${auth} \\\n  -d ${shellQuote(JSON.stringify(body))}`;
  const { items, ...options } = body;
  const opts = Object.keys(options).length ? `, **json.loads(${JSON.stringify(JSON.stringify(options))})` : "";
  const python = [
    "import json, os",
    "from armo.client import RewardClient",
    "",
    `items = json.loads(${JSON.stringify(JSON.stringify(items))})`,
    `with RewardClient(${JSON.stringify(BASE)}, api_key=os.environ.get("ARMO_API_KEY")) as client:`,
    `    for result in client.explain(items${opts}):`,
    "        print(result.score, result.contributions)",
  ].join("\n");
  return { curl, python };
}

function writeSnippet(kind = "curl") {
  $("snippet").textContent = snippets()[kind];
}

async function copy(kind) {
  writeSnippet(kind);
  const text = $("snippet").textContent;
  try {
    await navigator.clipboard.writeText(text);
    $("status").textContent = `copied as ${kind}`;
  } catch (_) {
    // No clipboard permission (or not a secure origin): select the text so Ctrl+C copies it.
    const range = document.createRange();
    range.selectNodeContents($("snippet"));
    window.getSelection().removeAllRanges();
    window.getSelection().addRange(range);
    $("status").textContent = "select-all done: press Ctrl+C to copy";
  }
}

// -- wiring -----------------------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  addTurn("user", "");
  addResponse("");
  addResponse("");
  $("add-turn").addEventListener("click", () => {
    const last = $("turns").lastElementChild;
    const role = last && last.querySelector("select").value === "user" ? "assistant" : "user";
    addTurn(role).focus();
  });
  $("add-response").addEventListener("click", () => addResponse()?.focus());
  $("score").addEventListener("click", score);
  $("split").addEventListener("click", splitTemplated);
  $("reset-steering").addEventListener("click", resetSteering);
  $("copy-curl").addEventListener("click", () => copy("curl"));
  $("copy-python").addEventListener("click", () => copy("python"));
  $("tab-turns").addEventListener("click", () => selectTab("turns"));
  $("tab-templated").addEventListener("click", () => selectTab("templated"));
  for (const tab of ["tab-turns", "tab-templated"]) {
    $(tab).addEventListener("keydown", (e) => {
      if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
        const next = tab === "tab-turns" ? "templated" : "turns";
        selectTab(next);
        $(`tab-${next}`).focus();
      }
    });
  }
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.key = $("api-key").value.trim() || null;
    $("key-box").hidden = true;
    loadModel();
  });
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") {
      e.preventDefault();
      score();
    }
  });
  loadModel();
});
