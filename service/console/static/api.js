// The console is a client of the public /v1 API like any other: a bearer key on every call.
// The key lives in this tab's sessionStorage (or only in memory when the user says so): never in
// a URL, never in a cookie. A 401 anywhere drops it and returns to sign-in.

const STORE_KEY = "headhub.console.key";
// The API is the parent of /console/ (works behind a path prefix too).
export const API_BASE = new URL("../", document.baseURI);

let memoryKey = null;
let onUnauthorized = () => {};

export function getKey() {
  return memoryKey ?? sessionStorage.getItem(STORE_KEY);
}

export function setKey(key, remember) {
  memoryKey = key;
  if (remember) sessionStorage.setItem(STORE_KEY, key);
  else sessionStorage.removeItem(STORE_KEY);
}

export function clearKey() {
  memoryKey = null;
  sessionStorage.removeItem(STORE_KEY);
}

export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.code = problem?.code || null;
    this.problem = problem || {};
  }
}

export function apiUrl(path, query) {
  const url = new URL(path.replace(/^\//, ""), API_BASE);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, String(v));
  }
  return url;
}

function authHeaders(extra) {
  const key = getKey();
  return { ...(key ? { Authorization: `Bearer ${key}` } : {}), ...(extra || {}) };
}

async function problemOf(response) {
  try {
    return await response.json();
  } catch {
    return { detail: `${response.status} ${response.statusText}` };
  }
}

/** fetch + JSON; throws ApiError with the server's problem detail; a 401 signs out.
 *  `cache` is "no-store" unless a caller asks for the HTTP cache (thumbnails: private + ETag). */
export async function api(method, path, { query, json, body, headers, raw, quiet401, cache, signal } = {}) {
  const init = {
    method,
    headers: authHeaders(headers),
    credentials: "omit",
    cache: cache || "no-store",
    referrerPolicy: "no-referrer",
    signal,
  };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  try {
    response = await fetch(apiUrl(path, query), init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, { detail: `The server could not be reached (${e.message}).` });
  }
  if (!response.ok) {
    const problem = await problemOf(response);
    if (response.status === 401 && !quiet401) onUnauthorized(problem);
    throw new ApiError(response.status, problem);
  }
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

export const get = (path, query, opts) => api("GET", path, { query, ...opts });

/** All pages of a list endpoint (bounded), for pickers. */
export async function getAll(path, query = {}, maxPages = 20) {
  const items = [];
  let cursor = null;
  for (let i = 0; i < maxPages; i += 1) {
    const page = await get(path, { ...query, limit: 200, cursor });
    items.push(...page.items);
    cursor = page.next_cursor;
    if (!cursor) break;
  }
  return items;
}

/** Multipart POST with upload progress (fetch cannot report it): onProgress(loaded, total). */
export function upload(path, formData, onProgress, query) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", apiUrl(path, query));
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) onProgress(e.loaded, e.total);
    });
    xhr.addEventListener("load", () => {
      const body = xhr.response;
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(body);
        return;
      }
      if (xhr.status === 401) onUnauthorized(body);
      reject(new ApiError(xhr.status, body || { detail: `HTTP ${xhr.status}` }));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, { detail: "The upload failed: the server could not be reached." })));
    xhr.addEventListener("abort", () => reject(new ApiError(0, { detail: "The upload was cancelled." })));
    xhr.send(formData);
  });
}

/** Download through fetch (the key goes in a header, not the URL), saved from a blob URL. */
export async function download(path, query, fallbackName) {
  const response = await api("GET", path, { query, raw: true });
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="?([^";]+)"?/i.exec(disposition);
  const name = (match ? match[1] : fallbackName).replace(/[/\\]/g, "_");
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30000);
  return { name, size: blob.size };
}
