// Try it: drop, pick or paste images, choose one or several heads (own or any public one), see
// the top-k of each head as bars. One request: the image goes through the extractor once.
import { api, getAll } from "../api.js";
import { bars } from "../charts.js";
import { append, clear, errorBox, field, fmtPct, h, input, select } from "../dom.js";
import { dropZone, thumb } from "../files.js";
import { page, panel } from "../ui.js";

export function tryPage(ctx) {
  const urls = [];
  ctx.onLeave(() => urls.forEach((u) => URL.revokeObjectURL(u)));
  let images = [];
  const err = errorBox();
  const own = h("fieldset", { class: "head-picks" }, h("legend", { text: "Your heads" }));
  const preset = (ctx.query.get("heads") || "").split(",").map((x) => x.trim()).filter(Boolean);
  const other = input({ id: "try-refs", value: preset.join(", "), placeholder: "owner/name, owner/name@production, name:2" });
  const topK = select([1, 2, 3, 5, 10], { id: "try-topk", value: "3" });
  const chosen = h("div", { class: "gallery", "aria-live": "polite" });
  const results = h("div", { class: "results", "aria-live": "polite" });

  if (ctx.who.scope !== "admin") {
    getAll("/v1/heads").then((heads) => {
      if (!heads.length) { append(own, h("p", { class: "hint", text: "No head of your own yet." })); return; }
      for (const hd of heads) {
        const ref = `${hd.owner}/${hd.name}`;
        const id = `pick-${hd.owner}-${hd.name}`;
        const box = h("input", { type: "checkbox", id, value: ref, checked: preset.includes(ref) || preset.includes(hd.name) });
        append(own, h("div", { class: "check" }, box, h("label", { for: id, text: `${ref}${hd.suspended ? " (suspended)" : ""}` })));
      }
      if (preset.length) other.value = preset.filter((p) => !heads.some((hd) => p === `${hd.owner}/${hd.name}` || p === hd.name)).join(", ");
    }).catch((e) => err.show(e));
  } else {
    own.hidden = true;
  }

  function drawChosen() {
    clear(chosen, images.map((f, i) => h("figure", { class: "tile" }, thumb(f, f.name, urls),
      h("figcaption", {}, h("span", { class: "filename", text: f.name }), " ",
        h("button", { type: "button", class: "secondary small", "aria-label": `Remove ${f.name}`, on: { click: () => { images.splice(i, 1); drawChosen(); } } }, "×")))));
  }

  const zone = dropZone({
    label: "Drop an image here, paste one (Ctrl+V), or choose",
    hint: "Several images give one result each.",
    accept: "image/*",
    paste: true,
    onFiles: (files) => { images = images.concat(files.filter((f) => !/\.zip$/i.test(f.name))).slice(0, 16); drawChosen(); },
  });

  function refs() {
    const picked = [...own.querySelectorAll("input[type=checkbox]:checked")].map((b) => b.value);
    const typed = other.value.split(",").map((x) => x.trim()).filter(Boolean);
    return [...new Set([...picked, ...typed])];
  }

  async function predict() {
    err.show(null);
    const heads = refs();
    if (!images.length) { err.show(new Error("Choose, drop or paste an image first.")); return; }
    if (!heads.length) { err.show(new Error("Pick at least one head.")); return; }
    const form = new FormData();
    for (const f of images) form.append("files", f, f.name || "pasted.png");
    clear(results, h("p", { class: "hint", text: "Predicting…" }));
    try {
      const res = await api("POST", "/v1/predict", { query: { heads: heads.join(","), top_k: topK.value }, body: form });
      clear(results, res.results.map((r, i) => h("article", { class: "card result" },
        h("div", { class: "result-head" }, images[i] ? thumb(images[i], r.filename, urls) : null,
          h("h3", { class: "filename", text: r.filename })),
        Object.entries(r.predictions).map(([ref, preds]) => h("div", { class: "prediction" },
          h("h4", { text: ref }),
          res.extractors?.[ref] ? h("p", { class: "hint", text: `extractor ${res.extractors[ref].slice(0, 12)}` }) : null,
          bars(preds.map((p) => ({ label: p.label, value: p.score, text: fmtPct(p.score) })),
            { max: 1, label: `top ${preds.length} of ${ref}`, className: "predictions" }))))));
    } catch (e) {
      clear(results);
      err.show(e);
    }
  }

  const go = h("button", { type: "button", class: "primary", on: { click: predict } }, "Predict");
  return page("Try it",
    panel("Image", zone, chosen),
    panel("Heads", own, field("Other heads (references, comma-separated)", other, "Any public head of any tenant, e.g. from the marketplace."),
      field("Top-k", topK), go, err),
    panel("Results", results));
}
