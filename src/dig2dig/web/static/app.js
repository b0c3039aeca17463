// dig2dig's page: talks to the JSON job API of `dig2dig serve` (see dig2dig/web/server.py).
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;        // GET /api/info
let files = [];         // the chosen sources
let previews = [];      // their object URLs
let job = null;         // the job being followed
let outcome = false;    // the progress line says how the last job ended
let timer = null;

async function api(path, options) {
  const r = await fetch(path, options);
  const body = r.headers.get("content-type")?.includes("json") ? await r.json() : null;
  if (!r.ok) throw new Error((body && (body.detail?.toString?.() || JSON.stringify(body.detail))) || r.statusText);
  return body;
}

function setError(text) { $("error").textContent = text ? `dig2dig: error: ${text}` : ""; }
function method() { return info.methods.find((m) => m.name === $("method").value); }

async function init() {
  info = await api("/api/info");
  $("prior-info").textContent = `Prior: ${info.prior.name} on ${info.device}; dig2dig ${info.version}.`;
  for (const t of info.tasks) $("task").add(new Option(t, t));
  for (const r of info.register) $("register").add(new Option(r, r));
  for (const m of info.methods) $("method").add(new Option(m.name, m.name));
  $("method").value = "dig2dig";
  showMethod();
}

function optionInput(o) {
  const wrap = document.createElement("div");
  wrap.className = "field option";
  const label = document.createElement("label");
  label.textContent = o.name;
  label.title = o.help;
  label.htmlFor = `opt-${o.name}`;
  let input;
  if (o.choices) {
    input = document.createElement("select");
    input.add(new Option(`default (${o.default_text})`, ""));
    for (const c of o.choices) input.add(new Option(c, c));
  } else if (o.kind === "bool") {
    input = document.createElement("select");
    input.add(new Option(`default (${o.default_text})`, ""));
    input.add(new Option("on", "true"));
    input.add(new Option("off", "false"));
  } else {
    input = document.createElement("input");
    input.type = o.kind === "int" || o.kind === "float" ? "number" : "text";
    if (o.kind === "float") input.step = "any";
    input.placeholder = o.default_text;
  }
  input.id = `opt-${o.name}`;
  input.dataset.option = o.name;
  input.dataset.kind = o.kind;
  const help = document.createElement("small");
  help.textContent = o.help + (o.range && !o.choices ? ` (${o.range})` : "");
  wrap.append(label, input, help);
  return wrap;
}

function showMethod() {
  const m = method();
  $("method-about").textContent = m.description;
  $("steps").disabled = !m.needs_prior;
  $("steps").value = "";
  $("steps").placeholder = m.needs_prior ? `${m.default_steps}` : "none";
  $("steps").title = m.needs_prior ? `default ${m.default_steps}` : "a classical method takes no steps";
  const box = $("options");
  box.replaceChildren(...m.options.filter((o) => !info.not_from_requests.includes(o.name)).map(optionInput));
  $("options-box").hidden = box.children.length === 0;
  ready();
}

function ready() {
  const m = method();
  const n = files.length;
  const ok = n >= m.min_sources && (m.max_sources === null || n <= m.max_sources) && n <= info.limits.max_sources;
  $("fuse").disabled = !ok || (job && ["queued", "running"].includes(job.state));
  if (!job && !outcome) $("progress-text").textContent = ok ? "Ready." :
    `${m.name} fuses ${m.max_sources === m.min_sources ? "exactly " + m.min_sources : m.min_sources + " or more"} sources.`;
}

async function pickFiles(list) {
  outcome = false;
  files = Array.from(list);
  previews.forEach((u) => URL.revokeObjectURL(u));
  previews = files.map((f) => URL.createObjectURL(f));
  const thumbs = $("thumbs");
  thumbs.replaceChildren();
  for (const [k, f] of files.entries()) {
    const li = document.createElement("li");
    const img = document.createElement("img");
    img.src = previews[k];
    img.alt = f.name;
    const cap = document.createElement("span");
    cap.textContent = f.name;
    img.onload = () => { cap.textContent = `${f.name} · ${img.naturalWidth}×${img.naturalHeight}`; };
    li.append(img, cap);
    thumbs.append(li);
  }
  setError("");
  if (files.length) {
    const q = files.map((f) => `name=${encodeURIComponent(f.name)}`).join("&");
    const guess = await api(`/api/task?${q}`);
    $("task-guess").textContent = guess.task === "auto" ? `auto: ${guess.reason}` : `guessed ${guess.task} (${guess.reason})`;
    if (guess.task !== "auto") $("task").value = guess.task;
  }
  ready();
}

function chosenOptions() {
  const out = {};
  for (const el of $("options").querySelectorAll("[data-option]")) {
    if (el.value === "") continue;
    const k = el.dataset.kind;
    out[el.dataset.option] = k === "int" ? parseInt(el.value, 10) : k === "float" ? parseFloat(el.value) :
      k === "bool" ? el.value === "true" : el.value;
  }
  return out;
}

