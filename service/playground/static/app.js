// The schedule playground. Everything on the page is built from GET /v1/schedulers (the
// catalog: every scheduler type with its JSON Schema, defaults and a ready example) and
// /openapi.json (warmup types, and which optional endpoints this service has). The curves are
// what POST /v1/schedules/batch returns (one slot per schedule, each the body POST
// /v1/schedules/compute would return); nothing is computed here but differences.
"use strict";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#17becf"];
const DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"];
const FULL_RESOLUTION = 20000; // steps up to this come back whole; longer ones are sampled
const SAMPLED_POINTS = 4000;
const DEBOUNCE_MS = 250;

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "className") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children) if (child) node.append(child);
  return node;
};
const clone = (v) => (v === undefined ? undefined : JSON.parse(JSON.stringify(v)));

const app = {
  catalog: null, // {schedulers: [...], optimizers: [...]}
  entries: [], // catalog entries with .family, .label, .consts
  warmups: [], // [{type, schema, description}]
  paths: new Set(), // the service's endpoints, from /openapi.json
  exportTargets: [],
  state: null, // {spec, overlays: [{label, spec}], logy, cursor}
  results: new Map(), // JSON of a request -> its response body
  current: null, // the current spec's result
  seq: 0,
  timer: null,
};
window.playground = app; // for the browser tests and the curious

// ---------- JSON Schema → fields ----------

function deref(schema, defs) {
  let s = schema || {};
  for (let i = 0; s.$ref && i < 16; i++) s = defs[s.$ref.split("/").pop()] || {};
  return s;
}

