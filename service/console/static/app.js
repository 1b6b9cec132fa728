// The console's shell: sign-in state, hash routes (#/datasets/…), navigation by scope.
// Routes live in the fragment so the page is one static file and no key ever reaches a URL.
import { api, clearKey, getKey, setUnauthorizedHandler } from "./api.js";
import { button, clear, h } from "./dom.js";
import * as admin from "./pages/admin.js";
import * as datasets from "./pages/datasets.js";
import * as heads from "./pages/heads.js";
import * as keys from "./pages/keys.js";
import * as marketplace from "./pages/marketplace.js";
import * as signin from "./pages/signin.js";
import * as training from "./pages/training.js";
import * as tryit from "./pages/try.js";
import * as usage from "./pages/usage.js";

const OWNER = ["owner"];
const TENANT = ["owner", "predict"];
const ADMIN = ["admin"];
const ANY = ["owner", "predict", "admin"];

// nav: the link text in the main navigation (absent: reachable by links only).
const ROUTES = [
  { path: "/datasets", scopes: OWNER, nav: "Datasets", page: datasets.listPage },
  { path: "/datasets/:id", scopes: OWNER, page: datasets.detailPage },
  { path: "/training", scopes: OWNER, nav: "Training", page: training.trainPage },
  { path: "/jobs/:id", scopes: [...OWNER, ...ADMIN], page: training.jobPage },
  { path: "/heads", scopes: TENANT, nav: "Heads", page: heads.listPage },
  { path: "/heads/:owner/:name", scopes: ANY, page: heads.detailPage },
  { path: "/try", scopes: ANY, nav: "Try it", page: tryit.tryPage },
  { path: "/marketplace", scopes: ANY, nav: "Marketplace", page: marketplace.marketplacePage },
  { path: "/keys", scopes: [...OWNER, ...ADMIN], nav: "Keys", navScopes: OWNER, page: keys.keysPage },
  { path: "/usage", scopes: OWNER, nav: "Usage", page: usage.usagePage },
  { path: "/admin/tenants", scopes: ADMIN, nav: "Tenants", page: admin.tenantsPage },
  { path: "/admin/heads", scopes: ADMIN, nav: "All heads", page: admin.headsPage },
  { path: "/admin/jobs", scopes: ADMIN, nav: "All jobs", page: admin.jobsPage },
  { path: "/admin/extractors", scopes: ADMIN, nav: "Extractors", page: admin.extractorsPage, feature: "extractors" },
];
const HOME = { owner: "/datasets", predict: "/try", admin: "/admin/tenants" };

const state = { who: null, features: {}, leave: [] };

function parseHash() {
  const raw = location.hash.startsWith("#/") ? location.hash.slice(1) : "/";
  const [path, qs] = raw.split("?", 2);
  return { path: path.replace(/\/+$/, "") || "/", query: new URLSearchParams(qs || "") };
}

function match(path) {
  const parts = path.split("/").filter(Boolean);
  for (const route of ROUTES) {
    const want = route.path.split("/").filter(Boolean);
    if (want.length !== parts.length) continue;
    const params = {};
    let ok = true;
    want.forEach((w, i) => {
      if (w.startsWith(":")) params[w.slice(1)] = decodeURIComponent(parts[i]);
      else if (w !== parts[i]) ok = false;
    });
    if (ok) return { route, params };
  }
  return null;
}

export function navigate(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function toast(message) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.hidden = false;
  el.classList.add("shown");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.remove("shown"), 4000);
}

function allowed(route) {
  if (!state.who || !route.scopes.includes(state.who.scope)) return false;
  return !route.feature || state.features[route.feature];
}

function renderNav(currentPath) {
  const nav = clear(document.getElementById("nav"));
  const who = clear(document.getElementById("who"));
  if (!state.who) return;
  const list = h("ul", {});
  for (const route of ROUTES) {
    const scopes = route.navScopes || route.scopes;
    if (!route.nav || !allowed(route) || !scopes.includes(state.who.scope)) continue;
    const current = currentPath === route.path || currentPath.startsWith(`${route.path}/`);
    list.append(h("li", {}, h("a", { href: `#${route.path}`, "aria-current": current ? "page" : false }, route.nav)));
  }
  nav.append(list);
  const label = state.who.scope === "admin" ? "operator (admin key)" : `${state.who.tenant} · ${state.who.scope} key`;
  who.append(h("span", { class: "who-label", text: label }),
    button("Sign out", () => signOut("You are signed out."), { class: "secondary small" }));
}

function signOut(message) {
  clearKey();
  state.who = null;
  state.features = {};
  signin.setNotice(message);
  navigate("#/signin");
}

async function loadIdentity() {
  state.who = await api("GET", "/v1/whoami");
  state.features = {};
  if (state.who.scope === "admin") {
    try {
      await api("GET", "/v1/extractors", { query: { limit: 1 } });
      state.features.extractors = true;
    } catch (e) {
      state.features.extractors = e.status !== 404; // 404: a service without the registry
    }
  }
}

async function render() {
  for (const fn of state.leave.splice(0)) fn();
  const { path, query } = parseHash();
  const main = clear(document.getElementById("main"));
  if (!getKey()) {
    renderNav(path);
    if (path !== "/signin") { navigate("#/signin"); return; }
  }
  if (getKey() && !state.who) {
    try {
      await loadIdentity();
    } catch (e) {
      if (e.status !== 401) signOut(`Could not check the key: ${e.message}`);
      return;
    }
  }
  if (path === "/signin" || path === "/") {
    if (state.who) { navigate(`#${HOME[state.who.scope]}`); return; }
    renderNav(path);
    document.title = "Sign in · headhub console";
    main.append(signin.signinPage({
      onSignedIn: async () => { await loadIdentity(); navigate(`#${HOME[state.who.scope]}`); },
    }));
    main.querySelector("input")?.focus();
    return;
  }
  renderNav(path);
  const found = match(path);
  const ctx = {
    params: found?.params || {},
    query,
    who: state.who,
    features: state.features,
    navigate,
    toast,
    onLeave: (fn) => state.leave.push(fn),
  };
  let page;
  if (!found) {
    page = h("section", {}, h("h1", { tabindex: "-1", text: "Not found" }),
      h("p", { text: "There is no such page in the console." }));
  } else if (!allowed(found.route)) {
    page = h("section", {}, h("h1", { tabindex: "-1", text: "Not available with this key" }),
      h("p", { text: `A ${state.who.scope} key cannot use this page.` }),
      h("p", {}, h("a", { href: `#${HOME[state.who.scope]}` }, "Go to the start page")));
  } else {
    page = found.route.page(ctx);
  }
  main.append(page);
  const heading = main.querySelector("h1");
  document.title = `${heading ? heading.textContent : "headhub"} · headhub console`;
  if (render.focusMain) heading?.focus({ preventScroll: false });
  render.focusMain = true;
}

setUnauthorizedHandler(() => {
  if (state.who || getKey()) signOut("The key was not accepted (revoked, or mistyped). Sign in again.");
});
window.addEventListener("hashchange", () => {
  if (location.hash === "#main") { document.getElementById("main").focus(); return; }
  render();
});
document.getElementById("skip-link").addEventListener("click", (e) => {
  e.preventDefault();
  document.getElementById("main").focus();
});
render.focusMain = false;
render();
