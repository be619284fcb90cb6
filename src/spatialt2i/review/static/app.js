// Pair review page: plain JS, no build. State lives on the server; this page only navigates.
// body[data-state] is one of loading | login | ready | busy | reason | done (tests wait on it).
"use strict";

const NAME_KEY = "spatialt2i-review-reviewer";
const $ = (id) => document.getElementById(id);
const S = { reviewer: null, pos: null, total: 0, item: null, info: null };

function setState(s) { document.body.dataset.state = s; }
function state() { return document.body.dataset.state; }

function toast(msg) {
  const t = $("toast");
  t.textContent = msg;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 5000);
}

async function api(method, url, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(url, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { /* not JSON */ }
  if (!r.ok) {
    const err = new Error((data && data.detail) || `${method} ${url}: HTTP ${r.status}`);
    err.status = r.status;
    throw err;
  }
  return data;
}

const enc = encodeURIComponent;

function renderSpans(el, text, spans) {
  // Text with <mark> around [start, end) spans; text nodes only, never innerHTML.
  el.textContent = "";
  let at = 0;
  for (const [a, b, k] of spans) {
    if (a > at) el.appendChild(document.createTextNode(text.slice(at, a)));
    const m = document.createElement("mark");
    m.className = "rel";
    m.dataset.perturbation = String(k);
    m.textContent = text.slice(a, b);
    el.appendChild(m);
    at = b;
  }
  if (at < text.length) el.appendChild(document.createTextNode(text.slice(at)));
}

function renderProgress(p) {
  $("progress").hidden = false;
  $("n-accepted").textContent = p.accepted;
  $("n-rejected").textContent = p.rejected;
  $("n-skipped").textContent = p.skipped;
  $("n-remaining").textContent = p.remaining;
  $("progress-text").textContent = `${p.done} / ${p.assigned} done`;
  $("bar-fill").style.width = p.assigned ? `${(100 * p.done) / p.assigned}%` : "0";
}

function metaRow(table, key, value) {
  const tr = document.createElement("tr");
  const th = document.createElement("th");
  th.textContent = key;
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "—" : String(value);
  tr.append(th, td);
  table.appendChild(tr);
}

function renderItem(item) {
  const p = item.pair;
  S.item = item;
  S.pos = item.pos;
  S.total = item.total;
  const art = $("pair");
  art.dataset.pairId = p.id;
  art.dataset.pos = String(item.pos);
  art.dataset.verdict = item.verdict ? item.verdict.verdict : "";
  $("pos-text").textContent = `pair ${item.pos + 1} of ${item.total}`;
  $("pair-id").textContent = p.id;
  const badge = $("my-verdict");
  badge.className = "verdict-badge" + (item.verdict ? " " + item.verdict.verdict : "");
  badge.textContent = item.verdict
    ? { accept: "accepted", reject: "rejected", skip: "skipped" }[item.verdict.verdict] +
      (item.verdict.reason ? `: ${item.verdict.reason}` : "")
    : "";
  renderSpans($("prompt"), p.prompt || "", p.highlights.prompt);
  renderSpans($("perturbed-prompt"), p.perturbed_prompt || "", p.highlights.perturbed_prompt);
  $("img-chosen").src = `/api/pairs/${enc(p.id)}/image/chosen`;
  $("img-rejected").src = `/api/pairs/${enc(p.id)}/image/rejected`;
  const t = $("meta");
  t.textContent = "";
  metaRow(t, "id", p.id);
  metaRow(t, "split", p.split);
  (p.perturbations || []).forEach((x, i) => metaRow(t, `perturbation ${i + 1} (${x.type})`, `${x.before}  →  ${x.after}`));
  if (p.highlights.unlocated_before.length || p.highlights.unlocated_after.length)
    metaRow(t, "not found in prompts", `perturbation(s) ${[...new Set([...p.highlights.unlocated_before, ...p.highlights.unlocated_after])].map((k) => k + 1).join(", ")}`);
  for (const key of ["perturbation_kind", "n_perturbations", "n_objects", "n_relations", "relation_kinds",
                     "source", "seed", "verified"]) {
    if (key in p) metaRow(t, key, Array.isArray(p[key]) ? p[key].join(", ") : p[key]);
  }
  metaRow(t, "assigned to", (p.assigned_to || []).join(", "));
  renderProgress(item.progress);
  $("done").hidden = true;
  $("pair").hidden = false;
  setState("ready");
}

async function show(pos) {
  setState("busy");
  try {
    renderItem(await api("GET", `/api/reviewers/${enc(S.reviewer)}/queue/${pos}`));
  } catch (e) {
    toast(e.message);
    setState(S.item ? "ready" : "login");
  }
}

async function showDone() {
  const p = await api("GET", `/api/reviewers/${enc(S.reviewer)}/progress`);
  renderProgress(p);
  S.pos = S.total;
  $("pair").hidden = true;
  $("done").hidden = false;
  setState("done");
}

async function goNext(after) {
  const n = await api("GET", `/api/reviewers/${enc(S.reviewer)}/next?after=${after}`);
  S.total = n.total;
  if (n.pos === null) await showDone();
  else await show(n.pos);
}

async function decide(verdict, reason) {
  if (!S.item) return;
  setState("busy");
  try {
    await api("POST", "/api/verdicts", { pair_id: S.item.pair.id, reviewer: S.reviewer, verdict, reason: reason || null });
    await goNext(S.pos);
  } catch (e) {
    toast(e.message);
    if (e.status === 403) await goNext(S.pos); // reassigned meanwhile: move on
    else setState("ready");
  }
}

function openReason() {
  $("reason-form").hidden = false;
  $("reason").value = "";
  setState("reason");
  $("reason").focus();
}

function closeReason() {
  $("reason-form").hidden = true;
  $("reason").blur();
  setState("ready");
}

async function back() {
  if (S.pos !== null && S.pos > 0) await show(S.pos - 1);
}

async function forward() {
  if (S.pos !== null && S.pos + 1 < S.total) await show(S.pos + 1);
}

async function join(name) {
  setState("busy");
  try {
    const r = await api("POST", "/api/reviewers", { name });
    S.reviewer = r.name;
    localStorage.setItem(NAME_KEY, r.name);
    $("reviewer-name").textContent = r.name;
    $("who").hidden = false;
    $("login").hidden = true;
    $("review").hidden = false;
    if (document.activeElement) document.activeElement.blur();
    S.item = null;
    await goNext(-1);
  } catch (e) {
    toast(e.message);
    showLogin();
  }
}

async function showLogin() {
  S.reviewer = null;
  S.item = null;
  $("who").hidden = true;
  $("review").hidden = true;
  $("progress").hidden = true;
  $("login").hidden = false;
  const box = $("known-reviewers");
  box.textContent = "";
  try {
    const rs = await api("GET", "/api/reviewers");
    for (const r of rs) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = `${r.reviewer} (${r.done}/${r.assigned})`;
      b.addEventListener("click", () => join(r.reviewer));
      box.appendChild(b);
    }
  } catch (e) { toast(e.message); }
  setState("login");
  $("login-name").focus();
}

