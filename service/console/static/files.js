// Picking files: a keyboard-reachable drop zone (drag and drop, a file picker, or paste), local
// previews of what was picked, and a small zip reader for previewing an archive's images while
// it uploads (a dataset's stored images get their thumbnails from the API).
import { h, uid } from "./dom.js";

const IMAGE_EXT = /\.(jpe?g|png|gif|webp|bmp|tiff?)$/i;

export function isZip(file) {
  return /\.zip$/i.test(file.name) || file.type === "application/zip" || file.type === "application/x-zip-compressed";
}

export function isImageName(name) {
  return IMAGE_EXT.test(name);
}

/** A drop zone with a visible file button; onFiles(File[]) on drop, pick or paste. */
export function dropZone({ label, hint, accept, multiple = true, onFiles, paste = false }) {
  const inputId = uid("file");
  const fileInput = h("input", { type: "file", id: inputId, accept, multiple, class: "visually-hidden-input" });
  const zone = h("div", { class: "drop-zone" },
    h("p", { class: "drop-title", text: label }),
    h("p", { class: "hint", text: hint }),
    h("label", { for: inputId, class: "button-like" }, multiple ? "Choose files…" : "Choose a file…"),
    fileInput);
  fileInput.addEventListener("change", () => {
    if (fileInput.files.length) onFiles([...fileInput.files]);
    fileInput.value = "";
  });
  fileInput.addEventListener("focus", () => zone.classList.add("focus"));
  fileInput.addEventListener("blur", () => zone.classList.remove("focus"));
  for (const ev of ["dragenter", "dragover"]) {
    zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    zone.addEventListener(ev, () => zone.classList.remove("over"));
  }
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    const files = [...(e.dataTransfer?.files || [])];
    if (files.length) onFiles(multiple ? files : files.slice(0, 1));
  });
  if (paste) {
    const onPaste = (e) => {
      if (!zone.isConnected) { document.removeEventListener("paste", onPaste); return; }
      const files = [...(e.clipboardData?.files || [])].filter((f) => f.type.startsWith("image/"));
      if (files.length) { e.preventDefault(); onFiles(multiple ? files : files.slice(0, 1)); }
    };
    document.addEventListener("paste", onPaste);
  }
  return zone;
}

/** A thumbnail element for a Blob (object URL, revoked when the page is left). */
export function thumb(blob, alt, urls) {
  const url = URL.createObjectURL(blob);
  if (urls) urls.push(url);
  const img = h("img", { src: url, alt, class: "thumb", width: "48", height: "48" });
  // A file the browser cannot decode (the server will reject it too) gets a placeholder.
  img.addEventListener("error", () => img.replaceWith(h("span", { class: "thumb broken", text: "no preview" })));
  return img;
}

async function inflateRaw(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** Image entries of a zip, by its central directory: [{path, label, name, size, blob()}].
 *  Only what a preview needs: stored and deflated entries, no zip64. */
export async function readZip(file, { maxEntries = 20000 } = {}) {
  const buf = new Uint8Array(await file.arrayBuffer());
  const view = new DataView(buf.buffer);
  let eocd = -1;
  for (let i = buf.length - 22; i >= Math.max(0, buf.length - 65557); i -= 1) {
    if (view.getUint32(i, true) === 0x06054b50) { eocd = i; break; }
  }
  if (eocd < 0) throw new Error(`${file.name} is not a zip file.`);
  const count = Math.min(view.getUint16(eocd + 10, true), maxEntries);
  let p = view.getUint32(eocd + 16, true);
  const decoder = new TextDecoder();
  const entries = [];
  for (let n = 0; n < count && p + 46 <= buf.length; n += 1) {
    if (view.getUint32(p, true) !== 0x02014b50) break;
    const method = view.getUint16(p + 10, true);
    const compSize = view.getUint32(p + 20, true);
    const size = view.getUint32(p + 24, true);
    const nameLen = view.getUint16(p + 28, true);
    const extraLen = view.getUint16(p + 30, true);
    const commentLen = view.getUint16(p + 32, true);
    const local = view.getUint32(p + 42, true);
    const path = decoder.decode(buf.subarray(p + 46, p + 46 + nameLen));
    p += 46 + nameLen + extraLen + commentLen;
    const parts = path.split("/");
    if (path.endsWith("/") || parts.length < 2 || !isImageName(path) || parts.some((x) => x.startsWith("."))) continue;
    const dataStart = () => local + 30 + view.getUint16(local + 26, true) + view.getUint16(local + 28, true);
    entries.push({
      path, label: parts[0], name: parts[parts.length - 1], size,
      async blob() {
        const raw = buf.subarray(dataStart(), dataStart() + compSize);
        if (method === 0) return new Blob([raw]);
        if (method === 8 && typeof DecompressionStream === "function") return new Blob([await inflateRaw(raw)]);
        return null;
      },
    });
  }
  return entries;
}