function bounds(s) {
  const out = {};
  for (const k of ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems"])
    if (s[k] !== undefined) out[k] = s[k];
  return out;
}

/** Return how a property is edited: {kind, label, integer, options, ...bounds}. */
function classify(prop, defs) {
  const s = deref(prop, defs);
  const alternatives = s.anyOf || s.oneOf;
  const variants = alternatives
    ? alternatives.map((v) => deref(v, defs)).filter((v) => v.type !== "null")
    : [s];
  const itemType = (v) => deref(v.items, defs).type;
  const numeric = (t) => t === "number" || t === "integer";
  if (variants.length === 1) {
    const v = variants[0];
    if (v.enum) return { kind: "enum", options: v.enum, label: "one of " + v.enum.join(", ") };
    if (v.type === "boolean") return { kind: "bool", label: "true / false" };
    if (numeric(v.type)) return { kind: "number", integer: v.type === "integer", label: v.type, ...bounds(v) };
    if (v.type === "string") return { kind: "string", label: "text" };
    if (v.type === "array" && numeric(itemType(v)))
      return { kind: "list", label: `list of ${itemType(v)}s, comma-separated`, ...bounds(v) };
  }
  if (variants.length > 1) {
    const kinds = variants.map((v) => (v.type === "array" ? "array:" + itemType(v) : v.type));
    if (kinds.every((k) => numeric(k) || k === "array:number" || k === "array:integer")) {
      const first = variants.find((v) => numeric(v.type)) || {};
      return { kind: "numberOrList", label: "number, or one per group (comma-separated)", ...bounds(first) };
    }
    if (kinds.every((k) => k === "string" || k === "array:string"))
      return { kind: "stringOrList", label: 'text, or a JSON list of texts (["…", "…"])' };
  }
  return { kind: "json", label: "JSON" };
}

function parseNumber(text) {
  const t = text.trim();
  if (t === "") return undefined;
  const n = Number(t);
  return Number.isFinite(n) && /^[-+]?(\d|\.\d)/.test(t) ? n : t; // what is not a number goes as typed
}

function parseList(text) {
  const t = text.trim();
  if (t === "") return undefined;
  if (t.startsWith("[")) {
    try { return JSON.parse(t); } catch { return t; }
  }
  return t.split(",").map((p) => p.trim()).filter((p) => p !== "").map(parseNumber);
}

/** Return the value a field's text means (undefined: leave it out, the default applies). */
function parseField(kind, text) {
  const t = text.trim();
  if (kind === "number") return parseNumber(t);
  if (kind === "list") return parseList(t);
  if (kind === "numberOrList") return t.includes(",") || t.startsWith("[") ? parseList(t) : parseNumber(t);
  if (kind === "stringOrList") {
    if (t.startsWith("[")) { try { return JSON.parse(t); } catch { return t; } }
    return t === "" ? undefined : t;
  }
  if (kind === "json") {
    if (t === "") return undefined;
    try { return JSON.parse(t); } catch { return t; }
  }
  return t === "" ? undefined : t;
}

function formatField(kind, value) {
  if (value === undefined || value === null) return "";
  if (Array.isArray(value) && (kind === "list" || kind === "numberOrList")) return value.join(", ");
  if (kind === "json" || typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function describeBounds(c) {
  const parts = [];
  if (c.minimum !== undefined) parts.push(`≥ ${c.minimum}`);
  if (c.exclusiveMinimum !== undefined) parts.push(`> ${c.exclusiveMinimum}`);
  if (c.maximum !== undefined) parts.push(`≤ ${c.maximum}`);
  if (c.exclusiveMaximum !== undefined) parts.push(`< ${c.exclusiveMaximum}`);
  if (c.maxItems !== undefined) parts.push(`at most ${c.maxItems} items`);
  return parts.join(", ");
}

const fieldId = (path) => "f-" + path.join("-").replace(/[^A-Za-z0-9_-]/g, "_");

/**
 * Add one form field for the property at `path` (e.g. ["scheduler", "max_lr"]).
 * `def` is the documented default (undefined: none); `value` the current one.
 */
function addField(container, { path, name, prop, defs, required, def, value, description }) {
  const c = classify(prop, defs);
  const id = fieldId(path);
  const hintId = id + "-hint";
  const errId = id + "-error";
  const field = el("div", { className: "field", "data-loc": path.join(".") });
  const label = el("label", { for: id, text: name + " " });
  if (required) label.append(el("span", { className: "req", text: "required" }));
  field.append(label);
  const hint = [c.label, describeBounds(c)];
  if (def !== undefined) hint.push("default " + (def === null ? "none" : JSON.stringify(def)));
  let input;
  const describedBy = `${hintId} ${errId}`;
  if (c.kind === "bool") {
    input = el("input", { type: "checkbox", id, "aria-describedby": describedBy });
    input.checked = value !== undefined ? Boolean(value) : Boolean(def);
    input.addEventListener("change", () => {
      const v = input.checked;
      setPath(path, v === Boolean(def) && value === undefined ? undefined : v);
    });
  } else if (c.kind === "enum") {
    input = el("select", { id, "aria-describedby": describedBy });
    if (def === undefined) input.append(el("option", { value: "", text: "(not set)" }));
    for (const option of c.options)
      input.append(el("option", { value: JSON.stringify(option), text: String(option) + (option === def ? " (default)" : "") }));
    input.value = JSON.stringify(value !== undefined ? value : def) || "";
    input.addEventListener("change", () => {
      const v = input.value === "" ? undefined : JSON.parse(input.value);
      setPath(path, v === def ? undefined : v);
    });
  } else {
    const multiline = c.kind === "json" || c.kind === "stringOrList";
    input = el(multiline ? "textarea" : "input", {
      id, "aria-describedby": describedBy, rows: multiline ? 3 : undefined,
      type: multiline ? undefined : "text",
      inputmode: c.kind === "number" ? (c.integer ? "numeric" : "decimal") : undefined,
      spellcheck: "false", autocomplete: "off",
      placeholder: def !== undefined && def !== null ? formatField(c.kind, def) : undefined,
    });
    input.value = formatField(c.kind, value);
    input.addEventListener("input", () => setPath(path, parseField(c.kind, input.value)));
  }
  field.append(input);
  const text = hint.filter(Boolean).join(" · ") + (description ? " — " + description : "");
  field.append(el("small", { className: "hint", id: hintId, text }));
  field.append(el("small", { className: "error", id: errId, "data-error-for": path.join("."), role: "alert" }));
  container.append(field);
  return input;
}

// ---------- state ----------

function getPath(obj, path) {
  return path.reduce((o, k) => (o === undefined || o === null ? undefined : o[k]), obj);
}

function setPath(path, value) {
  let o = app.state.spec;
  for (const k of path.slice(0, -1)) o = o[k] = o[k] ?? (typeof k === "number" ? [] : {});
  const last = path[path.length - 1];
  if (value === undefined) delete o[last];
  else o[last] = value;
  changed();
}

// `data-busy` on <html> is "false" once every change has been computed and shown (tests wait
// for it; people see the status line).
function markBusy() { document.documentElement.dataset.busy = "true"; }
function markIdle() {
  if (!app.timer && !app.cursorTimer && !app.inflight) document.documentElement.dataset.busy = "false";
}

function changed() {
  saveHash();
  clearTimeout(app.timer);
  markBusy();
  app.timer = setTimeout(() => { app.timer = null; update(); }, DEBOUNCE_MS);
}

function entryFor(scheduler) {
  return app.entries.find((e) => e.type === scheduler.type &&
    Object.entries(e.consts).every(([k, v]) => scheduler[k] === v));
}

function defaultState() {
  const entry = app.entries.find((e) => e.type === "CosineAnnealingLR") || app.entries[0];
  return {
    spec: { scheduler: clone(entry.example.scheduler), optimizer: { type: "SGD", lr: 0.1 },
      steps: entry.example.steps || 200 },
    overlays: [], logy: false, cursor: 0,
  };
}

function saveHash() {
  const { spec, overlays, logy, cursor } = app.state;
  const text = JSON.stringify({ spec, overlays, logy, cursor });
  history.replaceState(null, "", "#" + encodeURIComponent(text));
}

function loadHash() {
  const raw = location.hash.slice(1);
  if (!raw) return null;
  try {
    const s = JSON.parse(decodeURIComponent(raw));
    if (!s || typeof s.spec !== "object" || !s.spec.scheduler) throw new Error("no spec");
    return { spec: s.spec, overlays: Array.isArray(s.overlays) ? s.overlays : [],
      logy: Boolean(s.logy), cursor: Number(s.cursor) || 0 };
  } catch {
    $("form-error").textContent = "The link's state could not be read; starting from the defaults.";
    return null;
  }
}

// ---------- the form ----------

function renderForm() {
  const spec = app.state.spec;
  const entry = entryFor(spec.scheduler);
  const families = [...new Set(app.entries.map((e) => e.family))];
  const family = entry ? entry.family : families[0];
  const famSelect = $("family");
  famSelect.replaceChildren(...families.map((f) => el("option", { value: f, text: f })));
  famSelect.value = family;
  const schedSelect = $("scheduler-type");
  schedSelect.replaceChildren(...app.entries.map((e, i) => (e.family === family
    ? el("option", { value: String(i), text: e.label }) : null)).filter(Boolean));
  if (entry) schedSelect.value = String(app.entries.indexOf(entry));
  $("scheduler-description").textContent = entry ? entry.description : "";
  const box = $("scheduler-fields");
  box.replaceChildren();
  if (entry) {
    const schema = entry.parameters;
    const defs = schema.$defs || {};
    const required = new Set(entry.required || schema.required || []);
    for (const [name, prop] of Object.entries(schema.properties || {})) {
      if (name === "type" || name in entry.consts) continue;
      const p = deref(prop, defs);
      addField(box, { path: ["scheduler", name], name, prop, defs, required: required.has(name),
        def: name in (entry.defaults || {}) ? entry.defaults[name] : p.default,
        value: spec.scheduler[name], description: p.description });
    }
  }
  renderOptimizer();
  renderGroups();
  renderWarmup();
  renderRun();
  $("logy").checked = app.state.logy;
  $("momentum").checked = (spec.include || []).includes("momentum");
}

const OPTIMIZER_FIELDS = {
  momentum: { prop: { type: "number", minimum: 0 }, description: "SGD, RMSprop: momentum (OneCycleLR and CyclicLR cycle it)." },
  betas: { prop: { type: "array", items: { type: "number" }, maxItems: 2 }, description: "Adam family: beta1, beta2 (OneCycleLR cycles beta1)." },
  weight_decay: { prop: { type: "number", minimum: 0 }, description: "Weight decay." },
};

function renderOptimizer() {
  const spec = app.state.spec;
  spec.optimizer = spec.optimizer || { type: "SGD" };
  const select = $("optimizer-type");
  select.replaceChildren(...app.catalog.optimizers.map((o) => el("option", { value: o, text: o })));
  select.value = spec.optimizer.type || "SGD";
  const box = $("optimizer-fields");
  box.replaceChildren();
  const schema = app.optimizerSchema;
  const lrProp = (schema.properties || {}).lr || { type: "number", default: 0.1 };
  addField(box, { path: ["optimizer", "lr"], name: "lr", prop: lrProp, defs: {}, def: lrProp.default,
    value: spec.optimizer.lr, description: lrProp.description });
  for (const [name, f] of Object.entries(OPTIMIZER_FIELDS))
    addField(box, { path: ["optimizer", name], name, prop: f.prop, defs: {}, value: spec.optimizer[name],
      description: f.description });
}

function renderGroups() {
  const box = $("groups");
  box.replaceChildren();
  const groups = app.state.spec.param_groups || [];
  groups.forEach((group, i) => {
    const div = el("div", { className: "group", "data-loc": `param_groups.${i}` });
    const remove = el("button", { type: "button", text: "Remove", "aria-label": `Remove group ${i}` });
    remove.addEventListener("click", () => {
      groups.splice(i, 1);
      if (!groups.length) delete app.state.spec.param_groups;
      renderGroups();
      changed();
    });
    div.append(el("div", { className: "group-head" }, el("strong", { text: `group ${i}` }), remove));
    addField(div, { path: ["param_groups", i, "lr"], name: "lr", prop: { type: "number", minimum: 0 },
      defs: {}, value: group.lr, description: "This group's initial lr (the optimizer's when empty)." });
    addField(div, { path: ["param_groups", i, "momentum"], name: "momentum", prop: { type: "number", minimum: 0 },
      defs: {}, value: group.momentum, description: "SGD's momentum for this group." });
    box.append(div);
  });
}

function renderWarmup() {
  const spec = app.state.spec;
  const select = $("warmup-type");
  select.replaceChildren(el("option", { value: "", text: "none" }),
    ...app.warmups.map((w) => el("option", { value: w.type, text: w.type })));
  select.value = spec.warmup ? spec.warmup.type : "";
  const box = $("warmup-fields");
  box.replaceChildren();
  const w = spec.warmup && app.warmups.find((x) => x.type === spec.warmup.type);
  $("warmup-description").textContent = w ? w.description : "Counted in scheduler steps; the schedule starts after it.";
  if (!w) return;
  const required = new Set(w.schema.required || []);
  for (const [name, prop] of Object.entries(w.schema.properties || {})) {
    if (name === "type") continue;
    const p = deref(prop, app.defs);
    addField(box, { path: ["warmup", name], name, prop, defs: app.defs, required: required.has(name),
      def: p.default, value: spec.warmup[name], description: p.description });
  }
}

function renderRun() {
  const spec = app.state.spec;
  const box = $("run-fields");
  box.replaceChildren();
  const props = app.requestSchema.properties || {};
  const doc = (name, fallback) => deref(props[name], app.defs).description || fallback;
  addField(box, { path: ["steps"], name: "steps", prop: { type: "integer", exclusiveMinimum: 0 }, defs: {},
    required: true, value: spec.steps, description: doc("steps", "How many optimizer steps.") });
  addField(box, { path: ["interval"], name: "interval", prop: { enum: ["step", "epoch"] }, defs: {},
    def: "step", value: spec.interval, description: doc("interval", "When the scheduler steps.") });
  if (spec.interval === "epoch" || spec.steps_per_epoch !== undefined)
    addField(box, { path: ["steps_per_epoch"], name: "steps_per_epoch", prop: { type: "integer", exclusiveMinimum: 0 },
      defs: {}, def: 1, value: spec.steps_per_epoch, description: doc("steps_per_epoch", "Optimizer steps per epoch.") });
  addField(box, { path: ["metrics"], name: "metrics", prop: { type: "array", items: { type: "number" } }, defs: {},
    value: spec.metrics, description: doc("metrics", "ReduceLROnPlateau's metric, one per scheduler step.") });
}

function bindForm() {
  $("family").addEventListener("change", () => {
    const entry = app.entries.find((e) => e.family === $("family").value);
    chooseEntry(entry);
  });
  $("scheduler-type").addEventListener("change", () => chooseEntry(app.entries[Number($("scheduler-type").value)]));
  $("optimizer-type").addEventListener("change", () => {
    app.state.spec.optimizer.type = $("optimizer-type").value;
    changed();
  });
  $("add-group").addEventListener("click", () => {
    const spec = app.state.spec;
    spec.param_groups = spec.param_groups || [];
    const base = spec.param_groups.length ? spec.param_groups[spec.param_groups.length - 1].lr : spec.optimizer.lr;
    spec.param_groups.push({ lr: (base ?? 0.1) / 10 });
    renderGroups();
    changed();
    $(fieldId(["param_groups", spec.param_groups.length - 1, "lr"])).focus();
  });
  $("warmup-type").addEventListener("change", () => {
    const type = $("warmup-type").value;
    if (!type) delete app.state.spec.warmup;
    else app.state.spec.warmup = { type, steps: app.state.spec.warmup?.steps ?? Math.max(1, Math.round((app.state.spec.steps || 100) / 10)) };
    renderWarmup();
    changed();
  });
  $("run-fields").addEventListener("change", (ev) => {
    if (ev.target.id === fieldId(["interval"])) renderRun();
  });
  $("logy").addEventListener("change", () => { app.state.logy = $("logy").checked; saveHash(); draw(); });
  $("momentum").addEventListener("change", () => {
    const spec = app.state.spec;
    const include = new Set(spec.include || []);
    if ($("momentum").checked) include.add("momentum"); else include.delete("momentum");
    if (include.size) spec.include = [...include]; else delete spec.include;
    changed();
  });
  $("pin").addEventListener("click", pin);
  const range = $("cursor-range");
  const step = $("cursor-step");
  range.addEventListener("input", () => setCursor(Number(range.value)));
  step.addEventListener("input", () => { if (step.value !== "") setCursor(Number(step.value)); });
  $("copy-permalink").addEventListener("click", () => copy(location.href, "permalink"));
  $("copy-curl").addEventListener("click", () => copy(curl(app.state.spec), "curl command"));
  $("copy-code").addEventListener("click", copyCode);
  for (const button of document.querySelectorAll("[data-download]"))
    button.addEventListener("click", () => download(button.dataset.download));
}

function chooseEntry(entry) {
  if (!entry) return;
  const spec = app.state.spec;
  spec.scheduler = clone(entry.example.scheduler);
  if (entry.example.steps) spec.steps = entry.example.steps;
  if (entry.example.metrics) spec.metrics = clone(entry.example.metrics); else delete spec.metrics;
  renderForm();
  pickExportTarget(entry.family);
  changed();
}

/** Point "copy as code" at the library that can write the family: a family's own target
 * (transformers, timm, optax, megatron) when the export endpoint has one, else torch. */
function pickExportTarget(family) {
  const targets = app.exportTargets;
  const want = targets.includes(family) ? family : "torch";
  if (targets.includes(want)) $("export-target").value = want;
}

// ---------- computing ----------

/** Return the body sent for `spec`: sampled when it is too long to draw whole. */
function requestFor(spec) {
  const body = clone(spec);
  if (Number(body.steps) > FULL_RESOLUTION) body.sample = { points: SAMPLED_POINTS };
  return body;
}

async function post(path, body) {
  const response = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body) });
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : await response.text();
  return { ok: response.ok, status: response.status, data };
}

