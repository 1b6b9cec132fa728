// Training: start a job (dataset, head name, head type), follow it live (progress, validation
// curve), cancel it; the tenant's jobs.
import { api, get, getAll } from "../api.js";
import { lineChart, progress } from "../charts.js";
import {
  append, badge, button, clear, errorBox, field, fmtDate, fmtPct, h, input, link, select,
  shortId, td,
} from "../dom.js";
import { STATUS_CLASS, page, pagedTable, panel, poll } from "../ui.js";

const HEAD_TYPES = [
  ["float", "float: floating-point last layer (the paper's (b); most accurate)"],
  ["binary", "binary: binary last layer on the sign bits (the paper's (a))"],
  ["mlp", "mlp: one hidden layer (retrains more than the last layer)"],
];
const ACTIVE = new Set(["queued", "running"]);

function randomId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

export function statusBadge(status) {
  return badge(status, STATUS_CLASS[status] || "");
}

export function jobRow(j, { showOwner = false } = {}) {
  const head = j.head_version ? j.head_version.ref : j.head;
  return h("tr", {},
    td(link(`#/jobs/${encodeURIComponent(j.id)}`, shortId(j.id), { "aria-label": `job ${j.id}` })),
    showOwner ? td(j.owner) : null,
    td(head), td(j.head_type), td(statusBadge(j.status)),
    td(progress(j.progress, `progress of job ${shortId(j.id)}`)),
    td(fmtPct(j.metrics?.val_top1)),
    td(fmtDate(j.created_at)),
    td(j.error ? h("span", { class: "error-text", text: j.error }) : "—"));
}

export const JOB_HEADERS = ["Job", "Head", "Type", "Status", "Progress", "Val. top-1", "Created", "Error"];

export function trainPage(ctx) {
  const dataset = select([], { id: "train-dataset", required: true });
  const head = input({ id: "train-head", required: true, pattern: "[a-z0-9][a-z0-9_\\-]{0,63}" });
  const type = select(HEAD_TYPES, { id: "train-type" });
  const val = input({ id: "train-val", type: "number", min: "0", max: "0.5", step: "0.05", value: "0.2" });
  const seed = input({ id: "train-seed", type: "number", min: "0", step: "1", value: "0" });
  const params = h("textarea", { id: "train-params", rows: "2", placeholder: '{"epochs": 100}', spellcheck: "false" });
  const err = errorBox();
  // Disabled until the datasets have loaded: a click before that would submit an empty choice.
  const start = h("button", { type: "submit", class: "primary", disabled: true }, "Start training");
  getAll("/v1/datasets").then((items) => {
    clear(dataset, items.length
      ? items.map((d) => h("option", { value: d.id, text: `${d.name} (${d.image_count} images, ${Object.keys(d.label_counts).length} labels)` }))
      : h("option", { value: "", text: "no dataset yet" }));
    const wanted = ctx.query.get("dataset");
    if (wanted) dataset.value = wanted;
    start.disabled = !items.length;
  }).catch((e) => err.show(e));
  const form = h("form", { class: "grid-form", "aria-label": "Train a head" },
    field("Dataset", dataset),
    field("Head name", head, "a-z, 0-9, _ and -; a new version if the head exists."),
    field("Head type", type),
    field("Validation fraction", val, "Share of each label held out to measure the head."),
    field("Seed", seed),
    field("Trainer parameters (JSON, optional)", params, "e.g. {\"epochs\": 100}; unknown keys are refused."),
    h("div", { class: "form-actions" }, start),
    err);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    err.show(null);
    let parsed = {};
    if (params.value.trim()) {
      try {
        parsed = JSON.parse(params.value);
      } catch {
        err.show(new Error("Trainer parameters must be a JSON object, e.g. {\"epochs\": 100}."));
        return;
      }
    }
    try {
      const job = await api("POST", "/v1/jobs", {
        json: {
          dataset_id: dataset.value, head: head.value.trim(), head_type: type.value,
          validation_fraction: Number(val.value), seed: Number(seed.value), params: parsed,
        },
        headers: { "Idempotency-Key": randomId() },
      });
      ctx.navigate(`#/jobs/${encodeURIComponent(job.id)}`);
    } catch (e2) {
      err.show(e2);
    }
  });
  const jobs = pagedTable({
    path: "/v1/jobs", headers: JOB_HEADERS, row: (j) => jobRow(j), caption: "Your jobs, newest first",
    empty: "No job yet.",
  });
  poll(ctx, async () => {
    await new Promise((r) => setTimeout(r, 0));
    if (jobs.rows().some((j) => ACTIVE.has(j.status))) await jobs.reload();
    return true;
  }, 2000);
  return page("Training", panel("Train a head", form), panel("Jobs", jobs));
}

