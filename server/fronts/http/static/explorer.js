// The latent-space explorer: talks to this server's image routes (/v1/models/...), nothing else.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  model: null, // the chosen version's /v1/models/{name} answer
  latents: [], // the sampled grid's latents, one array of latent_dim numbers per image
  opened: null, // the opened latent, edited by the sliders
  original: null, // the opened latent as it was sampled or encoded
  ends: { a: null, b: null }, // the interpolation's ends
  decoding: false, // a slider decode is in flight
  pending: false, // a slider moved while it was
  decodes: 0, // slider decodes done (exposed on the image for tests)
  urls: {}, // object URLs of PNG blobs shown, by element id
};

async function api(path, options = {}) {
  const response = await fetch(path, options);
  if (!response.ok) {
    let message = response.statusText;
    try {
      message = (await response.json()).error;
    } catch (ignored) {
      // not a JSON error body: keep the status text
    }
    throw new Error(`${response.status}: ${message}`);
  }
  return response;
}

function report(error) {
  $("status").textContent = error ? String(error.message || error) : "";
}

function guarded(action) {
  return async (...args) => {
    try {
      report(null);
      await action(...args);
    } catch (error) {
      report(error);
    }
  };
}

function modelPath(suffix) {
  return `/v1/models/${encodeURIComponent(state.model.name)}${suffix}`;
}

function common() {
  const query = new URLSearchParams({ version: String(state.model.version) });
  if (state.model.num_classes > 0) query.set("label", $("label").value);
  return query;
}

function rows(tensor) {
  const [count, width] = tensor.shape;
  return Array.from({ length: count }, (_, i) => tensor.data.slice(i * width, (i + 1) * width));
}

function pngData(base64) {
  return `data:image/png;base64,${base64}`;
}

async function showBlob(id, response) {
  const element = $(id);
  if (state.urls[id]) URL.revokeObjectURL(state.urls[id]);
  state.urls[id] = URL.createObjectURL(await response.blob());
  element.src = state.urls[id];
  element.hidden = false;
}

function fillSelect(select, values, chosen) {
  select.replaceChildren(
    ...values.map((value) => {
      const option = document.createElement("option");
      option.value = option.textContent = String(value);
      option.selected = String(value) === String(chosen);
      return option;
    }),
  );
}

// --- models -------------------------------------------------------------------------------------

async function loadModels() {
  const { models } = await (await api("/v1/models")).json();
  if (models.length === 0) throw new Error("this server has no models loaded");
  fillSelect($("model"), models.map((m) => m.name), models[0].name);
  await selectModel(models[0].name, 0);
}

async function selectModel(name, version) {
  const path = `/v1/models/${encodeURIComponent(name)}?version=${version}`;
  const model = await (await api(path)).json();
  state.model = model;
  fillSelect($("version"), model.available_versions, model.version);
  fillSelect($("prior"), model.priors, model.priors[0]);
  const classes = Array.from({ length: model.num_classes }, (_, i) => i);
  fillSelect($("label"), classes, 0);
  $("label-box").hidden = model.num_classes === 0;
  $("manifold-section").hidden = model.latent_dim !== 2;
  $("model-info").textContent =
    `${model.kind}, ${model.latent_dim} latent dimensions, images ${model.image_shape.join("x")}` +
    (model.dataset ? `, trained on ${model.dataset}` : "");
  state.ends = { a: null, b: null };
  for (const id of ["end-a", "end-b"]) $(id).removeAttribute("src");
  $("interpolate-button").disabled = true;
  $("opened").hidden = true;
  await sample();
}

// --- sampling -----------------------------------------------------------------------------------

async function sample() {
  const query = common();
  query.set("count", $("count").value || "16");
  query.set("temperature", $("temperature").value || "1");
  query.set("prior", $("prior").value);
  if ($("seed").value !== "") query.set("seed", $("seed").value);
  const response = await api(modelPath(`/sample?${query}`), {
    headers: { Accept: "application/json" },
  });
  const answer = await response.json();
  state.latents = rows(answer.latents);
  $("seed-used").textContent = `seed ${answer.seed}`;
  $("grid").replaceChildren(
    ...answer.png.map((png, index) => {
      const image = document.createElement("img");
      image.src = pngData(png);
      image.alt = `sample ${index}`;
      image.addEventListener("click", () => openSample(index, image.src));
      return image;
    }),
  );
}

// --- the opened sample and its sliders ----------------------------------------------------------

