// pstyle's web page: a client of the public HTTP API (/v1/...), nothing more.
// The API key lives in sessionStorage; every request sends it as a Bearer token. Text that users or
// the API wrote reaches the page through textContent only, never as HTML.

const API = new URL("../", location.href); // the ingress that serves this page also serves the API
const KEY = "pstyle-api-key";
const $ = (id) => document.getElementById(id);
const state = { me: null, photo: null, photoUrl: null, last: null, history: [], job: null };

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Serve stamps x-request-id on every answer it writes. A 5xx without one is the front's own page
// (HAProxy could not replay a call that was inside a dying Ingress replica), as is a dropped
// connection: a call that is safe to repeat is sent once more.
const lostByFront = (response) => response.status >= 500 && !response.headers.has("x-request-id");

async function send(url, init, idempotent) {
  try {
    const response = await fetch(url, init);
    if (!idempotent || !lostByFront(response)) return response;
  } catch (error) {
    if (!idempotent) throw error;
  }
  return fetch(url, init);
}

async function api(path, { method = "GET", body, json, idempotent = method === "GET" } = {}) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}` };
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const response = await send(new URL(path, API), { method, body, headers }, idempotent);
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error || message;
    } catch { /* not JSON: keep the status line */ }
    if (response.status === 401 && path !== "v1/me") signOut("Your key is no longer valid: sign in again.");
    throw new ApiError(response.status, message);
  }
  return response;
}

function showError(id, error) {
  $(id).textContent = error ? (error.message || String(error)) : "";
}

// Runs `work` with `button` busy: disabled (no double submit) and marked aria-busy; errors go to `errorId`.
async function busy(button, errorId, work) {
  if (button.getAttribute("aria-busy") === "true") return;
  button.setAttribute("aria-busy", "true");
  button.disabled = true;
  showError(errorId, null);
  try {
    await work();
  } catch (error) {
    showError(errorId, error);
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

function bytes(n) {
  return n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(0)} MiB` : `${(n / 1024).toFixed(0)} KiB`;
}

// ---- sign in and pages -------------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const key = $("key").value.trim();
  await busy($("signin-button"), "signin-error", async () => {
    sessionStorage.setItem(KEY, key);
    try {
      state.me = await (await api("v1/me")).json();
    } catch (error) {
      sessionStorage.removeItem(KEY);
      throw error.status === 401 ? new Error("invalid API key") : error;
    }
    $("key").value = "";
    enter();
  });
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  state.me = null;
  $("nav").hidden = $("who").hidden = true;
  showPage("signin");
  if (message) $("signin-error").textContent = message;
}

function enter() {
  const { user, admin, limits } = state.me;
  $("who-user").textContent = admin ? `${user} (admin)` : user;
  $("nav").hidden = $("who").hidden = false;
  $("nav-operator").hidden = !admin;
  $("limits").textContent = `At most ${bytes(limits.max_upload_bytes)} and ${limits.max_pixels / 1e6} MP.`;
  route();
}