async function loadStats() {
  const box = $("stats");
  try {
    const s = await api("GET", "/api/stats");
    const a = s.agreement;
    const f = (x, d) => (x === null ? "n/a" : x.toFixed(d));
    box.textContent = "";
    const p = document.createElement("p");
    p.textContent = `${s.reviewed_pairs} of ${s.pairs} pairs reviewed; ${a.n_items} reviewed twice: ` +
      `${f(a.percent_agreement, 1)} % agreement, Cohen's kappa ${f(a.cohen_kappa, 3)}.`;
    box.appendChild(p);
    const t = document.createElement("table");
    for (const b of a.by_reviewer_pair)
      metaRow(t, b.reviewers.join(" / "), `n=${b.n}, ${f(b.percent_agreement, 1)} %, kappa ${f(b.cohen_kappa, 3)}`);
    box.appendChild(t);
  } catch (e) { box.textContent = e.message; }
}

document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const st = state();
  if (st === "reason") {
    if (ev.key === "Escape") { ev.preventDefault(); closeReason(); }
    else if (ev.key === "Enter") {
      ev.preventDefault();
      const reason = $("reason").value;
      $("reason-form").hidden = true;
      $("reason").blur();
      decide("reject", reason);
    }
    return;
  }
  if (ev.target && (ev.target.tagName === "INPUT" || ev.target.tagName === "TEXTAREA")) return;
  if (st !== "ready" && st !== "done") return;
  const k = ev.key;
  if (st === "ready" && (k === "a" || k === "A")) { ev.preventDefault(); decide("accept"); }
  else if (st === "ready" && (k === "r" || k === "R")) { ev.preventDefault(); openReason(); }
  else if (st === "ready" && (k === "s" || k === "S")) { ev.preventDefault(); decide("skip"); }
  else if (k === "b" || k === "B" || k === "ArrowLeft") { ev.preventDefault(); back(); }
  else if (st === "ready" && k === "ArrowRight") { ev.preventDefault(); forward(); }
});

$("btn-accept").addEventListener("click", () => state() === "ready" && decide("accept"));
$("btn-reject").addEventListener("click", () => state() === "ready" && openReason());
$("btn-skip").addEventListener("click", () => state() === "ready" && decide("skip"));
$("btn-back").addEventListener("click", () => back());
$("btn-forward").addEventListener("click", () => forward());
$("switch").addEventListener("click", () => { localStorage.removeItem(NAME_KEY); showLogin(); });
$("stats-box").addEventListener("toggle", (ev) => { if (ev.target.open) loadStats(); });
$("login-form").addEventListener("submit", (ev) => { ev.preventDefault(); join($("login-name").value.trim()); });

(async function init() {
  try {
    S.info = await api("GET", "/api/info");
    $("dataset-name").textContent = `· ${S.info.dataset} (${S.info.pairs} pairs)`;
    $("per-pair").textContent = S.info.reviewers_per_pair;
  } catch (e) { toast(e.message); }
  const saved = localStorage.getItem(NAME_KEY);
  if (saved) await join(saved);
  else await showLogin();
})();
