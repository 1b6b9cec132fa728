// Sign in with an API key: checked with GET /v1/whoami before it is kept.
import { ApiError, api, clearKey, setKey } from "../api.js";
import { errorBox, field, h, input } from "../dom.js";

let notice = "";

export function setNotice(text) {
  notice = text;
}

export function signinPage({ onSignedIn }) {
  const keyInput = input({ type: "password", name: "key", required: true, autocomplete: "off", placeholder: "hh_…" });
  const remember = h("input", { type: "checkbox", id: "remember", checked: true });
  const err = errorBox();
  const info = h("p", { class: "notice", role: "status", text: notice, hidden: !notice });
  notice = "";
  const form = h("form", { class: "card narrow", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title", tabindex: "-1", text: "Sign in" }),
    info,
    h("p", { text: "Paste an API key: a tenant's owner or predict key (hh_…), or the operator's admin key that headhub up printed. It is sent as a bearer header and kept only in this tab." }),
    field("API key", keyInput),
    h("div", { class: "check" }, remember,
      h("label", { for: "remember", text: "Keep me signed in in this tab (session storage; closed with the tab)" })),
    err,
    h("button", { type: "submit", class: "primary" }, "Sign in"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    err.show(null);
    const key = keyInput.value.trim();
    if (!key) return;
    setKey(key, remember.checked);
    try {
      await api("GET", "/v1/whoami", { quiet401: true });
    } catch (e2) {
      clearKey();
      err.show(e2 instanceof ApiError && e2.status === 401
        ? new Error("This key was not accepted: it is unknown, revoked or mistyped.")
        : e2);
      keyInput.focus();
      return;
    }
    keyInput.value = "";
    await onSignedIn();
  });
  return h("section", { class: "signin" }, form);
}