/** Return each spec's answer ({ok, status, data}: the result, or the problem) from one
 * POST /v1/schedules/batch: a bad spec is a slot with its problem, not a failed request, so
 * the console stays clean while someone types. Results are kept by request. */
async function computeAll(specs) {
  const keys = specs.map((spec) => JSON.stringify(requestFor(spec)));
  const missing = [...new Set(keys.filter((k) => !app.results.has(k)))];
  const failed = new Map();
  if (missing.length) {
    const answer = await post("/v1/schedules/batch", { requests: missing.map((k) => JSON.parse(k)) });
    if (!answer.ok) return keys.map(() => answer);
    if (app.results.size > 64) app.results.clear();
    answer.data.results.forEach((slot, i) => {
      if (slot.status === 200) app.results.set(missing[i], { ok: true, status: 200, data: slot.result });
      else failed.set(missing[i], { ok: false, status: slot.status, data: slot.problem });
    });
  }
  return keys.map((k) => app.results.get(k) || failed.get(k));
}

async function update() {
  app.inflight = (app.inflight || 0) + 1;
  markBusy();
  try {
    await refresh();
  } finally {
    app.inflight -= 1;
    markIdle();
  }
}

async function refresh() {
  const seq = ++app.seq;
  const started = performance.now();
  $("status").textContent = "computing…";
  let answers;
  try {
    answers = await computeAll([app.state.spec, ...app.state.overlays.map((o) => o.spec)]);
  } catch (err) {
    if (seq === app.seq) $("status").textContent = "the service did not answer: " + err.message;
    return;
  }
  if (seq !== app.seq) return; // a newer change is on its way
  const [mine, ...others] = answers;
  clearErrors();
  if (!mine.ok) {
    showProblem(mine.data);
    $("status").textContent = `error ${mine.status}` + (app.current ? ": the plot shows the last schedule that worked" : "");
  } else {
    app.current = mine.data;
    app.currentSpec = clone(app.state.spec);
    const sampled = requestFor(app.state.spec).sample
      ? ` · ${mine.data.steps.length} of ${app.state.spec.steps} steps drawn (the readout is exact)` : "";
    $("status").textContent = `${mine.data.engine} engine on ${mine.data.device}, ${Math.round(performance.now() - started)} ms${sampled}`;
  }
  app.overlayResults = others.map((a) => (a.ok ? a.data : null));
  draw();
  renderWarnings();
  renderOverlays();
  await renderReadout();
  await renderDiffs();
  document.documentElement.dataset.updates = String(seq);
}