function showPage(name) {
  for (const page of document.querySelectorAll(".page")) page.hidden = page.id !== `page-${name}`;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function route() {
  if (!state.me) return showPage("signin");
  let page = location.hash.slice(1) || "studio";
  if (!["studio", "mystyle", "operator"].includes(page) || (page === "operator" && !state.me.admin)) page = "studio";
  showPage(page);
  const load = { studio: loadStyles, mystyle: loadVersions, operator: loadOperator }[page];
  load().catch(() => {}); // each loader shows its own errors
}

// ---- studio ------------------------------------------------------------------------------------

function choosePhoto(file) {
  showError("photo-error", null);
  if (!file) return;
  const limit = state.me.limits.max_upload_bytes;
  if (file.size > limit) {
    showError("photo-error", `file too large (${bytes(file.size)}, the limit is ${bytes(limit)})`);
    return;
  }
  if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
  state.photo = file;
  state.photoUrl = URL.createObjectURL(file);
  $("original").src = state.photoUrl;
}

async function loadStyles() {
  showError("styles-error", null);
  const list = $("style-thumbs");
  try {
    const set = await (await api("v1/me/styles")).json();
    const items = await Promise.all(set.images.map(async (image) => {
      const blob = await (await api(`v1/me/styles/${encodeURIComponent(image.id)}`)).blob();
      const item = document.createElement("li");
      const img = document.createElement("img");
      img.src = URL.createObjectURL(blob);
      img.alt = image.name;
      img.title = image.name;
      item.append(img);
      return item;
    }));
    for (const old of list.querySelectorAll("img")) URL.revokeObjectURL(old.src);
    list.replaceChildren(...items);
    $("style-empty").hidden = true;
  } catch (error) {
    list.replaceChildren();
    $("style-empty").hidden = false;
    if (error.status !== 404) showError("styles-error", error);
  }
}

async function uploadStyles() {
  const files = [...$("styles").files];
  await busy($("styles-upload"), "styles-error", async () => {
    if (!files.length) throw new Error("choose 1–16 style images first");
    const form = new FormData();
    for (const file of files) form.append("style", file, file.name);
    await api("v1/me/styles", { method: "PUT", body: form });
    $("styles").value = "";
    await loadStyles();
  });
}

async function render(file) {
  const form = new FormData();
  form.append("image", file, file.name || "photo");
  form.append("strength", $("strength").value);
  form.append("seed", $("seed").value || "0");
  form.append("region", $("region").value);
  const response = await api("v1/stylize", { method: "POST", body: form, idempotent: true });
  const blob = await response.blob();
  return {
    url: URL.createObjectURL(blob),
    version: response.headers.get("X-Adapter-Version"),
    variant: response.headers.get("X-Variant"),
    experiment: response.headers.get("X-Experiment"),
    imageId: response.headers.get("X-Image-Id"),
    photoUrl: state.photoUrl,
    rating: null,
  };
}

function describeResult(result) {
  const served = result.version === "base" ? "base model (zero-shot)" : `adapter v${result.version}`;
  return result.experiment && result.experiment !== "-"
    ? `${served} · experiment ${result.experiment}, variant ${result.variant}`
    : served;
}

async function stylize() {
  await busy($("stylize"), "stylize-error", async () => {
    if (!state.photo) throw new Error("choose a photo first");
    const result = await render(state.photo);
    showResult(result);
    state.history.unshift(result);
    drawHistory();
  });
}

function showResult(result) {
  state.last = result;
  $("result").src = result.url;
  $("result-meta").textContent = `Result: ${describeResult(result)}`;
  $("download").href = result.url;
  $("download").hidden = false;
  $("rating").disabled = false;
  markRating(result.rating);
  $("rating-status").textContent = result.rating ? `You rated this ${result.rating}/5.` : "";
}

function markRating(rating) {
  for (const button of $("rating").querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(Number(button.dataset.rating) === rating));
  }
}

async function rate(event) {
  const button = event.target.closest("button[data-rating]");
  if (!button || !state.last) return;
  const result = state.last;
  const rating = Number(button.dataset.rating);
  await busy(button, "rating-error", async () => {
    await api("v1/feedback", { method: "POST", json: { image_id: result.imageId, rating } });
    result.rating = rating;
    markRating(rating);
    $("rating-status").textContent = `Thanks: rated ${rating}/5.`;
    drawHistory();
  });
}

function drawHistory() {
  const items = state.history.slice(0, 12).map((result) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link";
    const img = document.createElement("img");
    img.src = result.url;
    img.alt = `Earlier result: ${describeResult(result)}`;
    button.append(img);
    button.addEventListener("click", () => showResult(result));
    const caption = document.createElement("span");
    caption.textContent = `${result.version === "base" ? "base" : `v${result.version}`}` +
      (result.rating ? ` · ${result.rating}/5` : "");
    item.append(button, caption);
    return item;
  });
  $("history").replaceChildren(...items);
}

// ---- my style ----------------------------------------------------------------------------------

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function metricText(value) {
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(3);
  if (value && typeof value === "object") {
    return Object.entries(value).map(([name, inner]) => `${name} ${metricText(inner)}`).join(", ");
  }
  return String(value);
}

// One line per metric; nested ones (held-out `before`/`after`) keep their names.
function metricsText(metrics) {
  return Object.entries(metrics || {}).map(([name, value]) => {
    const text = metricText(value);
    return value && typeof value === "object" ? `${name}: ${text}` : `${name} ${text}`;
  }).join("; ");
}

async function loadVersions() {
  showError("versions-error", null);
  try {
    const { versions } = await (await api("v1/me/adapters")).json();
    const rows = versions.slice().reverse().map((v) => {
      const row = document.createElement("tr");
      row.append(cell(`v${v.version}`), cell(v.aliases.join(", ") || "—"), cell(v.created), cell(metricsText(v.metrics)));
      return row;
    });
    $("versions").tBodies[0].replaceChildren(...rows);
    $("versions-empty").hidden = rows.length > 0;
  } catch (error) {
    showError("versions-error", error);
  }
}