export function jobPage(ctx) {
  const id = ctx.params.id;
  const title = h("h1", { tabindex: "-1", text: `Job ${shortId(id)}` });
  const err = errorBox();
  const facts = h("dl", { class: "facts" });
  const prog = h("div", { class: "job-progress" });
  const charts = h("div", { class: "charts" });
  const actions = h("div", { class: "actions" });
  const result = h("div", {});
  let last = null;

  function fact(term, value) {
    return [h("dt", { text: term }), h("dd", {}, value)];
  }

  function draw(job) {
    title.textContent = `Training ${job.head} (${job.head_type})`;
    clear(facts, 
      fact("Status", statusBadge(job.status)),
      fact("Job", h("code", { text: job.id })),
      fact("Owner", job.owner),
      fact("Dataset", ctx.who.scope === "owner" ? link(`#/datasets/${encodeURIComponent(job.dataset_id)}`, shortId(job.dataset_id)) : shortId(job.dataset_id)),
      fact("Attempt", `${job.attempt} of ${job.max_attempts}`),
      fact("Created", fmtDate(job.created_at)),
      fact("Finished", fmtDate(job.finished_at)));
    const pct = Math.round(job.progress * 100);
    clear(prog, progress(job.progress, "Training progress"),
      h("p", { class: "sr-only", text: `Progress ${pct}%` }));
    const history = job.metrics?.history || [];
    clear(charts);
    if (history.length) {
      append(charts, 
        lineChart(history, [{ key: "val_top1", label: "validation top-1", className: "s1" }],
          { title: "Validation accuracy (top-1) by epoch", yMax: 1, yFormat: (v) => fmtPct(v, 0) }),
        lineChart(history, [
          { key: "train_loss", label: "training loss", className: "s2" },
          { key: "val_loss", label: "validation loss", className: "s3" }],
        { title: "Loss by epoch" }));
      if (history.some((e) => "l2" in e)) {
        append(charts, h("p", { class: "hint", text: "Float heads: each point is one L2 penalty tried by cross-validation, then the final fit." }));
      }
    } else if (ACTIVE.has(job.status)) {
      append(charts, h("p", { class: "hint", text: job.status === "queued" ? "Waiting for a worker…" : "Computing features…" }));
    }
    clear(actions);
    if (ACTIVE.has(job.status) && !job.cancel_requested) {
      append(actions, button("Cancel job", async () => {
        try {
          draw(await api("POST", `/v1/jobs/${encodeURIComponent(id)}/cancel`));
          ctx.toast("Cancel requested.");
        } catch (e) { err.show(e); }
      }, { class: "danger" }));
    } else if (job.cancel_requested && ACTIVE.has(job.status)) {
      append(actions, h("p", { text: "Cancel requested: the job stops at its next check." }));
    }
    clear(result);
    if (job.error) append(result, h("p", { class: "error-text", text: `Error: ${job.error}` }));
    if (job.head_version) {
      const ref = job.head_version.ref; // owner/name:version
      const [ownerName] = ref.split(":");
      const [owner, name] = ownerName.split("/");
      append(result, h("p", { class: "success" }, "Registered ",
        link(`#/heads/${encodeURIComponent(owner)}/${encodeURIComponent(name)}`, ref),
        job.metrics?.val_top1 != null ? ` · validation top-1 ${fmtPct(job.metrics.val_top1)}` : ""));
    }
  }

  poll(ctx, async () => {
    try {
      last = await get(`/v1/jobs/${encodeURIComponent(id)}`);
      err.show(null);
      draw(last);
    } catch (e) {
      err.show(e);
      return e.status !== 404;
    }
    return ACTIVE.has(last.status);
  }, 1000);
  return h("section", { class: "page" }, title, err, panel("Progress", prog, facts, actions, result), panel("Curves", charts),
    h("p", {}, link(ctx.who.scope === "admin" ? "#/admin/jobs" : "#/training", "Back to the jobs")));
}