// ---------- errors ----------

function clearErrors() {
  for (const node of document.querySelectorAll("[data-error-for]")) node.textContent = "";
  for (const node of document.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  $("form-error").textContent = "";
}

/** Show each error of an RFC 9457 problem at the field its `loc` names (or the closest section). */
function showProblem(problem) {
  if (!problem || typeof problem !== "object") {
    $("form-error").textContent = String(problem);
    return;
  }
  const errors = Array.isArray(problem.errors) && problem.errors.length ? problem.errors
    : [{ loc: [], msg: problem.detail || problem.title }];
  const type = app.state.spec.scheduler.type;
  for (const err of errors) {
    let loc = err.loc || [];
    if (loc[0] === "body" && loc[1] === "requests" && typeof loc[2] === "number") loc = loc.slice(3); // a batch slot
    else if (loc[0] === "body" || loc[0] === "query") loc = loc.slice(1);
    const candidates = [loc, loc.filter((p, i) => !(i === 1 && p === type))];
    let target = null;
    for (const path of candidates) {
      for (let n = path.length; n > 0 && !target; n--)
        target = document.querySelector(`[data-error-for="${CSS.escape(path.slice(0, n).join("."))}"]`);
      if (target) break;
    }
    const node = target || $("form-error");
    node.textContent = node.textContent ? node.textContent + " " + err.msg : err.msg;
    const input = target && target.parentElement.querySelector("input, select, textarea");
    if (input && target.parentElement.classList.contains("field")) input.setAttribute("aria-invalid", "true");
  }
}

// ---------- the plot ----------

function seriesList() {
  const list = app.state.overlays.map((o, i) => ({ label: o.label, spec: o.spec, result: (app.overlayResults || [])[i],
    color: PALETTE[i % PALETTE.length] }));
  const spec = app.currentSpec || app.state.spec; // the spec of the curve on show
  list.push({ label: "current: " + describe(spec), spec, result: app.current,
    color: PALETTE[app.state.overlays.length % PALETTE.length], current: true });
  return list;
}

const shorten = (text, n) => (text.length > n ? text.slice(0, n - 1) + "…" : text);

function draw() {
  if (!window.Plotly) return;
  const narrow = $("plot").clientWidth < 480;
  const series = seriesList().map((s) => ({ ...s, label: narrow ? shorten(s.label, 44) : s.label }));
  const withMomentum = series.some((s) => s.result && s.result.momentum);
  const traces = [];
  for (const s of series) {
    if (!s.result) continue;
    const groups = s.result.lr.length;
    s.result.lr.forEach((lr, g) => traces.push({
      x: s.result.steps, y: lr, type: "scatter", mode: "lines", yaxis: "y",
      name: groups > 1 ? `${s.label} · group ${g}` : s.label, legendgroup: s.label,
      line: { color: s.color, dash: DASHES[g % DASHES.length], width: 2 },
      hovertemplate: "step %{x}<br>lr %{y:.6g}<extra>%{fullData.name}</extra>",
    }));
    if (s.result.momentum) s.result.momentum.forEach((m, g) => traces.push({
      x: s.result.steps, y: m, type: "scatter", mode: "lines", yaxis: "y2",
      name: `${groups > 1 ? `${s.label} · group ${g}` : s.label} · momentum`, legendgroup: s.label,
      showlegend: false, line: { color: s.color, dash: DASHES[g % DASHES.length], width: 1.5 },
      hovertemplate: "step %{x}<br>momentum %{y:.4g}<extra>%{fullData.name}</extra>",
    }));
  }
  const layout = {
    margin: { l: 60, r: 16, t: 16, b: 24 },
    xaxis: { title: { text: "optimizer step" }, anchor: withMomentum ? "y2" : "y" },
    yaxis: { title: { text: "learning rate" }, type: app.state.logy ? "log" : "linear", exponentformat: "e",
      domain: withMomentum ? [0.36, 1] : [0, 1] },
    showlegend: true,
    legend: { orientation: "h", x: 0, y: -0.16, yanchor: "top" },
    shapes: [{ type: "line", xref: "x", yref: "paper", x0: app.state.cursor, x1: app.state.cursor, y0: 0, y1: 1,
      line: { color: "#444", width: 1, dash: "dot" } }],
    hovermode: "closest",
    uirevision: "keep",
  };
  if (withMomentum) layout.yaxis2 = { title: { text: "momentum / beta1" }, domain: [0, 0.28] };
  if (narrow) {
    layout.margin = { l: 48, r: 8, t: 8, b: 16 };
    layout.xaxis.title = { text: "" };
    layout.legend.y = -0.1;
  }
  Plotly.react("plot", traces, layout, { responsive: true, displaylogo: false,
    modeBarButtonsToRemove: ["select2d", "lasso2d"] });
  const last = app.current ? app.current.steps[app.current.steps.length - 1] : 0;
  $("cursor-range").max = String(Math.max(last, Number(app.state.spec.steps) - 1 || 0));
  $("cursor-step").max = $("cursor-range").max;
  $("cursor-range").value = String(app.state.cursor);
  $("cursor-step").value = String(app.state.cursor);
  $("plot").setAttribute("aria-label", "learning rate against optimizer step: " + series.map((s) => s.label).join("; "));
}

function setCursor(step) {
  if (!Number.isFinite(step) || step < 0) return;
  app.state.cursor = Math.round(step);
  saveHash();
  if (window.Plotly && $("plot").layout)
    Plotly.relayout("plot", { "shapes[0].x0": app.state.cursor, "shapes[0].x1": app.state.cursor });
  $("cursor-range").value = String(app.state.cursor);
  if (Number($("cursor-step").value) !== app.state.cursor) $("cursor-step").value = String(app.state.cursor);
  clearTimeout(app.cursorTimer);
  markBusy();
  app.cursorTimer = setTimeout(async () => {
    app.cursorTimer = null;
    app.inflight = (app.inflight || 0) + 1;
    try { await renderReadout(); } finally { app.inflight -= 1; markIdle(); }
  }, 60);
}

/** Return {lr: [...per group], momentum} of `result` at `step`, exactly (asks the API when the
 * step was sampled out). */
async function valuesAt(spec, result, step) {
  const steps = result.steps;
  let lo = 0, hi = steps.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (steps[mid] === step) {
      return { lr: result.lr.map((r) => r[mid]), momentum: result.momentum ? result.momentum.map((m) => m[mid]) : null };
    }
    if (steps[mid] < step) lo = mid + 1; else hi = mid - 1;
  }
  if (step >= Number(spec.steps)) return null;
  const answer = await post("/v1/schedules/compute", { ...clone(spec), sample: { at: [step] } });
  if (!answer.ok) return null;
  return { lr: answer.data.lr.map((r) => r[0]), momentum: answer.data.momentum ? answer.data.momentum.map((m) => m[0]) : null };
}