async function fuse() {
  outcome = false;
  setError("");
  clearResult();
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  form.append("method", $("method").value);
  if ($("steps").value) form.append("steps", $("steps").value);
  form.append("seed", $("seed").value || "0");
  form.append("task", $("task").value);
  if ($("resize").checked) form.append("resize", "true");
  if ($("register").value !== "off") form.append("register", $("register").value);
  form.append("options", JSON.stringify(chosenOptions()));
  $("fuse").disabled = true;
  try {
    const r = await api("/api/jobs", { method: "POST", body: form });
    job = { id: r.id, state: "queued" };
    $("cancel").disabled = false;
    poll();
  } catch (e) {
    setError(e.message);
    job = null;
    ready();
  }
}

async function poll() {
  if (!job) return;
  let s;
  try {
    s = await api(`/api/jobs/${job.id}`);
  } catch (e) {
    setError(e.message);
    job = null;
    $("cancel").disabled = true;
    ready();
    return;
  }
  job.state = s.state;
  const p = s.progress;
  const text = $("progress-text");
  if (s.state === "queued") {
    text.textContent = s.queue_position ? `Waiting: ${s.queue_position} job(s) ahead.` : "Starting…";
  } else if (s.state === "running") {
    $("bar").max = p.total || 1;
    $("bar").value = p.done;
    text.textContent = p.total ? `Step ${p.done} of ${p.total}` + (p.eta_s !== null ? ` · about ${Math.ceil(p.eta_s)} s left` : "")
      : "Fusing…";
  }
  if (["done", "failed", "cancelled"].includes(s.state)) {
    $("cancel").disabled = true;
    outcome = true;
    if (s.state === "done") {
      $("bar").value = $("bar").max;
      const reg = s.result.registration;
      const covered = reg ? ` Registered (${reg.mode}); every source covers ${(100 * reg.valid_fraction).toFixed(1)} %.` : "";
      text.textContent = `Done: ${s.result.width}×${s.result.height}, task ${s.result.task}.${covered}`;
      showResult(s);
    } else if (s.state === "failed") {
      text.textContent = "Failed.";
      setError(s.error);
    } else {
      text.textContent = "Cancelled.";
    }
    const finished = job;
    job = null;
    ready();
    return finished;
  }
  timer = setTimeout(poll, 400);
}

function clearResult() {
  $("result-box").hidden = true;
  for (const el of document.querySelectorAll("#gallery .source")) el.remove();
  $("links").hidden = true;
  $("dig").hidden = true;
  $("ccf").hidden = true;
  $("bar").value = 0;
}

function showResult(s) {
  const base = `/api/jobs/${s.id}`;
  const img = $("result");
  img.src = `${base}/result.png`;
  img.width = s.result.width;
  img.height = s.result.height;
  $("result-caption").textContent = `fused (${s.method}, seed ${s.result.seed}): ` +
    Object.entries(s.result.roles).map(([role, name]) => `${role} = ${name}`).join(", ");
  $("result-box").hidden = false;
  for (const [k, f] of files.entries()) {  // the sources beside the result, at the same scale
    const fig = document.createElement("figure");
    fig.className = "source";
    const src = document.createElement("img");
    src.src = previews[k];
    src.alt = f.name;
    src.width = s.result.width;
    src.height = s.result.height;
    const cap = document.createElement("figcaption");
    cap.textContent = f.name;
    fig.append(src, cap);
    $("gallery").insertBefore(fig, $("result-box"));
  }
  $("download").href = `${base}/result.png`;
  $("report").href = `${base}/report.json`;
  $("links").hidden = false;
  const made = s.result.files;
  const refreshes = s.result.refreshes || [];
  if (refreshes.length) {
    const slider = $("refresh");
    slider.max = refreshes.length - 1;
    slider.value = 0;  // the first refresh carries the strongest weights
    const show = () => {
      const step = refreshes[slider.value];
      $("refresh-label").textContent = `${Number(slider.value) + 1} of ${refreshes.length} (reverse step ${step})`;
      $("weights").src = `${base}/files/weights_step${String(step).padStart(3, "0")}.png`;
    };
    slider.oninput = show;
    show();
    $("curves").src = `${base}/files/dig_curves.png`;
    $("curves").hidden = !made.includes("dig_curves.png");
    $("dig").hidden = false;
  }
  if (made.includes("ccf_selection.png")) {
    $("selection").src = `${base}/files/ccf_selection.png`;
    $("ccf").hidden = false;
  }
}

async function cancel() {
  if (!job) return;
  try {
    await api(`/api/jobs/${job.id}`, { method: "DELETE" });
  } catch (e) {
    setError(e.message);
  }
}

$("sources").addEventListener("change", (e) => pickFiles(e.target.files));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  pickFiles(e.dataTransfer.files);
});
$("method").addEventListener("change", showMethod);
$("fuse").addEventListener("click", fuse);
$("cancel").addEventListener("click", cancel);
init().catch((e) => setError(e.message));
