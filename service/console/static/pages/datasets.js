// Datasets: create, upload (drag and drop files or a zip, with a progress bar), label counts,
// thumbnails of every listed image (from the API), rejected files with their reasons.
import { api, get, upload } from "../api.js";
import { bars, progress, setProgress } from "../charts.js";
import {
  append, button, clear, confirmButton, errorBox, field, fmtBytes, fmtDate, h, input, link,
  select, table, td,
} from "../dom.js";
import { dropZone, isZip, readZip, thumb } from "../files.js";
import { page, pagedTable, panel } from "../ui.js";

const BATCH_FILES = 64;
const BATCH_BYTES = 24 * 1024 * 1024;
const THUMB_SIZE = 96; // shown at 48 px: sharp on a 2x screen
const THUMB_PARALLEL = 4;

/** Thumbnails of one dataset's images, from GET …/images/{sha256}/thumbnail. The key goes in
 *  the Authorization header (never in a URL), so each comes through fetch and is shown from an
 *  object URL, revoked when the page is left. Only rows drawn ask (a page of 100, more on "Load
 *  more"), at most THUMB_PARALLEL at once; the browser's private cache answers repeats (ETag). */
function thumbnailLoader(ctx, datasetId) {
  const urls = new Map(); // sha256 -> Promise<object URL | null>
  const queue = [];
  const stop = new AbortController();
  let running = 0;
  ctx.onLeave(() => {
    stop.abort();
    queue.length = 0;
    for (const url of urls.values()) url.then((u) => u && URL.revokeObjectURL(u));
  });
  function pump() {
    while (running < THUMB_PARALLEL && queue.length) {
      running += 1;
      queue.shift()().finally(() => { running -= 1; pump(); });
    }
  }
  function load(sha) {
    if (!urls.has(sha)) {
      urls.set(sha, new Promise((resolve) => {
        queue.push(async () => {
          try {
            const path = `/v1/datasets/${encodeURIComponent(datasetId)}/images/${encodeURIComponent(sha)}/thumbnail`;
            const res = await api("GET", path, { query: { size: THUMB_SIZE }, raw: true, cache: "default", signal: stop.signal });
            const blob = await res.blob();
            resolve(stop.signal.aborted ? null : URL.createObjectURL(blob));
          } catch {
            resolve(null); // a stored image that no longer decodes, a network error, leaving
          }
        });
        pump();
      }));
    }
    return urls.get(sha);
  }
  /** A cell's content: a placeholder, replaced by the thumbnail once it has come. */
  return (sha, alt) => {
    const slot = h("span", { class: "no-thumb", text: "…" });
    load(sha).then((url) => {
      if (!url) {
        slot.textContent = "—";
        return;
      }
      const img = h("img", { src: url, alt, class: "thumb", width: "48", height: "48" });
      img.addEventListener("error", () => img.replaceWith(h("span", { class: "thumb broken", text: "no preview" })));
      slot.replaceWith(img);
    });
    return slot;
  };
}

function labelSummary(counts) {
  const entries = Object.entries(counts || {});
  if (!entries.length) return "—";
  const shown = entries.slice(0, 4).map(([l, n]) => `${l} ${n}`).join(", ");
  return entries.length > 4 ? `${shown}, +${entries.length - 4} more` : shown;
}

