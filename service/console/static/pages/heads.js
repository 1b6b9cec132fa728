// Heads: the tenant's list; one head's versions with metrics, confusion matrix heat map and
// per-class precision/recall; aliases from a version picker; publish; export; delete a version.
import { api, download, get } from "../api.js";
import { bars, heatmap, lineChart } from "../charts.js";
import {
  append, badge, button, clear, confirmButton, errorBox, field, fmtBytes, fmtDate, fmtPct, h,
  input, link, select, table, td,
} from "../dom.js";
import { page, pagedTable, panel } from "../ui.js";

export function headHref(owner, name) {
  return `#/heads/${encodeURIComponent(owner)}/${encodeURIComponent(name)}`;
}

export function aliasText(aliases) {
  const entries = Object.entries(aliases || {});
  return entries.length ? entries.map(([a, v]) => `${a} → v${v}`).join(", ") : "—";
}

export function headBadges(head) {
  return [
    badge(head.visibility, head.visibility === "public" ? "ok" : "neutral"),
    head.suspended ? badge("suspended", "bad") : null,
  ];
}

export function listPage(ctx) {
  const list = pagedTable({
    path: "/v1/heads",
    caption: "Your heads",
    empty: ctx.who.scope === "owner" ? "No head yet: train one from a dataset." : "This tenant has no head yet.",
    headers: ["Head", "Visibility", "Versions", "Aliases", "Usage", "Updated"],
    row: (hd) => h("tr", {},
      td(link(headHref(hd.owner, hd.name), `${hd.owner}/${hd.name}`)),
      td(headBadges(hd)),
      td(String(hd.version_count)), td(aliasText(hd.aliases)), td(String(hd.usage_count)), td(fmtDate(hd.updated_at))),
  });
  return page("Heads", ctx.who.scope === "owner"
    ? h("p", {}, "Train a new head or a new version on the ", link("#/training", "Training"), " page.")
    : null, panel("Heads", list));
}

function metricFacts(v) {
  const m = v.metrics || {};
  const rows = [
    ["Head type", v.head_type],
    ["Validation top-1", fmtPct(m.val_top1)],
    ["Validation top-5", fmtPct(m.val_top5)],
    ["Validation loss", typeof m.val_loss === "number" ? m.val_loss.toFixed(4) : "—"],
    ["Training loss", typeof m.train_loss === "number" ? m.train_loss.toFixed(4) : "—"],
    ["Examples (train / validation)", m.n_train != null ? `${m.n_train} / ${m.n_val}` : "—"],
    ["Labels", String(v.labels.length)],
    ["Feature width", String(v.feature_dim)],
    ["Size", fmtBytes(v.size_bytes)],
    ["Extractor", v.extractor_id.slice(0, 12)],
    ["Created", fmtDate(v.created_at)],
  ];
  return h("dl", { class: "facts" }, rows.flatMap(([k, val]) => [h("dt", { text: k }), h("dd", { text: val })]));
}

function perClass(v) {
  const pc = v.metrics?.per_class;
  if (!pc) return h("p", { class: "hint", text: "No per-class metrics for this version." });
  const rows = Object.entries(pc).map(([label, m]) => h("tr", {},
    h("th", { scope: "row", text: label }),
    td(bars([{ label: "precision", value: m.precision, text: fmtPct(m.precision) }], { max: 1, label: `precision of ${label}`, className: "mini" })),
    td(bars([{ label: "recall", value: m.recall, text: fmtPct(m.recall) }], { max: 1, label: `recall of ${label}`, className: "mini" })),
    td(String(m.support))));
  return table(["Label", "Precision", "Recall", "Support"], rows, "Per-class precision and recall on the validation split");
}

