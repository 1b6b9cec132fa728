// Usage: how many images other tenants (and this one) scored with each public head.
import { getAll } from "../api.js";
import { bars } from "../charts.js";
import { append, clear, errorBox, fmtDate, h, link, table, td } from "../dom.js";
import { headHref } from "./heads.js";
import { page, panel } from "../ui.js";

export function usagePage() {
  const err = errorBox();
  const box = h("div", {}, h("p", { class: "hint", text: "Loading…" }));
  getAll("/v1/heads").then((heads) => {
    const pub = heads.filter((hd) => hd.visibility === "public").sort((a, b) => b.usage_count - a.usage_count);
    clear(box);
    if (!pub.length) {
      append(box, h("p", { class: "empty" }, "No public head yet: publish one from its page (", link("#/heads", "Heads"), ")."));
      return;
    }
    const total = pub.reduce((a, hd) => a + hd.usage_count, 0);
    append(box, 
      h("p", { text: `${total} images scored with your ${pub.length} public head${pub.length === 1 ? "" : "s"}, all tenants together.` }),
      bars(pub.map((hd) => ({ label: `${hd.owner}/${hd.name}`, value: hd.usage_count })), { label: "Images scored per public head" }),
      table(["Head", "Images scored", "Versions", "Updated"], pub.map((hd) => h("tr", {},
        td(link(headHref(hd.owner, hd.name), `${hd.owner}/${hd.name}`)), td(String(hd.usage_count)),
        td(String(hd.version_count)), td(fmtDate(hd.updated_at)))), "Public heads by usage"));
  }).catch((e) => { clear(box); err.show(e); });
  return page("Usage", panel("Your public heads", err, box));
}