async function personalize() {
  await busy($("personalize"), "personalize-error", async () => {
    $("job-compare").hidden = true;
    const job = await (await api("v1/me/personalize", { method: "POST" })).json();
    state.job = job.id;
    await followJob(job.id);
  });
}

function jobText(job) {
  const steps = job.total ? ` (step ${job.step}/${job.total})` : "";
  if (job.state === "succeeded") return `Done: adapter v${job.version}. ${job.decision || ""}`;
  if (job.state === "failed") return `Failed: ${job.error || "unknown error"}`;
  return `${job.state}${steps}…`;
}

async function followJob(id) {
  for (;;) {
    const job = await (await api(`v1/me/jobs/${encodeURIComponent(id)}`)).json();
    $("job-progress").max = Math.max(job.total, 1);
    $("job-progress").value = job.state === "succeeded" ? Math.max(job.total, 1) : job.step;
    $("job-status").textContent = jobText(job);
    if (job.state === "failed") throw new Error(jobText(job));
    if (job.state === "succeeded") {
      await loadVersions();
      await compareAfterJob();
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

// Before: the last result of this session; after: the same photo rendered now (the new adapter when
// the policy promoted it). Without a photo there is nothing to compare.
async function compareAfterJob() {
  const before = state.history.find((result) => result.photoUrl === state.photoUrl);
  if (!state.photo || !before) {
    $("job-status").textContent += " Stylize a photo in the Studio to compare.";
    return;
  }
  const after = await render(state.photo);
  state.history.unshift(after);
  drawHistory();
  $("job-before").src = before.url;
  $("job-before-meta").textContent = `Before: ${describeResult(before)}`;
  $("job-after").src = after.url;
  $("job-after-meta").textContent = `After: ${describeResult(after)}`;
  $("job-compare").hidden = false;
}

// ---- operator ----------------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function svg(name, attributes, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

// Mean rating per variant with its 95% CI, on the 1–5 scale.
function ratingChart(variants) {
  const names = Object.keys(variants);
  const width = 520, row = 40, left = 190, right = 24, top = 30;
  const height = top + row * names.length + 8;
  const x = (rating) => left + ((rating - 1) / 4) * (width - left - right);
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "Mean rating per variant with 95% confidence interval" });
  for (let r = 1; r <= 5; r++) {
    chart.append(svg("line", { class: "axis", x1: x(r), x2: x(r), y1: top - 6, y2: height - 4 }));
    chart.append(svg("text", { x: x(r) - 5, y: 18 }, String(r)));
  }
  names.forEach((name, i) => {
    const v = variants[name], y = top + row * i + row / 2;
    chart.append(svg("text", { x: 4, y: y + 6 }, `${name} (n=${v.ratings})`));
    if (v.rating_ci95) chart.append(svg("line", { class: "ci", x1: x(v.rating_ci95[0]), x2: x(v.rating_ci95[1]), y1: y, y2: y }));
    if (v.rating_mean !== null) chart.append(svg("circle", { class: "mean", cx: x(v.rating_mean), cy: y, r: 6 }));
  });
  return chart;
}

function fixed(value, digits, suffix = "") {
  return value === null || value === undefined ? "—" : `${value.toFixed(digits)}${suffix}`;
}

function variantTable(variants) {
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  for (const title of ["Variant", "Serves", "Exposures", "Users", "Ratings", "Mean (95% CI)", "Errors", "p50 / p99 ms"]) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = title;
    head.append(th);
  }
  const body = table.createTBody();
  for (const [name, v] of Object.entries(variants)) {
    const row = body.insertRow();
    const ci = v.rating_ci95 ? ` (${v.rating_ci95[0].toFixed(2)}–${v.rating_ci95[1].toFixed(2)})` : "";
    row.append(cell(name), cell(v.ref), cell(String(v.exposures)), cell(String(v.users)), cell(String(v.ratings)),
      cell(`${fixed(v.rating_mean, 2)}${ci}`), cell(fixed(v.error_rate === null ? null : 100 * v.error_rate, 1, "%")),
      cell(`${fixed(v.latency_ms_p50, 0)} / ${fixed(v.latency_ms_p99, 0)}`));
  }
  const wrap = document.createElement("div");
  wrap.className = "scroll";
  wrap.append(table);
  return wrap;
}

