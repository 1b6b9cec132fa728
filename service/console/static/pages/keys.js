// Keys: create (the key is shown once, with a copy button), list, revoke. An admin reaches a
// tenant's keys from the Tenants page (#/keys?tenant=name).
import { api } from "../api.js";
import { badge, confirmButton, errorBox, field, fmtDate, h, input, select, td } from "../dom.js";
import { keyReveal, page, pagedTable, panel } from "../ui.js";

export function keysPage(ctx) {
  const tenant = ctx.who.scope === "admin" ? ctx.query.get("tenant") : ctx.who.tenant;
  if (!tenant) return page("Keys", h("p", { text: "Choose a tenant on the Tenants page." }));
  const base = `/v1/tenants/${encodeURIComponent(tenant)}/keys`;
  const err = errorBox();
  const reveal = h("div", {});
  const name = input({ id: "key-name", required: true, maxlength: "100" });
  const scope = select([["predict", "predict: prediction only (apps in the field)"], ["owner", "owner: everything in this tenant"]], { id: "key-scope" });
  const list = pagedTable({
    path: base,
    caption: `Keys of ${tenant}`,
    headers: ["Name", "Id", "Scope", "Created", "Last used", "State", ""],
    row: (k) => h("tr", {},
      td(k.name, k.id === ctx.who.key_id ? " (this key)" : ""), td(h("code", { text: k.id })), td(k.scope),
      td(fmtDate(k.created_at)), td(fmtDate(k.last_used_at)),
      td(k.revoked_at ? badge("revoked", "bad") : badge("active", "ok")),
      td(k.revoked_at ? "" : confirmButton("Revoke", "Click again to revoke", async () => {
        try {
          await api("DELETE", `${base}/${encodeURIComponent(k.id)}`);
          ctx.toast(`Key ${k.name} revoked.`);
          await list.reload();
        } catch (e) { err.show(e); }
      }, { class: "danger small", "aria-label": `Revoke key ${k.name}` }))),
  });
  const form = h("form", { class: "inline-form", "aria-label": "Create a key" },
    field("Key name", name, "Where it will be used, e.g. ios-app."), field("Scope", scope),
    h("button", { type: "submit", class: "primary" }, "Create key"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    err.show(null);
    try {
      const created = await api("POST", base, { json: { scope: scope.value, name: name.value.trim() } });
      name.value = "";
      reveal.replaceChildren(keyReveal(created, () => name.focus()));
      await list.reload();
    } catch (e2) { err.show(e2); }
  });
  return page(ctx.who.scope === "admin" ? `Keys of ${tenant}` : "Keys",
    panel("New key", form, err, reveal), panel("Keys", list));
}