const fmt = (v) => (v === null || v === undefined ? "—" : Number(v).toPrecision(6).replace(/\.?0+(e|$)/, "$1"));

async function renderReadout() {
  const step = app.state.cursor;
  const rows = [];
  for (const s of seriesList()) {
    if (!s.result) continue;
    const values = await valuesAt(s.spec, s.result, step);
    if (!values) continue;
    values.lr.forEach((lr, g) => rows.push(el("tr", {},
      el("td", {}, el("span", { className: "swatch", style: `background:${s.color}` }), s.label),
      el("td", { text: String(g) }), el("td", { className: "lr", text: fmt(lr) }),
      el("td", { className: "momentum", text: values.momentum ? fmt(values.momentum[g]) : "—" }))));
  }
  if (step !== app.state.cursor) return;
  $("readout-step").textContent = String(step);
  $("readout").tBodies[0].replaceChildren(...rows);
}

function renderWarnings() {
  const items = [];
  for (const s of seriesList())
    for (const w of (s.result && s.result.warnings) || [])
      items.push(el("li", { text: s.current ? w : `${s.label}: ${w}` }));
  $("warnings").replaceChildren(...items);
}

// ---------- overlay ----------

function describe(spec) {
  const s = spec.scheduler || {};
  const entry = entryFor(s);
  // a family's name alone ("cosine") is ambiguous: say whose it is ("timm cosine")
  const name = !entry ? s.type : entry.name && entry.name !== s.type ? `${s.type} ${entry.label}` : entry.label;
  const args = Object.entries(s).filter(([k]) => k !== "type" && !(entry && k in entry.consts))
    .slice(0, 3).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`);
  let text = `${name}(${args.join(", ")}) · ${spec.optimizer?.type || "SGD"}`;
  if (spec.warmup) text += ` · ${spec.warmup.type} warmup ${spec.warmup.steps}`;
  if (spec.param_groups) text += ` · ${spec.param_groups.length} groups`;
  return text;
}

function pin() {
  app.state.overlays.push({ label: describe(app.state.spec), spec: clone(app.state.spec) });
  changed();
}

function renderOverlays() {
  const list = $("overlays");
  list.replaceChildren(...app.state.overlays.map((o, i) => {
    const input = el("input", { type: "text", "aria-label": `Label of overlay ${i + 1}` });
    input.value = o.label;
    input.addEventListener("change", () => { o.label = input.value; saveHash(); draw(); renderReadout(); });
    const remove = el("button", { type: "button", text: "Remove", "aria-label": `Remove overlay ${o.label}` });
    remove.addEventListener("click", () => { app.state.overlays.splice(i, 1); changed(); });
    return el("li", {}, el("span", { className: "swatch", style: `background:${PALETTE[i % PALETTE.length]}` }), input, remove);
  }));
}

/** Differences of each overlay against the current schedule: by the compare endpoint when the
 * service has one, else from the two responses (when they cover the same steps). */
async function renderDiffs() {
  const table = $("diffs");
  const series = seriesList().filter((s) => s.result);
  if (series.length < 2) { table.replaceChildren(); return; }
  const head = el("tr", {}, el("th", { text: "overlay vs current" }), el("th", { text: "max |Δlr|" }),
    el("th", { text: "first differs at step" }));
  const current = series[series.length - 1];
  let rows;
  if (app.paths.has("/v1/schedules/compare")) {
    const answer = await post("/v1/schedules/compare", { specs: series.map((s) => requestFor(s.spec)),
      labels: series.map((s) => s.label) });
    if (answer.ok && Array.isArray(answer.data.pairs)) {
      const last = series.length - 1;
      rows = answer.data.pairs.filter((p) => p.b === last || p.a === last).map((p) => el("tr", {},
        el("td", { text: series[p.a === last ? p.b : p.a].label }), el("td", { text: fmt(p.max_abs_diff) }),
        el("td", { text: p.first_difference === null ? "identical" : String(p.first_difference) })));
    }
  }
  if (!rows) {
    rows = series.slice(0, -1).map((s) => {
      const a = s.result, b = current.result;
      if (a.steps.length !== b.steps.length || a.steps.some((x, i) => x !== b.steps[i]))
        return el("tr", {}, el("td", { text: s.label }), el("td", { text: "different steps" }), el("td", { text: "—" }));
      let max = 0, first = null;
      const groups = Math.min(a.lr.length, b.lr.length);
      for (let i = 0; i < a.steps.length; i++)
        for (let g = 0; g < groups; g++) {
          const d = Math.abs(a.lr[g][i] - b.lr[g][i]);
          if (d > max) max = d;
          if (first === null && d > 1e-12 * Math.max(Math.abs(a.lr[g][i]), Math.abs(b.lr[g][i]))) first = a.steps[i];
        }
      return el("tr", {}, el("td", { text: s.label }), el("td", { text: fmt(max) }),
        el("td", { text: first === null ? "identical" : String(first) }));
    });
  }
  table.replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
}

// ---------- share and export ----------

function show(text, what) {
  const out = $("output");
  out.value = text;
  $("status").textContent = what;
}

async function copy(text, what) {
  show(text, `${what} copied`);
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    $("status").textContent = `${what} is in the box below (the browser did not allow copying)`;
    $("output").select();
  }
}

const shellQuote = (s) => "'" + s.replace(/'/g, "'\\''") + "'";

function curl(spec) {
  return `curl -s ${shellQuote(location.origin + "/v1/schedules/compute")} \\\n  -H 'Content-Type: application/json' \\\n  -d ${shellQuote(JSON.stringify(spec))}`;
}

async function copyCode() {
  const target = $("export-target").value;
  const query = target ? "?target=" + encodeURIComponent(target) : "";
  const answer = await post("/v1/schedules/export" + query, app.state.spec);
  clearErrors();
  if (!answer.ok) { showProblem(answer.data); return; }
  copy(typeof answer.data === "string" ? answer.data : JSON.stringify(answer.data, null, 2), `${target || "python"} code`);
}

async function download(format) {
  const plot = format === "png" || format === "svg";
  const query = `?format=${format}` + (plot && app.state.logy ? "&yscale=log" : "");
  // with overlays, a plot is the batch's overlay plot: every schedule, one colour each
  const overlay = plot && app.state.overlays.length > 0;
  const path = overlay ? "/v1/schedules/batch" : "/v1/schedules/compute";
  const body = overlay ? { requests: [...app.state.overlays.map((o) => o.spec), app.state.spec] } : app.state.spec;
  const response = await fetch(path + query, { method: "POST",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  if (!response.ok) {
    clearErrors();
    showProblem(await response.json().catch(() => response.statusText));
    return;
  }
  const blob = await response.blob();
  const stem = overlay ? "overlay" : (app.state.spec.scheduler.type || "schedule").replace(/[^A-Za-z0-9_-]/g, "_");
  const name = `${stem}.${format}`;
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  $("status").textContent = `downloaded ${name} (${response.headers.get("content-type")})`;
}

// ---------- start ----------

function familyOf(entry) {
  if (entry.family) return entry.family;
  if (!entry.torch_class || entry.torch_class.startsWith("torch.")) return "torch";
  return entry.type;
}

function prepareEntries(catalog) {
  return catalog.schedulers.map((entry) => {
    const props = (entry.parameters && entry.parameters.properties) || {};
    const consts = {};
    for (const [name, prop] of Object.entries(props))
      if (name !== "type" && prop.const !== undefined) consts[name] = prop.const;
    const selector = Object.values(consts).join(" ");
    const label = entry.label || entry.title || entry.name || (selector ? `${selector}` : entry.type);
    return { ...entry, consts, family: familyOf(entry), label,
      example: entry.example || { scheduler: { type: entry.type, ...consts }, steps: 200 } };
  });
}

function readOpenapi(openapi) {
  const schemas = (openapi.components && openapi.components.schemas) || {};
  app.defs = schemas;
  app.paths = new Set(Object.keys(openapi.paths || {}));
  app.requestSchema = schemas.ScheduleRequest || { properties: {} };
  app.optimizerSchema = schemas.OptimizerSpec || { properties: {} };
  const flatten = (schema) => {
    const s = deref(schema, schemas);
    const alternatives = s.anyOf || s.oneOf;
    return alternatives ? alternatives.flatMap(flatten) : [s];
  };
  const variants = flatten((app.requestSchema.properties || {}).warmup);
  app.warmups = variants.filter((v) => v.properties && v.properties.type && v.properties.type.const)
    .map((v) => ({ type: v.properties.type.const, schema: v, description: (v.description || "").split("\n")[0] }));
  const exportPath = (openapi.paths || {})["/v1/schedules/export"];
  if (exportPath && exportPath.post) {
    const target = (exportPath.post.parameters || []).find((p) => p.name === "target");
    const schema = target ? deref(target.schema, schemas) : {};
    app.exportTargets = schema.enum || (schema.anyOf || []).flatMap((v) => v.enum || []);
    $("export-target").replaceChildren(...app.exportTargets.map((t) => el("option", { value: t, text: t })));
    $("export-controls").hidden = false;
  }
}

async function start() {
  try {
    const [catalog, openapi] = await Promise.all([
      fetch("/v1/schedulers").then((r) => r.json()),
      fetch("/openapi.json").then((r) => r.json()),
    ]);
    app.catalog = catalog;
    app.entries = prepareEntries(catalog);
    readOpenapi(openapi);
  } catch (err) {
    $("form-error").textContent = "Could not load the catalog from this service: " + err.message;
    return;
  }
  app.state = loadHash() || defaultState();
  bindForm();
  renderForm();
  // legend labels are shortened on narrow plots: redraw when the width changes
  let width = window.innerWidth;
  window.addEventListener("resize", () => {
    clearTimeout(app.resizeTimer);
    app.resizeTimer = setTimeout(() => { if (window.innerWidth !== width) { width = window.innerWidth; draw(); } }, 150);
  });
  // a link pasted into this tab's address bar (history.replaceState never fires this)
  window.addEventListener("hashchange", () => {
    const restored = location.hash.length > 1 ? loadHash() : defaultState();
    if (!restored) return;
    app.state = restored;
    renderForm();
    changed();
  });
  await update();
  const plot = $("plot");
  if (plot.on) plot.on("plotly_click", (ev) => { if (ev.points && ev.points.length) setCursor(ev.points[0].x); });
  document.documentElement.dataset.ready = "true";
}

document.addEventListener("DOMContentLoaded", start);