export function listPage(ctx) {
  const name = input({ name: "name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9_.\\-]{0,99}" });
  const description = input({ name: "description" });
  const err = errorBox();
  const list = pagedTable({
    path: "/v1/datasets",
    caption: "Your datasets",
    empty: "No dataset yet: create one above.",
    headers: ["Name", "Images", "Labels", "Features ready", "Created"],
    row: (d) => h("tr", {},
      td(link(`#/datasets/${encodeURIComponent(d.id)}`, d.name)),
      td(String(d.image_count)),
      td(labelSummary(d.label_counts)),
      td(d.features_ready === null ? "—" : `${d.features_ready} of ${d.image_count}`),
      td(fmtDate(d.created_at))),
  });
  const form = h("form", { class: "inline-form", "aria-label": "Create a dataset" },
    field("Dataset name", name, "Letters, digits, _ . -; unique in your tenant."),
    field("Description (optional)", description),
    h("button", { type: "submit", class: "primary" }, "Create dataset"), err);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    err.show(null);
    try {
      const d = await api("POST", "/v1/datasets", { json: { name: name.value.trim(), description: description.value } });
      ctx.toast(`Dataset ${d.name} created.`);
      ctx.navigate(`#/datasets/${encodeURIComponent(d.id)}`);
    } catch (e2) {
      err.show(e2);
    }
  });
  return page("Datasets", panel("New dataset", form), panel("Your datasets", list));
}

