// Operator pages (admin key): tenants and their first owner key, every head with
// suspend/unsuspend, every job with its status, and the extractors when the service has a
// registry of them (GET /v1/extractors; the page is hidden while that answers 404).
import { api, get } from "../api.js";
import {
  append, badge, button, clear, errorBox, field, fmtBytes, fmtDate, h, input, link, select,
  table, td,
} from "../dom.js";
import { JOB_HEADERS, jobRow } from "./training.js";
import { aliasText, headBadges, headHref } from "./heads.js";
import { keyReveal, page, pagedTable, panel, poll } from "../ui.js";

export function tenantsPage(ctx) {
  const name = input({ id: "tenant-name", required: true, pattern: "[a-z0-9\\-]{2,40}" });
  const withKey = h("input", { type: "checkbox", id: "tenant-first-key", checked: true });
  const keyName = input({ id: "tenant-key-name", value: "owner", required: true });
  const err = errorBox();
  const reveal = h("div", {});
  const list = pagedTable({
    path: "/v1/tenants",
    caption: "Tenants",
    empty: "No tenant yet.",
    headers: ["Tenant", "Created", "Open"],
    row: (t) => h("tr", {}, td(h("strong", { text: t.name })), td(fmtDate(t.created_at)),
      td(h("span", { class: "links" },
        link(`#/keys?tenant=${encodeURIComponent(t.name)}`, "keys", { "aria-label": `keys of ${t.name}` }), " · ",
        link(`#/admin/heads?owner=${encodeURIComponent(t.name)}`, "heads", { "aria-label": `heads of ${t.name}` }), " · ",
        link(`#/admin/jobs?owner=${encodeURIComponent(t.name)}`, "jobs", { "aria-label": `jobs of ${t.name}` })))),
  });
  const form = h("form", { class: "inline-form", "aria-label": "Create a tenant" },
    field("Tenant name", name, "a-z, 0-9 and -, 2 to 40 characters."),
    h("div", { class: "check" }, withKey, h("label", { for: withKey.id, text: "Also create its first owner key" })),
    field("Owner key name", keyName),
    h("button", { type: "submit", class: "primary" }, "Create tenant"));
  withKey.addEventListener("change", () => { keyName.disabled = !withKey.checked; });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    err.show(null);
    clear(reveal);
    try {
      const t = await api("POST", "/v1/tenants", { json: { name: name.value.trim() } });
      ctx.toast(`Tenant ${t.name} created.`);
      if (withKey.checked) {
        const created = await api("POST", `/v1/tenants/${encodeURIComponent(t.name)}/keys`, { json: { scope: "owner", name: keyName.value.trim() || "owner" } });
        append(reveal, h("p", { text: `Give this key to ${t.name}'s owner: it signs in here and creates the tenant's other keys.` }), keyReveal(created));
      }
      name.value = "";
      await list.reload();
    } catch (e2) { err.show(e2); }
  });
  return page("Tenants", panel("New tenant", form, err, reveal), panel("Tenants", list));
}

