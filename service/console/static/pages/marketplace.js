// Marketplace: public heads of every tenant, searched by text and label, as cards.
import { get } from "../api.js";
import { button, clear, errorBox, field, fmtDate, fmtPct, h, input, link } from "../dom.js";
import { headHref } from "./heads.js";
import { page } from "../ui.js";

const MAX_CHIPS = 12;

function card(c) {
  const labels = c.labels.slice(0, MAX_CHIPS);
  const metrics = c.best_metrics || {};
  return h("article", { class: "card market-card", "aria-labelledby": `card-${c.owner}-${c.name}` },
    h("h2", { id: `card-${c.owner}-${c.name}` }, link(headHref(c.owner, c.name), c.ref)),
    h("p", { class: "description", text: c.description || "No description." }),
    h("ul", { class: "chips", "aria-label": "labels" },
      labels.map((l) => h("li", { class: "chip", text: l })),
      c.labels.length > MAX_CHIPS ? h("li", { class: "chip more", text: `+${c.labels.length - MAX_CHIPS} more` }) : null),
    h("dl", { class: "facts compact" },
      h("dt", { text: "Best top-1" }), h("dd", { text: c.best_version ? `${fmtPct(metrics.val_top1)} (v${c.best_version})` : "—" }),
      h("dt", { text: "Type" }), h("dd", { text: c.head_type || "—" }),
      h("dt", { text: "Versions" }), h("dd", { text: String(c.versions.length) }),
      h("dt", { text: "Used on" }), h("dd", { text: `${c.usage_count} images` }),
      h("dt", { text: "Updated" }), h("dd", { text: fmtDate(c.updated_at) })),
    h("div", { class: "actions" }, link(`#/try?heads=${encodeURIComponent(c.ref)}`, "Try it", { class: "button-like", "aria-label": `Try ${c.ref}` })));
}

export function marketplacePage(ctx) {
  const q = input({ id: "market-q", type: "search", value: ctx.query.get("q") || "" });
  const label = input({ id: "market-label", value: ctx.query.get("label") || "" });
  const err = errorBox();
  const grid = h("div", { class: "cards", "aria-live": "polite" });
  const count = h("p", { class: "hint", role: "status" });
  const more = button("Load more", () => load(false), { class: "secondary", hidden: true });
  let cursor = null;
  let latest = 0; // only the newest search may draw (an older answer can arrive later)

  async function load(reset) {
    const mine = ++latest;
    try {
      const res = await get("/v1/marketplace", {
        q: q.value.trim(), label: label.value.trim(), limit: 24, cursor: reset ? null : cursor,
      });
      if (mine !== latest) return;
      if (reset) clear(grid);
      grid.append(...res.items.map(card));
      cursor = res.next_cursor;
      more.hidden = !cursor;
      const n = grid.children.length;
      count.textContent = n ? `${n} head${n === 1 ? "" : "s"}${cursor ? " so far" : ""}` : "No public head matches.";
      err.show(null);
    } catch (e) {
      if (mine === latest) err.show(e);
    }
  }
  const form = h("form", { class: "inline-form", role: "search", "aria-label": "Search the marketplace" },
    field("Text (owner, name or description)", q), field("Label", label),
    h("button", { type: "submit", class: "primary" }, "Search"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const params = new URLSearchParams();
    if (q.value.trim()) params.set("q", q.value.trim());
    if (label.value.trim()) params.set("label", label.value.trim());
    history.replaceState(null, "", `#/marketplace${params.size ? `?${params}` : ""}`);
    load(true);
  });
  load(true);
  return page("Marketplace", h("p", { class: "lead", text: "Public heads of every tenant. Any key may use them in a prediction." }),
    form, err, count, grid, more);
}