function experimentCard(experiment, report) {
  const card = document.createElement("article");
  card.className = "card experiment";
  card.dataset.experiment = experiment.name;
  const title = document.createElement("h3");
  title.textContent = experiment.name;
  const meta = document.createElement("p");
  meta.className = "meta";
  meta.textContent = `${experiment.status}` +
    (experiment.decision ? ` · ${experiment.decision}: ${experiment.reason || ""}` : "") +
    ` · ${experiment.users ? `${experiment.users.length} users` : `${experiment.percent}% of users`}`;
  card.append(title, meta, variantTable(report.variants), ratingChart(report.variants));
  const decision = document.createElement("p");
  decision.className = "decision";
  decision.textContent = report.policy
    ? `Automatic policy would: ${report.policy.action.replace("_", " ")}. ${report.policy.reason}`
    : `Verdict: ${report.verdict}`;
  card.append(decision);
  if (experiment.status === "running") card.append(experimentControls(experiment));
  return card;
}

function experimentControls(experiment) {
  const controls = document.createElement("div");
  controls.className = "actions";
  const id = `promote-${experiment.name}`;
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = "Variant to promote";
  const select = document.createElement("select");
  select.id = id;
  for (const variant of experiment.variants) select.append(new Option(`${variant.name} (${variant.ref})`, variant.name));
  select.value = experiment.variants[experiment.variants.length - 1].name;
  const promote = document.createElement("button");
  promote.type = "button";
  promote.textContent = "Promote";
  const stop = document.createElement("button");
  stop.type = "button";
  stop.textContent = "Stop";
  const error = document.createElement("p");
  error.className = "error";
  error.setAttribute("role", "alert");
  error.id = `error-${experiment.name}`;
  const act = (button, question, path, json) => busy(button, error.id, async () => {
    if (!confirm(question)) return;
    await api(path, { method: "POST", json });
    await loadOperator();
  });
  const base = `v1/admin/experiments/${encodeURIComponent(experiment.name)}`;
  promote.addEventListener("click", () => act(promote,
    `Promote ${select.value} of ${experiment.name}? Every exposed user's production moves to it.`,
    `${base}/promote`, { variant: select.value }));
  stop.addEventListener("click", () => act(stop, `Stop ${experiment.name}? Its users go back to production.`, `${base}/stop`));
  const group = document.createElement("div");
  group.append(label, select);
  controls.append(group, promote, stop, error);
  return controls;
}

async function loadOperator() {
  showError("operator-error", null);
  try {
    const { experiments } = await (await api("v1/admin/experiments")).json();
    const cards = await Promise.all(experiments.map(async (experiment) => {
      const report = await (await api(`v1/admin/experiments/${encodeURIComponent(experiment.name)}/report`)).json();
      return experimentCard(experiment, report);
    }));
    if (!cards.length) {
      const none = document.createElement("p");
      none.className = "hint";
      none.textContent = "No experiments yet.";
      cards.push(none);
    }
    $("experiments").replaceChildren(...cards);
    const stats = await (await api("v1/admin/stats")).json();
    const rows = Object.entries(stats).map(([name, value]) => {
      const row = document.createElement("tr");
      row.append(cell(name), cell(typeof value === "number" && !Number.isInteger(value) ? value.toFixed(3) : String(value)));
      return row;
    });
    $("stats").tBodies[0].replaceChildren(...rows);
  } catch (error) {
    showError("operator-error", error);
  }
}

// ---- wiring ------------------------------------------------------------------------------------

function wire() {
  $("signin-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut());
  window.addEventListener("hashchange", route);
  $("photo").addEventListener("change", () => choosePhoto($("photo").files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    choosePhoto(event.dataTransfer.files[0]);
  });
  $("styles-upload").addEventListener("click", uploadStyles);
  $("strength").addEventListener("input", () => { $("strength-value").value = Number($("strength").value).toFixed(2); });
  $("stylize").addEventListener("click", stylize);
  $("rating").addEventListener("click", rate);
  $("personalize").addEventListener("click", personalize);
  $("operator-refresh").addEventListener("click", () => busy($("operator-refresh"), "operator-error", loadOperator));
}

async function start() {
  wire();
  if (!sessionStorage.getItem(KEY)) return showPage("signin");
  try {
    state.me = await (await api("v1/me")).json();
    enter();
  } catch {
    signOut();
  }
}

start();