export function detailPage(ctx) {
  const { owner, name } = ctx.params;
  const base = `/v1/heads/${encodeURIComponent(owner)}/${encodeURIComponent(name)}`;
  const canWrite = ctx.who.scope === "admin" || (ctx.who.scope === "owner" && ctx.who.tenant === owner);
  const title = h("h1", { tabindex: "-1", text: `${owner}/${name}` });
  const badges = h("span", { class: "badges" });
  const desc = h("p", { class: "lead description" });
  const err = errorBox();
  const versionsBox = h("div", {});
  const picker = select([], { id: "version-picker" });
  const inspect = h("div", { class: "inspect" });
  const aliasesBox = h("div", {});
  let head = null;

  function version() {
    return head?.versions.find((v) => String(v.version) === picker.value) || null;
  }

  function drawInspect() {
    const v = version();
    clear(inspect);
    if (!v) return;
    const m = v.metrics || {};
    append(inspect, 
      h("h3", { text: `Version ${v.version}${v.aliases.length ? ` (${v.aliases.join(", ")})` : ""}` }),
      metricFacts(v),
      h("h3", { text: "Labels" }),
      h("ul", { class: "chips", "aria-label": "labels" }, v.labels.map((l) => h("li", { class: "chip", text: l }))),
      Array.isArray(m.confusion_matrix) ? [h("h3", { text: "Confusion matrix" }), heatmap(m.confusion_matrix, m.labels || v.labels)] : null,
      h("h3", { text: "Per-class precision and recall" }), perClass(v),
      Array.isArray(m.history) && m.history.length
        ? h("div", { class: "charts" }, lineChart(m.history, [{ key: "val_top1", label: "validation top-1", className: "s1" }],
          { title: "Validation accuracy while training", yMax: 1, yFormat: (x) => fmtPct(x, 0) }))
        : null);
  }

  function drawHead() {
    title.textContent = `${head.owner}/${head.name}`;
    document.title = `${title.textContent} · headhub console`;
    clear(badges, headBadges(head));
    desc.textContent = head.description || "";
    desc.hidden = !head.description;
    const keep = picker.value;
    const versions = [...head.versions].sort((a, b) => b.version - a.version);
    clear(picker, versions.map((v) => h("option", {
      value: String(v.version),
      text: `v${v.version}${v.aliases.length ? ` (${v.aliases.join(", ")})` : ""} · ${v.head_type} · top-1 ${fmtPct(v.metrics?.val_top1)}`,
    })));
    if (keep && versions.some((v) => String(v.version) === keep)) picker.value = keep;
    else if (head.aliases.production) picker.value = String(head.aliases.production);
    clear(versionsBox, versions.length ? table(
      ["Version", "Type", "Val. top-1", "Val. top-5", "Labels", "Size", "Aliases", "Created", ""],
      versions.map((v) => h("tr", {},
        td(`v${v.version}`), td(v.head_type), td(fmtPct(v.metrics?.val_top1)), td(fmtPct(v.metrics?.val_top5)),
        td(String(v.labels.length)), td(fmtBytes(v.size_bytes)), td(v.aliases.join(", ") || "—"), td(fmtDate(v.created_at)),
        td(button("Inspect", () => { picker.value = String(v.version); drawInspect(); picker.focus(); },
          { class: "secondary small", "aria-label": `Inspect version ${v.version}` })))),
      "Every version, newest first") : h("p", { class: "empty", text: "No version." }));
    clear(aliasesBox, Object.keys(head.aliases).length
      ? h("ul", { class: "alias-list" }, Object.entries(head.aliases).map(([a, v]) => h("li", {},
        h("strong", { text: a }), ` → v${v} `,
        canWrite ? button("Remove", async () => {
          try {
            await api("DELETE", `${base}/aliases/${encodeURIComponent(a)}`);
            ctx.toast(`Alias ${a} removed.`);
            await load();
          } catch (e) { err.show(e); }
        }, { class: "secondary small", "aria-label": `Remove alias ${a}` }) : null)))
      : h("p", { class: "hint", text: "No alias: a bare reference uses the newest version." }));
    if (canWrite) {
      visibility.value = head.visibility;
      description.value = head.description || "";
    }
    drawInspect();
  }

  async function load() {
    try {
      head = await get(base);
      err.show(null);
      drawHead();
    } catch (e) {
      err.show(e);
    }
  }
  picker.addEventListener("change", drawInspect);

  // -- aliases, publish, export, delete --------------------------------------------------------
  const aliasName = input({ id: "alias-name", value: "production", required: true, pattern: "[a-z][a-z0-9_\\-]{0,39}" });
  const aliasForm = h("form", { class: "inline-form", "aria-label": "Set an alias" },
    field("Alias", aliasName, "production, staging, …"),
    h("p", { class: "hint", text: "Points at the version chosen in the picker above." }),
    h("button", { type: "submit", class: "primary" }, "Set alias"));
  aliasForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const v = version();
    if (!v) return;
    try {
      const res = await api("PUT", `${base}/aliases/${encodeURIComponent(aliasName.value.trim())}`, { json: { version: v.version } });
      ctx.toast(`${res.alias} now points at v${res.version}.`);
      await load();
    } catch (e2) { err.show(e2); }
  });

  const visibility = select([["private", "private: only this tenant"], ["public", "public: in the marketplace"]], { id: "head-visibility" });
  const description = h("textarea", { id: "head-description", rows: "3", maxlength: "4000" });
  const publishForm = h("form", { class: "grid-form", "aria-label": "Publish" },
    field("Visibility", visibility), field("Description", description, "Shown on the marketplace card."),
    h("div", { class: "form-actions" }, h("button", { type: "submit", class: "primary" }, "Save")));
  publishForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      head = await api("PATCH", base, { json: { visibility: visibility.value, description: description.value } });
      err.show(null);
      ctx.toast(head.visibility === "public" ? "Published in the marketplace." : "Saved.");
      drawHead();
    } catch (e2) { err.show(e2); }
  });

  const format = select([["onnx", "ONNX"], ["safetensors", "safetensors"]], { id: "export-format" });
  const exportStatus = h("span", { class: "hint", role: "status" });
  const exportButton = button("Download", async () => {
    const v = version();
    if (!v) return;
    exportStatus.textContent = "Preparing…";
    try {
      const file = await download(`${base}/versions/${v.version}/export`, { format: format.value },
        `${owner}-${name}-v${v.version}.${format.value}`);
      exportStatus.textContent = `Saved ${file.name} (${fmtBytes(file.size)}).`;
      err.show(null);
    } catch (e) {
      exportStatus.textContent = "";
      err.show(e);
    }
  }, { class: "primary" });

  const del = confirmButton("Delete this version", "Click again to delete the version", async () => {
    const v = version();
    if (!v) return;
    try {
      await api("DELETE", `${base}/versions/${v.version}`);
      ctx.toast(`Version ${v.version} deleted.`);
      picker.value = "";
      await load();
    } catch (e) { err.show(e); }
  });

  load();
  return h("section", { class: "page" },
    h("div", { class: "title-row" }, title, badges), desc, err,
    h("div", { class: "actions" }, link(`#/try?heads=${encodeURIComponent(`${owner}/${name}`)}`, "Try it", { class: "button-like" })),
    panel("Versions", versionsBox),
    panel("Inspect a version", field("Version", picker), inspect),
    panel("Aliases", aliasesBox, canWrite ? aliasForm : null),
    canWrite ? panel("Publish", publishForm) : null,
    panel("Export", h("p", { class: "hint", text: "The head alone with its labels, extractor id and preprocessing in the file's metadata." }),
      h("div", { class: "inline-form" }, field("Format", format), exportButton), exportStatus),
    canWrite ? panel("Delete", h("p", { class: "hint", text: "Deletes the version chosen in the picker; refused while an alias points at it." }), del) : null);
}