function openSample(index, source) {
  for (const image of $("grid").children) image.classList.remove("selected");
  $("grid").children[index].classList.add("selected");
  openLatent(state.latents[index], source);
}

function openLatent(latent, source) {
  state.original = latent.slice();
  state.opened = latent.slice();
  $("opened-image").src = source;
  $("opened").hidden = false;
  buildSliders();
}

function buildSliders() {
  const sliders = state.opened.map((value, dim) => {
    const label = document.createElement("label");
    const input = document.createElement("input");
    const output = document.createElement("output");
    Object.assign(input, { type: "range", min: "-4", max: "4", step: "0.05" });
    input.value = String(value);
    input.dataset.dim = String(dim);
    output.value = value.toFixed(2);
    input.addEventListener("input", () => {
      state.opened[dim] = Number(input.value);
      output.value = Number(input.value).toFixed(2);
      scheduleDecode();
    });
    label.append(`z${dim}`, input, output);
    return label;
  });
  $("sliders").replaceChildren(...sliders);
}

// One decode in flight at a time; moves made meanwhile collapse into one more decode of the latest
// latent, so the picture keeps up with the slider however fast it moves.
function scheduleDecode() {
  if (state.decoding) {
    state.pending = true;
    return;
  }
  decodeOpened();
}

async function decodeOpened() {
  state.decoding = true;
  try {
    do {
      state.pending = false;
      const body = { latents: [state.opened.slice()] };
      if (state.model.num_classes > 0) body.labels = [Number($("label").value)];
      const response = await api(modelPath(`/decode?version=${state.model.version}`), {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(body),
      });
      const answer = await response.json();
      $("opened-image").src = pngData(answer.png[0]);
      state.decodes += 1;
      $("opened-image").dataset.decodes = String(state.decodes);
    } while (state.pending);
  } catch (error) {
    report(error);
  } finally {
    state.decoding = false;
  }
}

// --- interpolation ------------------------------------------------------------------------------

function setEnd(which) {
  state.ends[which] = state.opened.slice();
  $(`end-${which}`).src = $("opened-image").src;
  $("interpolate-button").disabled = !(state.ends.a && state.ends.b);
}

async function interpolate() {
  const query = common();
  query.set("start", state.ends.a.join(","));
  query.set("end", state.ends.b.join(","));
  query.set("steps", $("steps").value || "10");
  query.set("method", $("method").value);
  await showBlob("strip", await api(modelPath(`/interpolate?${query}`)));
}

async function drawManifold() {
  const query = common();
  query.set("side", $("side").value || "15");
  await showBlob("manifold", await api(modelPath(`/manifold?${query}`)));
}

// --- encoding an upload -------------------------------------------------------------------------

async function encodeUpload() {
  const file = $("upload").files[0];
  if (!file) return;
  const preview = $("upload-preview");
  if (state.urls.preview) URL.revokeObjectURL(state.urls.preview);
  state.urls.preview = URL.createObjectURL(file);
  preview.src = state.urls.preview;
  preview.hidden = false;
  const response = await api(modelPath(`/encode?${common()}`), {
    method: "POST",
    headers: { "Content-Type": file.type || "application/octet-stream" },
    body: file,
  });
  const { mean } = await response.json();
  const body = { latents: [mean[0]] };
  if (state.model.num_classes > 0) body.labels = [Number($("label").value)];
  const decoded = await api(modelPath(`/decode?version=${state.model.version}`), {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(body),
  });
  const source = pngData((await decoded.json()).png[0]);
  $("reconstruction").src = source;
  $("reconstruction").hidden = false;
  openLatent(mean[0], source);
}

// --- wiring -------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("model").addEventListener("change", guarded(() => selectModel($("model").value, 0)));
  $("version").addEventListener(
    "change",
    guarded(() => selectModel(state.model.name, $("version").value)),
  );
  $("sample-button").addEventListener("click", guarded(sample));
  $("set-a").addEventListener("click", () => setEnd("a"));
  $("set-b").addEventListener("click", () => setEnd("b"));
  $("reset-sliders").addEventListener("click", () => {
    openLatent(state.original, $("opened-image").src);
    scheduleDecode();
  });
  $("interpolate-button").addEventListener("click", guarded(interpolate));
  $("manifold-button").addEventListener("click", guarded(drawManifold));
  $("upload").addEventListener("change", guarded(encodeUpload));
  guarded(loadModels)().then(() => document.body.setAttribute("data-ready", "true"));
});
