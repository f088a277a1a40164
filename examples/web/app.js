// bincam web example: run an explaining ONNX file with ONNX Runtime Web and draw its heatmaps.
// URL parameters: ?model=URL&image=URL (defaults: model.onnx, face.png next to this page);
// or choose files with the two inputs. The page reads what the file computes from its own
// metadata (bincam.attributes, bincam.image_size, bincam.input, bincam.explain, and the input's
// preprocessing: bincam.pixel_range, mean, std, channel_order, layout, raw_pixels), so it needs
// nothing else. When done, window.bincamResult holds {attributes, logits, energy, overlays}.
import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";

ort.env.wasm.numThreads = 1; // no cross-origin isolation needed on a plain static server

// ONNX ModelProto.metadata_props is field 14, each entry {1: key, 2: value}: a minimal
// protobuf reader that skips every other field by its wire type.
function readVarint(bytes, pos) {
  let value = 0, shift = 0, byte;
  do {
    byte = bytes[pos++];
    value += (byte & 0x7f) * 2 ** shift;
    shift += 7;
  } while (byte & 0x80);
  return [value, pos];
}

function fields(bytes, start = 0, end = bytes.length) {
  const out = [];
  let pos = start;
  while (pos < end) {
    let key;
    [key, pos] = readVarint(bytes, pos);
    const number = Math.floor(key / 8), wire = key & 7;
    if (wire === 0) { [, pos] = readVarint(bytes, pos); }
    else if (wire === 1) { pos += 8; }
    else if (wire === 5) { pos += 4; }
    else if (wire === 2) {
      let length;
      [length, pos] = readVarint(bytes, pos);
      out.push({ number, start: pos, end: pos + length });
      pos += length;
    } else { throw new Error(`not an ONNX file (wire type ${wire})`); }
  }
  return out;
}

export function onnxMetadata(bytes) {
  const text = new TextDecoder();
  const meta = {};
  for (const f of fields(bytes).filter((f) => f.number === 14)) {
    const entry = {};
    for (const g of fields(bytes, f.start, f.end)) {
      entry[g.number] = text.decode(bytes.subarray(g.start, g.end));
    }
    meta[entry[1]] = entry[2] ?? "";
  }
  return meta;
}

// matplotlib's "jet" (its segment data, sampled into 256 entries as matplotlib does), so the
// overlays look like those `bincam cam` writes: c = 0.5·jet(h) + 0.5·image, then c / max c.
const JET = {
  r: [[0, 0], [0.35, 0], [0.66, 1], [0.89, 1], [1, 0.5]],
  g: [[0, 0], [0.125, 0], [0.375, 1], [0.64, 1], [0.91, 0], [1, 0]],
  b: [[0, 0.5], [0.11, 1], [0.34, 1], [0.65, 0], [1, 0]],
};
function segment(points, x) {
  for (let i = 1; i < points.length; i++) {
    const [x0, y0] = points[i - 1], [x1, y1] = points[i];
    if (x <= x1) return y0 + (y1 - y0) * (x - x0) / (x1 - x0);
  }
  return points[points.length - 1][1];
}
const LUT = Array.from({ length: 256 }, (_, i) =>
  ["r", "g", "b"].map((c) => segment(JET[c], i / 255)));

export function overlayPixels(rgba, heat, scale) {
  // rgba: Uint8ClampedArray of the image (S×S×4); heat: the map, values in [0, scale]
  const n = heat.length, mixed = new Float64Array(n * 3);
  let max = 0;
  for (let i = 0; i < n; i++) {
    const h = Math.min(Math.max(heat[i] / scale, 0), 1);
    const colour = LUT[Math.min(Math.floor(h * 256), 255)];
    for (let c = 0; c < 3; c++) {
      const v = 0.5 * colour[c] + 0.5 * (rgba[4 * i + c] / 255);
      mixed[3 * i + c] = v;
      if (v > max) max = v;
    }
  }
  const out = new Uint8ClampedArray(n * 4);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < 3; c++) out[4 * i + c] = Math.floor(255 * mixed[3 * i + c] / max);
    out[4 * i + 3] = 255;
  }
  return out;
}

