// Operator page: polls the public API (the same endpoints as the CLI) and renders jobs and
// datasets. No framework and no build step: the API serves this file as it is.
"use strict";

const TOKEN_KEY = "promotions.writeToken";
const POLL_BUSY_MS = 1000; // while a job runs: live progress
const POLL_IDLE_MS = 3000;
const $ = (id) => document.getElementById(id);
let pollTimer = null;
let uploadedJob = null; // the job of the last upload from this page, followed under the form

// ---- formatting -------------------------------------------------------------------------
const nf = new Intl.NumberFormat("en-US");
const num = (n) => (n === null || n === undefined ? "–" : nf.format(n));

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function duration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 59.5) return `${s.toFixed(s < 9.95 ? 1 : 0)} s`;
  // Rounded once, then split: 119.6 s is "2 min 0 s", never "1 min 60 s".
  const total = Math.round(s);
  const m = Math.floor(total / 60);
  if (total < 3600) return `${m} min ${total % 60} s`;
  const minutes = Math.round(s / 60);
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

function when(iso) {
  if (!iso) return "–";
  const t = new Date(iso);
  const ago = (Date.now() - t.getTime()) / 1000;
  const clock = t.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const day = ago > 86400 ? `${t.toLocaleDateString()} ` : "";
  return ago >= 0 && ago < 3600 ? `${day}${clock} (${duration(ago)} ago)` : `${day}${clock}`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

const badge = (text, kind) => el("span", { class: `badge ${kind || text}`, text });

// ---- API --------------------------------------------------------------------------------
function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function authHeaders(value) {
  return value ? { Authorization: `Bearer ${value}` } : {};
}

async function problem(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (e) {
    return `HTTP ${response.status}`;
  }
}

// Links to reads that may need the token (a plain link cannot send it): fetched with the
// token, then saved (download) or opened from memory.
async function openWithToken(event, path, download) {
  event.preventDefault();
  const response = await fetch(path, { headers: authHeaders(token()) });
  if (!response.ok) {
    $("error").textContent = `${path}: ${await problem(response)}`;
    $("error").hidden = false;
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  const link = el("a", { href: url, download: download || undefined, target: download ? undefined : "_blank" });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

async function getJson(path, allow404 = false) {
  const response = await fetch(path, { headers: { Accept: "application/json", ...authHeaders(token()) } });
  if (allow404 && response.status === 404) return null;
  if (!response.ok) throw new Error(`${path}: ${await problem(response)}`);
  return response.json();
}

// ---- jobs -------------------------------------------------------------------------------
function progressCell(job) {
  const done = job.status === "succeeded" || job.status === "failed" || job.status === "held";
  // One step per chunk parsed and per partition written.
  const steps = (job.chunks_total || 0) + (job.partitions_total || 0);
  const bar = el("progress", { max: steps || 1 });
  if (steps) bar.value = (job.chunks_done || 0) + (job.partitions_done || 0);
  else if (done) bar.value = 1;
  else bar.removeAttribute("value"); // indeterminate until the file is split
  const parts = [];
  if (!done && job.chunks_total) parts.push(`${num(job.chunks_done)}/${num(job.chunks_total)} chunks`);
  if (!done && job.phase === "writing") parts.push(`${num(job.partitions_done)}/${num(job.partitions_total)} partitions`);
  parts.push(`${num(job.rows_loaded)} rows`);
  if (job.rows_per_s !== null && job.rows_per_s !== undefined) parts.push(`${num(Math.round(job.rows_per_s))} rows/s`);
  if (!done && job.eta_s !== null && job.eta_s !== undefined) parts.push(`ETA ${duration(job.eta_s)}`);
  if (done && job.phase_durations_s) {
    const d = job.phase_durations_s;
    parts.push(`in ${duration(d.total)}` + (d.loading !== undefined ? ` (loading ${duration(d.loading)})` : ""));
  }
  parts.push(`${num(job.rows_rejected)} rejected`);
  if (job.duplicates) parts.push(`${num(job.duplicates)} duplicates`);
  return el("td", {}, bar, el("div", { class: "progress-text", text: parts.join(" · ") }));
}

function outcomeCell(job, activeVersion) {
  if (job.status === "held") {
    return el("td", {}, el("div", { class: "error-text", title: job.error || "", text: job.error || "held" }));
  }
  if (job.status === "failed") {
    const text = job.superseded ? "superseded by a newer upload" : (job.error || "failed");
    return el("td", {}, el("div", { class: "error-text", title: job.error || "", text }));
  }
  if (job.status === "succeeded") {
    const text = job.superseded
      ? `version ${job.dataset_version} loaded, a newer one was already live`
      : `loaded as version ${job.dataset_version}`;
    const serving = job.dataset_version === activeVersion ? badge("serving", "active") : null;
    return el("td", {}, text, serving ? " " : null, serving);
  }
  return el("td", { class: "hint", text: job.phase === "queued" ? "waiting for a worker" : job.phase });
}

function jobRow(job, activeVersion) {
  const id = job.job_id;
  const reports = el("td", {},
    el("a", {
      href: `../jobs/${encodeURIComponent(id)}`,
      text: "status",
      onclick: (e) => openWithToken(e, `../jobs/${encodeURIComponent(id)}`),
    }));
  if (job.rows_rejected > 0) {
    reports.append(" · ", el("a", {
      href: `../jobs/${encodeURIComponent(id)}/rejects`,
      class: "rejects-link",
      download: `rejects-${id}.csv`,
      text: `rejects (${num(job.rows_rejected)})`,
      onclick: (e) => openWithToken(e, `../jobs/${encodeURIComponent(id)}/rejects`, `rejects-${id}.csv`),
    }));
  }
  const status = job.status === "running" || job.status === "finalizing"
    ? el("td", {}, badge(job.status), " ", el("span", { class: "hint", text: job.phase }))
    : el("td", {}, badge(job.status));
  return el("tr", { "data-job-id": id, "data-status": job.status, class: `job-${job.status}` },
    el("td", {}, el("code", { title: id, text: id.slice(0, 8) })),
    el("td", {}, job.original_name || job.source || "", el("div", { class: "hint", text: bytes(job.bytes_total) })),
    el("td", { text: when(job.created_at) }),
    status,
    progressCell(job),
    outcomeCell(job, activeVersion),
    reports);
}

function renderJobs(jobs, activeVersion) {
  $("jobs").tBodies[0].replaceChildren(...jobs.map((job) => jobRow(job, activeVersion)));
  $("jobs-empty").hidden = jobs.length > 0;
  $("jobs-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

// ---- datasets and rollback ----------------------------------------------------------------
function datasetRow(ds) {
  const action = el("td");
  if (ds.active) action.append(badge("active"));
  else if (ds.state === "ready") {
    action.append(el("button", {
      class: "activate",
      "data-version": ds.version,
      text: "Activate",
      onclick: () => openActivate(ds),
    }));
  }
  return el("tr", { class: ds.active ? "active-row" : "", "data-version": ds.version, "data-active": ds.active },
    el("td", { class: "num", text: ds.version }),
    el("td", {}, badge(ds.state)),
    el("td", { class: "num", text: num(ds.rows) }),
    el("td", {}, ds.job_id ? el("a", { href: `../jobs/${encodeURIComponent(ds.job_id)}` }, el("code", { text: ds.job_id.slice(0, 8) })) : "–"),
    el("td", { text: when(ds.created_at) }),
    el("td", { text: when(ds.activated_at) }),
    action);
}

function renderDatasets(datasets, active) {
  $("datasets").tBodies[0].replaceChildren(...datasets.map(datasetRow));
  $("datasets-empty").hidden = datasets.length > 0;
  $("active").textContent = active
    ? `active dataset: version ${active.version}, ${num(active.rows)} rows, live since ${when(active.activated_at)}`
    : "no dataset loaded yet";
}

function openActivate(ds) {
  $("activate-version").textContent = ds.version;
  $("activate-rows").textContent = num(ds.rows);
  $("activate-token").value = token();
  $("activate-error").hidden = true;
  $("activate-dialog").dataset.version = ds.version;
  $("activate-dialog").showModal();
  $("activate-token").focus();
}

async function confirmActivate(event) {
  event.preventDefault();
  const dialog = $("activate-dialog");
  const value = $("activate-token").value.trim();
  const response = await fetch(`../datasets/${dialog.dataset.version}/activate`, {
    method: "POST",
    headers: authHeaders(value),
  });
  if (!response.ok) {
    $("activate-error").textContent = `${response.status}: ${await problem(response)}`;
    $("activate-error").hidden = false;
    return;
  }
  if (value) setToken(value);
  dialog.close();
  poll();
}

// ---- upload -------------------------------------------------------------------------------
function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
  $("token").value = value;
}

function upload(event) {
  event.preventDefault();
  const file = $("upload-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  const xhr = new XMLHttpRequest();
  const started = performance.now();
  const bar = $("upload-progress");
  const text = $("upload-text");
  $("upload-status").hidden = false;
  $("upload-button").disabled = true;
  bar.value = 0;
  text.textContent = `uploading ${file.name}…`;
  xhr.upload.onprogress = (e) => {
    if (!e.lengthComputable) return;
    const seconds = (performance.now() - started) / 1000;
    const rate = seconds > 0 ? e.loaded / seconds : 0;
    bar.value = e.loaded / e.total;
    const eta = rate > 0 ? (e.total - e.loaded) / rate : null;
    text.textContent = `${bytes(e.loaded)} / ${bytes(e.total)} · ${bytes(rate)}/s` + (eta !== null ? ` · ETA ${duration(eta)}` : "");
  };
  xhr.onload = () => {
    $("upload-button").disabled = false;
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
    if (xhr.status === 202) {
      bar.value = 1;
      uploadedJob = body.job_id;
      text.textContent = `stored: job ${body.job_id} is ${body.status} (follow it below)`;
      poll();
    } else {
      text.textContent = `upload refused (${xhr.status}): ${typeof body.detail === "string" ? body.detail : xhr.statusText}`;
      text.className = "error";
    }
  };
  xhr.onerror = () => {
    $("upload-button").disabled = false;
    text.textContent = "upload failed: the API did not answer";
    text.className = "error";
  };
  text.className = "";
  xhr.open("POST", "../add-promotions/");
  const value = $("token").value.trim();
  if (value) {
    xhr.setRequestHeader("Authorization", `Bearer ${value}`);
    sessionStorage.setItem(TOKEN_KEY, value);
  }
  xhr.send(form);
}

// The line under the upload form says where the uploaded job is now, not where it was.
function followUpload(jobs) {
  const job = jobs.find((j) => j.job_id === uploadedJob);
  if (!job) return;
  const text = $("upload-text");
  if (job.status === "succeeded") {
    text.textContent = `stored: job ${job.job_id} succeeded (version ${job.dataset_version})`;
  } else if (job.status === "failed" || job.status === "held") {
    text.textContent = `stored: job ${job.job_id} ${job.status}: ${job.error || ""}`;
    text.className = "error";
  } else {
    text.textContent = `stored: job ${job.job_id} is ${job.status} (follow it below)`;
  }
  if (["succeeded", "failed", "held"].includes(job.status)) uploadedJob = null;
}

// ---- polling ------------------------------------------------------------------------------
async function poll() {
  clearTimeout(pollTimer);
  let busy = false;
  try {
    const [jobs, datasets, active] = await Promise.all([
      getJson("../jobs?limit=20"),
      getJson("../datasets?limit=20"),
      getJson("../datasets/active", true),
    ]);
    renderJobs(jobs, active ? active.version : null);
    followUpload(jobs);
    renderDatasets(datasets, active);
    busy = jobs.some((j) => j.status === "queued" || j.status === "running" || j.status === "finalizing");
    $("error").hidden = true;
  } catch (e) {
    $("error").textContent = `could not refresh: ${e.message}`;
    $("error").hidden = false;
  }
  pollTimer = setTimeout(poll, busy ? POLL_BUSY_MS : POLL_IDLE_MS);
}

$("token").value = token();
$("token").addEventListener("change", (e) => setToken(e.target.value.trim()));
$("upload-form").addEventListener("submit", upload);
$("activate-form").addEventListener("submit", confirmActivate);
$("activate-cancel").addEventListener("click", () => $("activate-dialog").close());
poll();
