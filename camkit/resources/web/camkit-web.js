/* camkit's static CAM page (written by `camkit export RUN --web DIR`).

One ONNX graph gives the class probabilities and every class's exact CAM (W_k . A at the layer's
resolution); this page runs it with onnxruntime-web (WebAssembly, one thread) on a picture or
webcam frames and draws the map of the chosen class over it.

Everything comes from this folder, through classic <script> tags, which browsers load from
file:// as well as from any static host: ort-bundle.js (the runtime's ES module as a string,
imported from a blob: URL), ort-wasm.js (its WebAssembly as base64, handed over as bytes, so it is
never fetched), model.js (the graph as base64 and its sidecar). No request leaves the folder.

The picture reaches the model exactly as camkit prepares it (camkit/core/images.py): decoded without
colour-profile conversion, EXIF orientation applied, alpha composited on white (Pillow's
alpha_composite integer arithmetic), squished to size x size by Pillow's bilinear resampling
(a triangle filter widened by the downscale factor, 22-bit fixed point), uint8 NCHW. The map of
class k is ReLU then min-max to [0, 1] (camkit.cam.base.normalise), drawn where the sidecar's
grid says its cells look (camkit.core.geometry: cell i at stride * i + offset pixels of the model's
input), bilinear between cell centres, held beyond the outermost ones.
*/
"use strict";
(function () {
  const C = window.CAMKIT_CONFIG;
  const $ = (id) => document.getElementById(id);
  const EPS = 1e-8;                    // camkit.cam.base.EPS
  const PRECISION_BITS = 32 - 8 - 2;   // Pillow's Resample.c
  const MAX_PIXELS = 64000000;         // camkit.app.APP_MAX_PIXELS
  const DISPLAY_MAX = 512, DISPLAY_MIN = 256;

  function b64bytes(s) {
    const bin = atob(s), out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  // ------------------------------------------------------------ Pillow's bilinear resize

  /* Pillow's precompute_coeffs for the bilinear filter (support 1), normalised to fixed point. */
  function coeffs(inSize, outSize) {
    const scale = inSize / outSize, filterscale = Math.max(scale, 1.0);
    const support = 1.0 * filterscale, ksize = Math.ceil(support) * 2 + 1, ss = 1.0 / filterscale;
    const bounds = new Int32Array(outSize * 2), kk = new Int32Array(outSize * ksize);
    const w = new Float64Array(ksize);
    for (let xx = 0; xx < outSize; xx++) {
      const center = (xx + 0.5) * scale;
      let xmin = Math.trunc(center - support + 0.5); if (xmin < 0) xmin = 0;
      let xmax = Math.trunc(center + support + 0.5); if (xmax > inSize) xmax = inSize;
      xmax -= xmin;
      let ww = 0.0;
      for (let x = 0; x < xmax; x++) {
        const t = Math.abs((x + xmin - center + 0.5) * ss);
        w[x] = t < 1.0 ? 1.0 - t : 0.0;
        ww += w[x];
      }
      for (let x = 0; x < xmax; x++) {
        const k = ww !== 0.0 ? w[x] / ww : w[x];
        kk[xx * ksize + x] = Math.trunc(k < 0 ? -0.5 + k * (1 << PRECISION_BITS) : 0.5 + k * (1 << PRECISION_BITS));
      }
      bounds[xx * 2] = xmin; bounds[xx * 2 + 1] = xmax;
    }
    return { bounds, kk, ksize };
  }

  function clip8(ss) {
    const v = ss >> PRECISION_BITS;
    return v < 0 ? 0 : v > 255 ? 255 : v;
  }

  /* (h, w, 3) uint8 -> (oh, ow, 3): Pillow's Image.resize((ow, oh), BILINEAR) on an RGB image,
     horizontal pass first, both passes rounded to 8 bits as Pillow does. */
  function resizeRGB(src, w, h, ow, oh) {
    let cur = src, cw = w;
    if (ow !== w) {
      const { bounds, kk, ksize } = coeffs(w, ow), tmp = new Uint8Array(h * ow * 3);
      for (let y = 0; y < h; y++) {
        for (let xx = 0; xx < ow; xx++) {
          const xmin = bounds[xx * 2], xmax = bounds[xx * 2 + 1], k0 = xx * ksize;
          for (let c = 0; c < 3; c++) {
            let ss = 1 << (PRECISION_BITS - 1);
            for (let x = 0; x < xmax; x++) ss += cur[(y * w + x + xmin) * 3 + c] * kk[k0 + x];
            tmp[(y * ow + xx) * 3 + c] = clip8(ss);
          }
        }
      }
      cur = tmp; cw = ow;
    }
    if (oh !== h) {
      const { bounds, kk, ksize } = coeffs(h, oh), out = new Uint8Array(oh * cw * 3);
      for (let yy = 0; yy < oh; yy++) {
        const ymin = bounds[yy * 2], ymax = bounds[yy * 2 + 1], k0 = yy * ksize;
        for (let x = 0; x < cw * 3; x++) {
          let ss = 1 << (PRECISION_BITS - 1);
          for (let y = 0; y < ymax; y++) ss += cur[(y + ymin) * cw * 3 + x] * kk[k0 + y];
          out[yy * cw * 3 + x] = clip8(ss);
        }
      }
      cur = out;
    }
    return cur;
  }

  /* RGB picture -> size x size (camkit.core.images.resize_square): squished, or with the run's
     `crop` the centre square first (fastai's Resize at inference). */
  function toSquare(rgb, w, h) {
    if (C.resize !== "crop" || w === h) return resizeRGB(rgb, w, h, C.size, C.size);
    const side = Math.min(w, h), left = Math.floor((w - side) / 2), top = Math.floor((h - side) / 2);
    const sq = new Uint8Array(side * side * 3);
    for (let y = 0; y < side; y++) sq.set(rgb.subarray(((y + top) * w + left) * 3, ((y + top) * w + left + side) * 3), y * side * 3);
    return resizeRGB(sq, side, side, C.size, C.size);
  }

  /* RGBA (unpremultiplied) -> RGB on white: Pillow's alpha_composite(white, image) in integers. */
  function onWhite(rgba, n) {
    const rgb = new Uint8Array(n * 3);
    for (let i = 0; i < n; i++) {
      const a = rgba[i * 4 + 3];
      for (let c = 0; c < 3; c++) {
        const s = rgba[i * 4 + c];
        if (a === 255) { rgb[i * 3 + c] = s; continue; }
        if (a === 0) { rgb[i * 3 + c] = 255; continue; }
        const outa255 = a * 255 + 255 * (255 - a);
        const coef1 = Math.floor(a * 255 * 255 * 128 / outa255), coef2 = 255 * 128 - coef1;
        const t = s * coef1 + 255 * coef2 + (0x80 << 7);
        rgb[i * 3 + c] = (((t >>> 8) + t) >>> 8) >>> 7;
      }
    }
    return rgb;
  }

  // ------------------------------------------------------------ the model

  let session = null, ort = null;

  async function loadModel() {
    const url = URL.createObjectURL(new Blob([window.CAMKIT_ORT], { type: "text/javascript" }));
    ort = await import(url);
    URL.revokeObjectURL(url);
    ort.env.wasm.numThreads = 1;          // threads need cross-origin isolation, which file:// lacks
    ort.env.wasm.proxy = false;
    ort.env.wasm.wasmBinary = b64bytes(window.CAMKIT_WASM).buffer;
    session = await ort.InferenceSession.create(b64bytes(window.CAMKIT_MODEL), { executionProviders: ["wasm"] });
  }

  /* size x size x 3 uint8 -> {probs, maps, K, h, w} from the graph. */
  async function infer(square) {
    const S = C.size, chw = new Uint8Array(3 * S * S);
    for (let i = 0; i < S * S; i++) for (let c = 0; c < 3; c++) chw[c * S * S + i] = square[i * 3 + c];
    const feeds = {}; feeds[C.input] = new ort.Tensor("uint8", chw, [1, 3, S, S]);
    const out = await session.run(feeds);
    const maps = out[C.outputs.maps], [, K, h, w] = maps.dims;
    return { probs: Array.from(out[C.outputs.probs].data), maps: maps.data, K, h, w };
  }

  /* ReLU, then per-map min-max to [0, 1] (camkit.cam.base.normalise; a flat map is all 0). */
  function camMap(res, k) {
    const n = res.h * res.w, m = new Float32Array(n);
    let lo = Infinity, hi = -Infinity;
    for (let i = 0; i < n; i++) {
      const v = Math.max(0, res.maps[k * n + i]); m[i] = v;
      if (v < lo) lo = v; if (v > hi) hi = v;
    }
    for (let i = 0; i < n; i++) m[i] = (m[i] - lo) / (hi - lo + EPS);
    return m;
  }

  /* Cell coordinates of the H (or W) drawn pixels along one axis: the sidecar's grid resized to
     the drawing (camkit.core.geometry.Grid.resized), clamped to the outermost cell centres. */
  function cellCoords(n, cells, axis) {
    const g = C.grid, r = n / g.size[axis];
    const stride = g.stride[axis] * r, offset = (g.offset[axis] + 0.5) * r - 0.5, out = new Float64Array(n);
    for (let v = 0; v < n; v++) out[v] = cells === 1 ? 0 : Math.min(cells - 1, Math.max(0, (v - offset) / stride));
    return out;
  }

  /* (h, w) map -> (H, W), bilinear between cell centres (camkit.core.geometry.upsample). */
  function upsample(m, h, w, H, W) {
    const ys = cellCoords(H, h, 0), xs = cellCoords(W, w, 1), out = new Float32Array(H * W);
    for (let y = 0; y < H; y++) {
      const y0 = Math.floor(ys[y]), y1 = Math.min(h - 1, y0 + 1), fy = ys[y] - y0;
      for (let x = 0; x < W; x++) {
        const x0 = Math.floor(xs[x]), x1 = Math.min(w - 1, x0 + 1), fx = xs[x] - x0;
        const top = m[y0 * w + x0] * (1 - fx) + m[y0 * w + x1] * fx;
        const bottom = m[y1 * w + x0] * (1 - fx) + m[y1 * w + x1] * fx;
        out[y * W + x] = top * (1 - fy) + bottom * fy;
      }
    }
    return out;
  }

  // ------------------------------------------------------------ drawing

  const luts = {};
  function lut(name) {
    if (!luts[name]) luts[name] = b64bytes(C.colormaps[name]);
    return luts[name];
  }

  function displaySize(w, h) {
    const side = Math.max(w, h), scale = side > DISPLAY_MAX ? DISPLAY_MAX / side : side < DISPLAY_MIN ? DISPLAY_MIN / side : 1;
    return [Math.max(1, Math.round(w * scale)), Math.max(1, Math.round(h * scale))];
  }

  /* overlay = (1 - alpha) picture + alpha colormap(heat), as camkit.core.render.overlay. */
  function draw(state) {
    const [sx, sy, sw, sh] = state.view, canvas = $("overlay"), [W, H] = displaySize(sw, sh);
    canvas.width = W; canvas.height = H;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, H);
    ctx.drawImage(state.source, sx, sy, sw, sh, 0, 0, W, H);
    const k = target(state.result), map = camMap(state.result, k);
    const heat = upsample(map, state.result.h, state.result.w, H, W);
    const img = ctx.getImageData(0, 0, W, H), px = img.data, table = lut($("colormap").value);
    const alpha = parseFloat($("alpha").value), n = table.length / 3;
    for (let i = 0; i < W * H; i++) {
      const j = Math.min(n - 1, Math.floor(Math.min(1, Math.max(0, heat[i])) * n)) * 3;
      for (let c = 0; c < 3; c++) px[i * 4 + c] = Math.round(px[i * 4 + c] * (1 - alpha) + table[j + c] * alpha);
    }
    ctx.putImageData(img, 0, 0);
    const pred = argmax(state.result.probs);
    $("caption").textContent = `${C.classes[pred]} (${(100 * state.result.probs[pred]).toFixed(1)} %); ` +
      `heatmap: exact CAM for class ${C.classes[k]}`;
    page.last = { probs: state.result.probs, target: k, map: Array.from(map), h: state.result.h, w: state.result.w,
                  input: state.input, heat: { H, W, values: heat } };
  }

  function argmax(a) { let b = 0; for (let i = 1; i < a.length; i++) if (a[i] > a[b]) b = i; return b; }

  function target(result) {
    const v = $("target").value;
    return v === "pred" ? argmax(result.probs) : C.classes.indexOf(v);
  }

  function showProbs(probs) {
    const box = $("probs"); box.textContent = "";
    const order = probs.map((p, i) => i).sort((a, b) => probs[b] - probs[a]).slice(0, 5);
    for (const i of order) {
      const row = document.createElement("div"); row.className = "prob";
      const name = document.createElement("span"); name.className = "name"; name.textContent = C.classes[i];
      const bar = document.createElement("span"); bar.className = "bar"; bar.style.width = `${Math.round(160 * probs[i])}px`;
      const value = document.createElement("span"); value.textContent = `${(100 * probs[i]).toFixed(1)} %`;
      row.append(name, bar, value); box.append(row);
    }
  }

  function say(text, error) {
    const s = $("status"); s.textContent = text; s.className = error ? "error" : "";
  }

  // ------------------------------------------------------------ pictures and frames

  let current = null;

  /* A drawable (ImageBitmap, video) -> the model's answer, drawn. */
  async function explain(source, width, height) {
    const t0 = performance.now(), canvas = new OffscreenCanvas(width, height), ctx = canvas.getContext("2d");
    ctx.drawImage(source, 0, 0);
    const rgba = ctx.getImageData(0, 0, width, height, { colorSpace: "srgb" }).data;
    const square = toSquare(onWhite(rgba, width * height), width, height);
    const t1 = performance.now(), result = await infer(square), t2 = performance.now();
    // the part of the picture the map covers: all of it, or with `crop` its centre square
    const side = Math.min(width, height), view = C.resize === "crop"
      ? [Math.floor((width - side) / 2), Math.floor((height - side) / 2), side, side] : [0, 0, width, height];
    current = { source, view, result, input: square };
    showProbs(result.probs);
    draw(current);
    page.timing = { prepare: t1 - t0, graph: t2 - t1, draw: performance.now() - t2 };   // milliseconds
    return current;
  }

  async function explainFile(file) {
    stopWebcam();
    let bitmap;
    try {
      bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none",
                                               imageOrientation: "from-image" });
    } catch (e) {
      page.last = null;
      say(`${file.name}: not a readable image (no known image format)`, true);
      return null;
    }
    if (bitmap.width * bitmap.height > MAX_PIXELS) {
      say(`${file.name}: ${bitmap.width}x${bitmap.height} pixels is too large`, true);
      return null;
    }
    const done = await explain(bitmap, bitmap.width, bitmap.height);
    say(`${file.name}: ${bitmap.width} x ${bitmap.height} px`);
    return done;
  }

  let stream = null, frames = [];

  async function startWebcam() {
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    } catch (e) {
      say(`no webcam: ${e.message || e.name}`, true);
      return;
    }
    const video = $("video"); video.srcObject = stream; await video.play();
    $("webcam").textContent = "Stop webcam"; frames = [];
    say("webcam: explaining each frame");
    const loop = async () => {
      if (!stream) return;
      if (video.videoWidth > 0) {
        await explain(video, video.videoWidth, video.videoHeight);
        const now = performance.now(); frames.push(now);
        frames = frames.filter((t) => now - t < 2000);
        if (frames.length > 1) {
          page.fps = (frames.length - 1) * 1000 / (now - frames[0]);
          $("fps").textContent = `${page.fps.toFixed(1)} frames per second`;
        }
      }
      requestAnimationFrame(loop);
    };
    requestAnimationFrame(loop);
  }

  function stopWebcam() {
    if (!stream) return;
    stream.getTracks().forEach((t) => t.stop()); stream = null;
    $("webcam").textContent = "Start webcam"; $("fps").textContent = "";
  }

  // ------------------------------------------------------------ wiring

  const page = window.camkitPage = { last: null, fps: null, error: null, explainFile };

  function setup() {
    document.title = `camkit: ${C.title}`;
    $("title").textContent = `camkit: ${C.title}`;
    $("about").textContent = `${C.arch}, ${C.head} head, ${C.size}-px input, running in this browser ` +
      "(onnxruntime-web): nothing you show it leaves this page.";
    $("verdict").textContent = C.verdict;
    const opt = (sel, value, text) => { const o = document.createElement("option"); o.value = value; o.textContent = text; sel.append(o); };
    opt($("target"), "pred", "predicted");
    C.classes.forEach((c) => opt($("target"), c, c));
    Object.keys(C.colormaps).forEach((c) => opt($("colormap"), c, c));
    const redraw = () => { if (current) draw(current); };
    $("target").onchange = redraw; $("colormap").onchange = redraw;
    $("alpha").oninput = () => { $("alpha-value").textContent = parseFloat($("alpha").value).toFixed(2); redraw(); };
    $("file").onchange = () => { if ($("file").files.length) run(() => explainFile($("file").files[0])); };
    const drop = $("drop");
    drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
    drop.ondragleave = () => drop.classList.remove("over");
    drop.ondrop = (e) => {
      e.preventDefault(); drop.classList.remove("over");
      if (e.dataTransfer.files.length) run(() => explainFile(e.dataTransfer.files[0]));
    };
    $("webcam").onclick = () => (stream ? stopWebcam() : run(startWebcam));
  }

  let busy = Promise.resolve();
  function run(job) {
    page.done = false;
    busy = busy.then(() => page.ready).then(job).catch((e) => { page.error = String(e); say(String(e), true); })
      .finally(() => { page.done = true; });
    return busy;
  }

  setup();
  page.ready = loadModel().then(() => { say("ready: drop or pick an image, or start the webcam"); },
    (e) => { page.error = String(e); say(`the model could not be loaded: ${e}`, true); throw e; });
})();