export function detailPage(ctx) {
  const id = ctx.params.id;
  const urls = [];
  ctx.onLeave(() => urls.forEach((u) => URL.revokeObjectURL(u)));
  const thumbnailOf = thumbnailLoader(ctx, id);
  const title = h("h1", { tabindex: "-1", text: "Dataset" });
  const desc = h("p", { class: "lead" });
  const err = errorBox();
  const summary = h("div", {});
  const labelFilter = select([["", "all labels"]], { id: "label-filter" });
  const imagesBox = h("div", {});

  async function refresh() {
    try {
      const d = await get(`/v1/datasets/${encodeURIComponent(id)}`);
      title.textContent = `Dataset ${d.name}`;
      document.title = `${title.textContent} · headhub console`;
      desc.textContent = d.description || "";
      const counts = Object.entries(d.label_counts).sort((a, b) => a[0].localeCompare(b[0]));
      clear(summary, 
        h("p", {}, `${d.image_count} images in ${counts.length} labels`,
          d.features_ready === null ? "" : ` · features ready for ${d.features_ready} of ${d.image_count}`),
        counts.length ? bars(counts.map(([label, n]) => ({ label, value: n })), { label: "Images per label" }) : null);
      const chosen = labelFilter.value;
      clear(labelFilter, h("option", { value: "", text: "all labels" }),
        counts.map(([l]) => h("option", { value: l, text: l })));
      labelFilter.value = chosen;
      return d;
    } catch (e) {
      err.show(e);
      return null;
    }
  }

  function imagesTable() {
    const t = pagedTable({
      path: `/v1/datasets/${encodeURIComponent(id)}/images`,
      query: { label: labelFilter.value || undefined },
      limit: 100,
      caption: "Images",
      empty: "No image yet: drop some above.",
      headers: ["Preview", "File", "Label", "Size", "Pixels", "Added"],
      row: (img) => h("tr", {},
        td(thumbnailOf(img.sha256, `${img.label}: ${img.filename}`)),
        td(h("span", { class: "filename", text: img.filename })),
        td(img.label), td(fmtBytes(img.size_bytes)), td(`${img.width}×${img.height}`), td(fmtDate(img.created_at))),
    });
    clear(imagesBox, t);
  }
  labelFilter.addEventListener("change", imagesTable);

  // -- upload --------------------------------------------------------------------------------
  const label = input({ name: "label", id: "upload-label" });
  const prog = progress(0, "Upload progress");
  prog.hidden = true;
  const uploadErr = errorBox();
  const result = h("div", { role: "status", "aria-live": "polite" });
  const gallery = h("div", { class: "gallery", "aria-label": "Previews of this upload" });

  async function previewsOf(files) {
    const shown = [];
    for (const f of files) {
      if (isZip(f)) {
        try {
          const entries = await readZip(f);
          for (const entry of entries.slice(0, 500)) {
            if (shown.length >= 48) break;
            const blob = await entry.blob();
            if (blob) shown.push([entry.label, entry.name, blob]);
          }
        } catch { /* the server says what is wrong with the archive */ }
      } else if (shown.length < 48) {
        shown.push([label.value.trim(), f.name, f]);
      }
    }
    clear(gallery, shown.map(([l, n, blob]) => h("figure", { class: "tile" },
      thumb(blob, `${l}: ${n}`, urls), h("figcaption", {}, h("span", { class: "tile-label", text: l }), " ", h("span", { class: "filename", text: n })))));
  }

  async function send(files) {
    uploadErr.show(null);
    clear(result);
    const zips = files.filter(isZip);
    const images = files.filter((f) => !isZip(f));
    const labelValue = label.value.trim();
    if (images.length && !labelValue) {
      uploadErr.show(new Error("Type the label of these images first (a zip's top-level folders are its labels)."));
      label.focus();
      return;
    }
    const batches = zips.map((z) => ({ zip: z, bytes: z.size }));
    for (let i = 0; i < images.length;) {
      const batch = [];
      let bytes = 0;
      while (i < images.length && batch.length < BATCH_FILES && (bytes === 0 || bytes + images[i].size <= BATCH_BYTES)) {
        bytes += images[i].size;
        batch.push(images[i]);
        i += 1;
      }
      batches.push({ files: batch, bytes });
    }
    const total = batches.reduce((a, b) => a + b.bytes, 0) || 1;
    let done = 0;
    const totals = { added: 0, duplicates: 0, rejected: [] };
    prog.hidden = false;
    setProgress(prog, 0, `0% of ${fmtBytes(total)}`);
    const previewing = previewsOf(files);
    try {
      for (const b of batches) {
        const form = new FormData();
        if (b.zip) form.append("archive", b.zip, b.zip.name);
        else {
          form.append("label", labelValue);
          for (const f of b.files) form.append("files", f, f.name);
        }
        const res = await upload(`/v1/datasets/${encodeURIComponent(id)}/images`, form, (loaded, sent) => {
          const frac = (done + (loaded / sent) * b.bytes) / total;
          setProgress(prog, frac, `${Math.round(frac * 100)}% of ${fmtBytes(total)}`);
        });
        done += b.bytes;
        totals.added += res.added;
        totals.duplicates += res.duplicates;
        totals.rejected.push(...res.rejected);
      }
      setProgress(prog, 1, `100% of ${fmtBytes(total)}: done`);
    } catch (e) {
      uploadErr.show(e);
    }
    append(clear(result),
      h("p", { class: "upload-summary", text: `Added ${totals.added}, duplicates ${totals.duplicates}, rejected ${totals.rejected.length}.` }),
      totals.rejected.length ? table(["File", "Reason"],
        totals.rejected.map((r) => h("tr", {}, td(h("span", { class: "filename", text: r.filename })), td(r.reason))),
        "Rejected files") : null);
    await previewing;
    await refresh();
    imagesTable();
  }

  const zone = dropZone({
    label: "Drop images or a .zip here",
    hint: "Loose images all get the label above; a zip's top-level folders are its labels (red/001.png).",
    accept: "image/*,.zip,application/zip",
    onFiles: send,
  });

  const del = confirmButton("Delete dataset", "Click again to delete it and its images", async () => {
    try {
      await api("DELETE", `/v1/datasets/${encodeURIComponent(id)}`);
      ctx.toast("Dataset deleted.");
      ctx.navigate("#/datasets");
    } catch (e) {
      err.show(e);
    }
  });

  const trainLink = link(`#/training?dataset=${encodeURIComponent(id)}`, "Train a head on this dataset", { class: "button-like" });
  refresh().then((d) => { if (d) imagesTable(); });
  return h("section", { class: "page" }, title, desc, err,
    h("div", { class: "actions" }, trainLink, del),
    panel("Labels", summary),
    panel("Upload images",
      field("Label for loose images", label, "Not needed for a zip."),
      zone, prog, uploadErr, result, gallery),
    panel("Images", field("Show", labelFilter), imagesBox));
}
