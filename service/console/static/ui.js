// Page building blocks shared by several pages.
import { get } from "./api.js";
import { button, clear, errorBox, h, table } from "./dom.js";

/** <section><h1>…</h1>…</section>; the router focuses the h1 after navigation. */
export function page(title, ...children) {
  return h("section", { class: "page" }, h("h1", { tabindex: "-1", text: title }), ...children);
}

export function panel(title, ...children) {
  return h("section", { class: "card" }, h("h2", { text: title }), ...children);
}

/** A paged table of a list endpoint (`items` + `next_cursor`) with a "Load more" button. */
export function pagedTable({ path, query = {}, headers, row, caption, empty = "Nothing yet.", limit = 50 }) {
  const err = errorBox();
  const body = h("div", { class: "paged" });
  const more = button("Load more", () => load(), { class: "secondary", hidden: true });
  let cursor = null;
  let rows = [];
  let latest = 0; // only the newest load may draw (a reload can overtake a slower one)
  const out = h("div", {}, err, body, more);
  async function load(reset) {
    const mine = ++latest;
    try {
      const res = await get(path, { ...query, limit, cursor: reset ? null : cursor });
      if (mine !== latest) return rows;
      rows = (reset ? [] : rows).concat(res.items);
      cursor = res.next_cursor;
      clear(body, rows.length
        ? table(headers, rows.map(row), caption)
        : h("p", { class: "empty", text: empty }));
      more.hidden = !cursor;
      err.show(null);
    } catch (e) {
      if (mine === latest) err.show(e);
    }
    return rows;
  }
  out.reload = () => load(true);
  out.rows = () => rows;
  load(true);
  return out;
}

/** A freshly created key, shown once, with a copy button. */
export function keyReveal(created, onDone) {
  const value = h("input", { type: "text", readOnly: true, value: created.key, class: "key-value", id: "new-key-value", "aria-label": "The new key" });
  const status = h("span", { class: "hint", role: "status" });
  const copy = button("Copy", async () => {
    try {
      await navigator.clipboard.writeText(created.key);
      status.textContent = "Copied to the clipboard.";
    } catch {
      value.select();
      status.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
    }
  }, { class: "primary" });
  const box = h("div", { class: "key-reveal", role: "group", "aria-labelledby": "key-reveal-title" },
    h("h3", { id: "key-reveal-title", text: `New ${created.scope} key “${created.name}”` }),
    h("p", { text: "This is the only time the key is shown: copy it now and store it safely." }),
    h("div", { class: "row" }, value, copy),
    status,
    button("I have stored it", () => { box.remove(); onDone?.(); }, { class: "secondary" }));
  setTimeout(() => value.focus(), 0);
  return box;
}

/** Run `tick` now and every `ms` while `keepGoing()` is true and the page is shown. */
export function poll(ctx, tick, ms) {
  let timer = null;
  let stopped = false;
  const run = async () => {
    if (stopped) return;
    let again = false;
    try {
      again = await tick();
    } catch {
      again = true; // a failed poll (e.g. a restart) is retried; 401 signs out elsewhere
    }
    if (again && !stopped) timer = setTimeout(run, ms);
  };
  ctx.onLeave(() => { stopped = true; clearTimeout(timer); });
  run();
}

export const STATUS_CLASS = {
  queued: "neutral", running: "info", succeeded: "ok", failed: "bad", cancelled: "neutral",
};
