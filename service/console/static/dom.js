// Building DOM without markup strings: every string becomes a text node or an attribute value,
// so a tenant's names, labels, descriptions and filenames can never turn into elements or script.
// Nothing in the console uses innerHTML, insertAdjacentHTML, document.write or eval
// (tests/console/test_serving.py checks the sources).

const PROPS = new Set(["value", "checked", "disabled", "selected", "hidden", "required",
  "multiple", "readOnly", "indeterminate"]);
const URL_ATTRS = new Set(["href", "src", "action", "formaction", "xlink:href"]);

function safeUrl(value) {
  const v = String(value).trim();
  // Hash routes, same-origin paths, and the object/data URLs of local previews only.
  if (/^(#|\.{0,2}\/(?!\/)|blob:|data:image\/)/i.test(v)) return v;
  if (!/^[^/?#]*:/.test(v)) return v; // relative, no scheme
  throw new Error(`refusing URL ${v.slice(0, 40)}`);
}

function setProps(el, props) {
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.setAttribute("class", Array.isArray(v) ? v.filter(Boolean).join(" ") : v);
    else if (k === "text") el.textContent = String(v);
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === "style") for (const [p, val] of Object.entries(v)) el.style.setProperty(p, String(val));
    else if (k === "dataset") for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = String(dv);
    else if (/^on/i.test(k)) throw new Error(`event handlers go in "on": ${k}`);
    else if (PROPS.has(k)) el[k] = v;
    else if (URL_ATTRS.has(k)) el.setAttribute(k, safeUrl(v));
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}

export function append(el, ...children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** h("p", {class: "x"}, "text", child) -> element; strings are always text. */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  return append(el, ...children);
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** The same for SVG elements (charts). */
export function s(tag, props, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setProps(el, props);
  return append(el, ...children);
}

/** Empty `el`, then append `children` (arrays flattened; null/false skipped; strings as text). */
export function clear(el, ...children) {
  el.replaceChildren();
  return append(el, ...children);
}

let idCounter = 0;
export function uid(prefix = "f") {
  idCounter += 1;
  return `${prefix}-${idCounter}`;
}

/** A labelled form control: <div class="field"><label for=id>text</label><control id=id></div>. */
export function field(labelText, control, hint) {
  if (!control.id) control.id = uid();
  const parts = [h("label", { for: control.id, text: labelText }), control];
  if (hint) {
    const hintEl = h("small", { class: "hint", id: uid("hint"), text: hint });
    control.setAttribute("aria-describedby", hintEl.id);
    parts.push(hintEl);
  }
  return h("div", { class: "field" }, parts);
}

export function input(props) {
  return h("input", { type: "text", autocomplete: "off", spellcheck: "false", ...props });
}

export function select(options, props) {
  const el = h("select", props);
  for (const o of options) {
    const [value, label] = Array.isArray(o) ? o : [o, o];
    el.append(h("option", { value: String(value), text: String(label) }));
  }
  if (props && props.value !== undefined) el.value = String(props.value);
  return el;
}

export function button(text, onClick, props = {}) {
  return h("button", { type: "button", ...props, on: { click: onClick, ...(props.on || {}) } }, text);
}

/** A table inside a horizontally scrolling wrapper (readable at 360 px). */
export function table(headers, rows, caption) {
  const t = h("table", {},
    caption ? h("caption", { text: caption }) : null,
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, rows));
  return h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption || "table" }, t);
}

export function td(...children) {
  return h("td", {}, ...children);
}

export function link(href, text, props = {}) {
  return h("a", { href, ...props }, text);
}

export function badge(text, kind = "") {
  return h("span", { class: ["badge", kind] }, text);
}

/** An error box (role=alert) whose text is the server's problem detail. */
export function errorBox() {
  const el = h("div", { class: "error", role: "alert", hidden: true });
  el.show = (err) => {
    el.textContent = err ? (err.message || String(err)) : "";
    el.hidden = !err;
  };
  return el;
}

export function fmtDate(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

export function fmtPct(x, digits = 1) {
  return typeof x === "number" && Number.isFinite(x) ? `${(x * 100).toFixed(digits)}%` : "—";
}

export function fmtBytes(n) {
  if (typeof n !== "number") return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function shortId(id) {
  return id ? String(id).slice(0, 8) : "—";
}

/** A button that asks for a second click before it acts (no window.confirm dialogs); leaving
 *  it (focus elsewhere, Escape) takes the question back. */
export function confirmButton(text, confirmText, onConfirm, props = {}) {
  let armed = false;
  const disarm = () => {
    armed = false;
    b.textContent = text;
    b.classList.remove("armed");
  };
  const b = button(text, async () => {
    if (!armed) {
      armed = true;
      b.textContent = confirmText;
      b.classList.add("armed");
      return;
    }
    disarm();
    await onConfirm();
  }, { class: "danger", ...props });
  b.addEventListener("blur", disarm);
  b.addEventListener("keydown", (e) => { if (e.key === "Escape") disarm(); });
  return b;
}