async function bytesOf(source) {
  if (source instanceof Blob) return new Uint8Array(await source.arrayBuffer());
  const response = await fetch(source);
  if (!response.ok) throw new Error(`${source}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

async function pixelsOf(source, size) {
  const blob = source instanceof Blob ? source : await (await fetch(source)).blob();
  // no colour conversion, so the pixels are the file's own (as Pillow decodes them); an image of
  // another size is scaled to the model's square input (bincam itself centre-crops and resizes)
  const bitmap = await createImageBitmap(blob, {
    colorSpaceConversion: "none", premultiplyAlpha: "none",
  });
  const canvas = new OffscreenCanvas(size, size);
  const ctx = canvas.getContext("2d", { colorSpace: "srgb" });
  ctx.drawImage(bitmap, 0, 0, size, size);
  return ctx.getImageData(0, 0, size, size).data;
}

export function modelInput(rgba, size, meta) {
  // the file's own input from RGBA pixels, by the preprocessing its metadata records (bincam's
  // core.preprocess): x_c = (lo + (hi − lo)·p_order(c) − mean_c) / std_c, p = u/255, laid out
  // NCHW or NHWC; a raw-pixels file takes the uint8 [1, S, S, 3] RGB pixels themselves
  const json = (key, fallback) => (meta[key] ? JSON.parse(meta[key]) : fallback);
  const plane = size * size;
  if (json("bincam.raw_pixels", false)) {
    const data = new Uint8Array(3 * plane);
    for (let i = 0; i < plane; i++) {
      for (let c = 0; c < 3; c++) data[3 * i + c] = rgba[4 * i + c];
    }
    return new ort.Tensor("uint8", data, [1, size, size, 3]);
  }
  const [lo, hi] = json("bincam.pixel_range", [0, 1]);
  const mean = json("bincam.mean", [0, 0, 0]), std = json("bincam.std", [1, 1, 1]);
  const order = meta["bincam.channel_order"] === "bgr" ? [2, 1, 0] : [0, 1, 2];
  const nhwc = meta["bincam.layout"] === "nhwc";
  const data = new Float32Array(3 * plane);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) {
      const p = rgba[4 * i + order[c]] / 255;
      data[nhwc ? 3 * i + c : c * plane + i] = (lo + (hi - lo) * p - mean[c]) / std[c];
    }
  }
  return new ort.Tensor("float32", data, nhwc ? [1, size, size, 3] : [1, 3, size, size]);
}

function imageOfHeatmap(heat, size, mapSize) {
  // the file's maps are mapSize²; for display at the image size, nearest-neighbour
  if (mapSize === size) return heat;
  const out = new Float32Array(size * size);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      out[y * size + x] = heat[Math.floor(y * mapSize / size) * mapSize
                               + Math.floor(x * mapSize / size)];
    }
  }
  return out;
}

function halfToFloat(bits) {
  // IEEE 754 binary16 → number (browsers without Float16Array get float16 tensors as raw bits)
  const sign = bits & 0x8000 ? -1 : 1, exponent = (bits >> 10) & 0x1f, fraction = bits & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

function mapValues(tensor) {
  if (tensor.type === "float16" && tensor.data instanceof Uint16Array) {
    return Float32Array.from(tensor.data, halfToFloat);
  }
  return tensor.data;
}

export async function explain(modelSource, imageSource) {
  const status = document.getElementById("status");
  status.textContent = "loading the model…";
  const modelBytes = await bytesOf(modelSource);
  const meta = onnxMetadata(modelBytes);
  if (!meta["bincam.explain"]) {
    throw new Error("this ONNX file is not a bincam explaining file (no bincam.explain " +
                    "metadata): export one with `bincam export … --explain`");
  }
  const spec = JSON.parse(meta["bincam.explain"]);
  const attributes = JSON.parse(meta["bincam.attributes"]);
  const size = JSON.parse(meta["bincam.image_size"]);
  const session = await ort.InferenceSession.create(modelBytes, { executionProviders: ["wasm"] });
  const rgba = await pixelsOf(imageSource, size);
  status.textContent = "explaining…";
  const t0 = performance.now();
  const input = modelInput(rgba, size, meta);
  const out = await session.run({ [meta["bincam.input"] || "images"]: input });
  const ms = performance.now() - t0;
  const logits = Array.from(out.logits.data);
  const energy = out.energy ? Array.from(out.energy.data, (v) => (Number.isNaN(v) ? null : v))
                            : attributes.map(() => null);
  const [mapSize] = spec.map_size, plane = mapSize * mapSize;
  const heatmaps = mapValues(out.heatmaps);
  const container = document.getElementById("overlays");
  container.replaceChildren();
  const overlays = [];
  attributes.forEach((name, k) => {
    const heat = imageOfHeatmap(heatmaps.subarray(k * plane, (k + 1) * plane), size, mapSize);
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = size;
    canvas.dataset.attribute = name;
    const image = new ImageData(overlayPixels(rgba, heat, spec.value_range[1]), size, size);
    canvas.getContext("2d").putImageData(image, 0, 0);
    const p = 1 / (1 + Math.exp(-logits[k]));
    const figure = document.createElement("figure");
    const caption = document.createElement("figcaption");
    caption.textContent = `${name}: ${p >= 0.5 ? "present" : "absent"} (p=${p.toFixed(2)})` +
      (energy[k] === null ? "" : `, PE ${energy[k].toFixed(3)}`);
    figure.append(canvas, caption);
    container.append(figure);
    const box = canvas.getBoundingClientRect();
    overlays.push({ attribute: name, x: box.x, y: box.y, width: box.width, height: box.height });
  });
  status.textContent = `${spec.method}, mode ${spec.mode}: ${attributes.length} attribute(s) ` +
    `in ${ms.toFixed(0)} ms (ONNX Runtime Web ${ort.env.versions?.web ?? ""}, WebAssembly)`;
  return { attributes, logits, energy, overlays, method: spec.method, mode: spec.mode, ms };
}

async function main() {
  const params = new URLSearchParams(location.search);
  const run = async (model, image) => {
    try {
      window.bincamResult = await explain(model, image);
    } catch (error) {
      const status = document.getElementById("status");
      status.textContent = `error: ${error.message}`;
      status.className = "error";
      window.bincamResult = { error: error.message };
    }
  };
  const modelInput = document.getElementById("model-file");
  const imageInput = document.getElementById("image-file");
  const rerun = () => run(modelInput.files[0] ?? params.get("model") ?? "model.onnx",
                          imageInput.files[0] ?? params.get("image") ?? "face.png");
  modelInput.addEventListener("change", rerun);
  imageInput.addEventListener("change", rerun);
  await rerun();
}

main();