export function headsPage(ctx) {
  const owner = input({ id: "heads-owner", value: ctx.query.get("owner") || "" });
  const visibility = select([["", "any"], ["public", "public"], ["private", "private"]], { id: "heads-visibility", value: ctx.query.get("visibility") || "" });
  const err = errorBox();
  const box = h("div", {});
  let list = null;
  function draw() {
    list = pagedTable({
      path: "/v1/admin/heads",
      query: { owner: owner.value.trim() || undefined, visibility: visibility.value || undefined },
      caption: "Every head",
      empty: "No head matches.",
      headers: ["Head", "State", "Versions", "Aliases", "Usage", "Updated", "Action"],
      row: (hd) => h("tr", {},
        td(link(headHref(hd.owner, hd.name), `${hd.owner}/${hd.name}`)), td(headBadges(hd)),
        td(String(hd.version_count)), td(aliasText(hd.aliases)), td(String(hd.usage_count)), td(fmtDate(hd.updated_at)),
        td(button(hd.suspended ? "Unsuspend" : "Suspend", async () => {
          try {
            await api("PATCH", `/v1/admin/heads/${encodeURIComponent(hd.owner)}/${encodeURIComponent(hd.name)}`, { json: { suspended: !hd.suspended } });
            ctx.toast(`${hd.owner}/${hd.name} ${hd.suspended ? "reinstated" : "suspended"}.`);
            await list.reload();
          } catch (e) { err.show(e); }
        }, { class: hd.suspended ? "secondary small" : "danger small", "aria-label": `${hd.suspended ? "Unsuspend" : "Suspend"} ${hd.owner}/${hd.name}` }))),
    });
    clear(box, list);
  }
  const form = h("form", { class: "inline-form", "aria-label": "Filter heads" },
    field("Owner (tenant)", owner), field("Visibility", visibility), h("button", { type: "submit", class: "primary" }, "Filter"));
  form.addEventListener("submit", (e) => { e.preventDefault(); err.show(null); draw(); });
  draw();
  return page("All heads", h("p", { class: "lead", text: "A suspended head answers 403 head_suspended to everyone and leaves the marketplace; it stays in the registry." }),
    form, err, panel("Heads", box));
}

export function jobsPage(ctx) {
  const status = select([["", "any"], "queued", "running", "succeeded", "failed", "cancelled"], { id: "jobs-status", value: ctx.query.get("status") || "" });
  const owner = input({ id: "jobs-owner", value: ctx.query.get("owner") || "" });
  const box = h("div", {});
  let list = null;
  function draw() {
    list = pagedTable({
      path: "/v1/admin/jobs",
      query: { status: status.value || undefined, owner: owner.value.trim() || undefined },
      caption: "Every job, newest first",
      empty: "No job matches.",
      headers: [JOB_HEADERS[0], "Owner", ...JOB_HEADERS.slice(1)],
      row: (j) => jobRow(j, { showOwner: true }),
    });
    clear(box, list);
  }
  const form = h("form", { class: "inline-form", "aria-label": "Filter jobs" },
    field("Status", status), field("Owner (tenant)", owner), h("button", { type: "submit", class: "primary" }, "Filter"));
  form.addEventListener("submit", (e) => { e.preventDefault(); draw(); });
  draw();
  poll(ctx, async () => {
    await new Promise((r) => setTimeout(r, 0));
    if (list.rows().some((j) => j.status === "queued" || j.status === "running")) await list.reload();
    return true;
  }, 3000);
  return page("All jobs", form, panel("Jobs", box));
}

export function extractorsPage() {
  const err = errorBox();
  const box = h("div", {}, h("p", { class: "hint", text: "Loading…" }));
  get("/v1/extractors", { limit: 200 }).then((res) => {
    const items = Array.isArray(res) ? res : res.items || [];
    clear(box, items.length ? table(
      ["Id", "Architecture", "Input", "Features", "Bits/weight", "Size", "Status", "Default", "Pinned versions / aliases", "Note"],
      items.map((x) => h("tr", {},
        td(h("code", { text: String(x.id).slice(0, 12), title: x.id })), td(x.architecture ?? "—"),
        td(Array.isArray(x.input_size) ? x.input_size.slice(-2).join("×") : String(x.input_size ?? "—")),
        td(String(x.feature_dim ?? "—")), td(String(x.bits_per_weight ?? "—")), td(fmtBytes(x.size_bytes)),
        td(x.status ? badge(x.status, x.status === "active" ? "ok" : x.status === "retired" ? "bad" : "neutral") : "—",
          x.sunset ? ` sunset ${fmtDate(x.sunset)}` : ""),
        td(x.default ? "yes" : "no"), td(`${x.pinned_versions ?? "—"} / ${x.pinned_aliases ?? "—"}`),
        td(x.note ?? ""))),
      "Extractors") : h("p", { class: "empty", text: "No extractor registered." }));
  }).catch((e) => { clear(box); err.show(e); });
  return page("Extractors", panel("Extractors", err, box));
}
