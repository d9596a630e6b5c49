// Hotdog? — take or drop a photo, shrink it in the browser, ask the model, say the verdict.
// No build step, no dependencies. The page only ever talks to its own origin (web/proxy.py):
// GET /api/config and POST /api/predict. The TorchServe token stays on the server.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    camera: $("photo"),
    library: $("library-photo"),
    preview: $("preview"),
    placeholder: $("placeholder"),
    spinner: $("spinner"),
    result: $("result"),
    verdict: $("verdict"),
    confidence: $("confidence"),
    uploadInfo: $("upload-info"),
    error: $("error"),
    errorTitle: $("error-title"),
    errorDetail: $("error-detail"),
    dropzone: $("dropzone"),
  };

  // Used until /api/config answers (and if it never does): what the proxy sends for the shipped model
  // (upload_short_side: web/proxy.py's UPLOAD_SCALE x weights/preprocess.json's resize_size).
  let config = {
    upload_short_side: 328,
    jpeg_quality: 0.9,
    max_upload_bytes: 10 * 1024 * 1024,
    timeout_s: 30,
  };
  // Formats the server decodes as they are; anything else the browser can read is re-encoded as JPEG
  // (e.g. HEIC from an iPhone, which the server cannot read).
  const PASSTHROUGH_TYPES = new Set(["image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp"]);
  const ACCEPTED = "JPEG, PNG, WebP, GIF or BMP";

  let busy = false;
  let previewUrl = null;

  class PageError extends Error {
    constructor(title, detail) {
      super(title);
      this.title = title;
      this.detail = detail || "";
    }
  }

  const setState = (state) => { document.body.dataset.state = state; };

  function formatBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${Math.round(n / 1024)} KB`;
    return `${(n / (1024 * 1024)).toFixed(1)} MB`;
  }

  function formatConfidence(p) {
    const pct = p * 100;
    return pct >= 99.5 ? ">99% sure" : `${Math.round(pct)}% sure`;
  }

  function clearOutcome() {
    ui.result.hidden = true;
    ui.error.hidden = true;
    ui.result.removeAttribute("data-hotdog");
    ui.result.removeAttribute("data-label");
    ui.result.removeAttribute("data-confidence");
  }

  function showError(title, detail) {
    clearOutcome();
    ui.errorTitle.textContent = title;
    ui.errorDetail.textContent = detail || "";
    ui.error.hidden = false;
    setState("error");
  }

  function showPreview(blob) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = blob ? URL.createObjectURL(blob) : null;
    if (previewUrl) ui.preview.src = previewUrl;
    ui.preview.hidden = !previewUrl;
    ui.placeholder.hidden = Boolean(previewUrl);
  }

  function showResult(answer) {
    clearOutcome();
    const hotdog = answer.is_hotdog === true;  // the handler decides which label is the hot dog
    ui.verdict.textContent = hotdog ? "HOTDOG ✅" : "NOT HOTDOG ❌";
    ui.confidence.textContent = formatConfidence(Number(answer.confidence));
    ui.result.dataset.hotdog = String(hotdog);
    ui.result.dataset.label = answer.label;
    ui.result.dataset.confidence = String(answer.confidence);
    ui.result.hidden = false;
    setState("result");
  }

  function describeUpload(upload, file) {
    const sent = upload.width ? `${upload.width}×${upload.height} px, ${formatBytes(upload.blob.size)}`
      : formatBytes(upload.blob.size);
    const from = upload.shrunk ? ` (shrunk from ${upload.sourceWidth}×${upload.sourceHeight} px, ${formatBytes(file.size)})` : "";
    ui.uploadInfo.textContent = `Sent ${sent}${from}`;
    ui.uploadInfo.dataset.bytes = String(upload.blob.size);
    ui.uploadInfo.dataset.width = String(upload.width || "");
    ui.uploadInfo.dataset.height = String(upload.height || "");
    ui.uploadInfo.dataset.shrunk = String(upload.shrunk);
  }

  // ---- Reading and shrinking the photo ------------------------------------------------------

  // Decodes with an <img>: browsers apply the EXIF orientation when they draw it, so a sideways
  // phone photo comes out upright in the canvas (and the JPEG we send carries no EXIF to misread).
  function decodeImage(file) {
    return new Promise((resolve, reject) => {
      const url = URL.createObjectURL(file);
      const img = new Image();
      img.onload = () => {
        URL.revokeObjectURL(url);
        if (img.naturalWidth > 0 && img.naturalHeight > 0) resolve(img);
        else reject(new Error("no pixels"));
      };
      img.onerror = () => { URL.revokeObjectURL(url); reject(new Error("undecodable")); };
      img.src = url;
    });
  }

  function canvasToBlob(canvas, quality) {
    return new Promise((resolve, reject) => {
      canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("canvas.toBlob failed"))),
        "image/jpeg", quality);
    });
  }

  // Halves the image until it is within 2x of the target, then draws the final size: one big
  // downscale step aliases (Safari especially), repeated halving keeps fine detail smooth.
  async function shrink(img, width, height) {
    let src = img;
    let sw = img.naturalWidth;
    let sh = img.naturalHeight;
    const scratch = [];
    while (sw >= width * 2 && sh >= height * 2) {
      const c = document.createElement("canvas");
      c.width = Math.max(width, Math.floor(sw / 2));
      c.height = Math.max(height, Math.floor(sh / 2));
      const ctx = c.getContext("2d");
      ctx.imageSmoothingQuality = "high";
      ctx.drawImage(src, 0, 0, c.width, c.height);
      scratch.push(c);
      src = c;
      sw = c.width;
      sh = c.height;
    }
    const out = document.createElement("canvas");
    out.width = width;
    out.height = height;
    const ctx = out.getContext("2d");
    // Transparent pixels become white, exactly as the server composites transparency.
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, width, height);
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(src, 0, 0, width, height);
    for (const c of scratch) { c.width = 0; c.height = 0; } // free memory now (matters on iOS)
    try {
      return await canvasToBlob(out, config.jpeg_quality);
    } finally {
      out.width = 0;
      out.height = 0;
    }
  }

  function tooLarge(bytes) {
    return new PageError("That photo is too large",
      `It is ${formatBytes(bytes)}; the limit is ${formatBytes(config.max_upload_bytes)}. Try a smaller ${ACCEPTED} picture.`);
  }

  // The model resizes the shorter side to resize_size and crops the centre; pixels beyond
  // upload_short_side (2x resize_size) change nothing, so a 12 MP photo goes up as ~30 KB.
  async function prepareUpload(file) {
    let img = null;
    try {
      img = await decodeImage(file);
    } catch (e) {
      // The browser cannot read it. The server has the final word (it says what is wrong),
      // unless it is too big to send at all.
      if (file.size > config.max_upload_bytes) throw tooLarge(file.size);
      return { blob: file, width: 0, height: 0, shrunk: false };
    }
    const w = img.naturalWidth;
    const h = img.naturalHeight;
    const target = config.upload_short_side;
    const shortSide = Math.min(w, h);
    if (shortSide <= target && PASSTHROUGH_TYPES.has(file.type) && file.size <= config.max_upload_bytes) {
      return { blob: file, width: w, height: h, shrunk: false };
    }
    const scale = Math.min(1, target / shortSide);
    const width = Math.max(1, Math.round(w * scale));
    const height = Math.max(1, Math.round(h * scale));
    const blob = await shrink(img, width, height);
    if (blob.size > config.max_upload_bytes) throw tooLarge(blob.size);
    return { blob, width, height, shrunk: true, sourceWidth: w, sourceHeight: h };
  }

  // ---- Talking to the server ------------------------------------------------------------------

  const sentence = (s) => s.charAt(0).toUpperCase() + s.slice(1) + (/[.!?]$/.test(s) ? "" : ".");

  function serverError(status, body) {
    const said = body && typeof body.error === "string" ? body.error : "";
    if (status === 413) return new PageError("That photo is too large", said ? sentence(said) : `The limit is ${formatBytes(config.max_upload_bytes)}.`);
    if (status === 415 || status === 400 || status === 422) {
      return new PageError("That's not a photo I can read", said ? sentence(said) : `Try a ${ACCEPTED} picture.`);
    }
    if (status === 504) {
      return new PageError("The server took too long", said || "The model server did not answer in time. Try again.");
    }
    if (status === 502 || status === 503) {
      return new PageError("The hot dog server is down", said || "The model server is not answering. Try again in a moment.");
    }
    if (status === 403) return new PageError("The server refused this page", said);
    return new PageError("Something went wrong", said || `The server answered HTTP ${status}.`);
  }

  async function predict(blob) {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), config.timeout_s * 1000);
    let resp;
    try {
      resp = await fetch("/api/predict", {
        method: "POST",
        body: blob,
        headers: { "Content-Type": blob.type || "application/octet-stream" },
        cache: "no-store",
        signal: ctrl.signal,
      });
    } catch (e) {
      if (ctrl.signal.aborted) {
        throw new PageError("The server took too long", `No answer after ${config.timeout_s} seconds. Try again.`);
      }
      throw new PageError("Can't reach the server",
        "Check that this device is on the same network as the computer serving this page, and that the page is still running there.");
    } finally {
      clearTimeout(timer);
    }
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (!resp.ok) throw serverError(resp.status, body);
    if (!body || typeof body.label !== "string" || typeof body.confidence !== "number") {
      throw new PageError("Something went wrong", "The server's answer was not a prediction.");
    }
    return body;
  }

  async function classify(file) {
    if (!file || busy) return;
    busy = true;
    clearOutcome();
    setState("busy");
    ui.spinner.hidden = false;
    showPreview(null);  // an error about this file must not sit next to the previous photo
    try {
      if (file.size === 0) throw new PageError("That's not a photo I can read", "The file is empty.");
      const upload = await prepareUpload(file);
      showPreview(upload.width ? upload.blob : null);
      describeUpload(upload, file);
      const answer = await predict(upload.blob);
      showResult(answer);
    } catch (e) {
      if (e instanceof PageError) showError(e.title, e.detail);
      else showError("Something went wrong", String(e && e.message ? e.message : e));
    } finally {
      ui.spinner.hidden = true;
      busy = false;
    }
  }

  // ---- Input: camera button, library, drag and drop, paste -------------------------------------

  for (const input of [ui.camera, ui.library]) {
    input.addEventListener("change", () => {
      const file = input.files && input.files[0];
      input.value = ""; // the same photo can be picked again
      classify(file);
    });
  }

  const hasFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
  let dragDepth = 0;
  window.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth += 1;
    ui.dropzone.hidden = false;
  });
  window.addEventListener("dragover", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
  });
  window.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) ui.dropzone.hidden = true;
  });
  window.addEventListener("drop", (e) => {
    e.preventDefault(); // never let the browser navigate away to the dropped file
    dragDepth = 0;
    ui.dropzone.hidden = true;
    const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
    if (file) classify(file);
  });
  window.addEventListener("paste", (e) => {
    const file = e.clipboardData && e.clipboardData.files && e.clipboardData.files[0];
    if (file) classify(file);
  });

  // ---- Start ---------------------------------------------------------------------------------

  async function loadConfig() {
    try {
      const resp = await fetch("/api/config", { cache: "no-store" });
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      config = Object.assign(config, await resp.json());
      setState("idle");
    } catch (e) {
      showError("Can't reach the server", "Reload once the page is running again on the computer that serves it.");
    }
  }

  loadConfig();
})();
