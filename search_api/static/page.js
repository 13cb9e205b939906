// The radsearch page: a plain ES module, no build step, no CDN. Every call goes through the public
// API (the key, when the server wants one, from sessionStorage); images are fetched with it too.
"use strict";

const FILTER_FIELDS = ["modality", "anatomy", "pathology"];
const WINDOWS = [
  ["auto", "Auto"], ["lung", "Lung"], ["soft-tissue", "Soft tissue"], ["bone", "Bone"], ["brain", "Brain"],
];
const KEY_STORAGE = "radsearch-api-key";
const GROUP_NOUN = { object: "objects", series: "series", study: "studies", "": "images" };

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
};

const state = {
  collections: [],
  // {kind: "upload", file, name, dicom} or {kind: "point", id, collection, key, payload}
  query: null,
  queryWindow: "auto",
  viewerWindow: "auto",
  roi: null, // in pixels of the rendered query frame
  filters: { modality: [], anatomy: [], pathology: [] },
  liked: new Set(),
  disliked: new Set(),
  lastQueryImageUrl: null,
  viewerHit: null,
  objectUrls: new Set(),
};

// ---- the API ---------------------------------------------------------------------------------

function apiKey() { return sessionStorage.getItem(KEY_STORAGE) || ""; }

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, "X-API-Key": key } : extra;
}

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

async function call(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  } catch (_) {  // no HTTP answer at all: the browser's own words ("Failed to fetch") say nothing
    throw new ApiError("no answer from the server at " + location.host + ": is radsearch serve running?", 0);
  }
  if (response.status === 401) {
    $("key-form").hidden = false;
    throw new ApiError(apiKey()
      ? "the server refused this API key (mistyped, expired or revoked): enter another above"
      : "this server needs an API key: enter it above", 401);
  }
  if (!response.ok) {
    let body = null;
    try { body = await response.json(); } catch (_) { /* not JSON */ }
    // the API's error model: {"error": {"code", "message", "field"}, "detail"}
    const error = body && body.error;
    const message = error && typeof error.message === "string" ? error.message
      : body && typeof body.detail === "string" ? body.detail : response.statusText;
    throw new ApiError(message + " (HTTP " + response.status + ")", response.status);
  }
  return response;
}

async function getJSON(path, options) { return (await call(path, options)).json(); }

function collectionPath(name, rest = "") { return "v1/collections/" + encodeURIComponent(name) + rest; }

function pointImagePath(collection, id, windowName, size) {
  const params = new URLSearchParams({ window: windowName });
  if (size) params.set("size", String(size));
  return collectionPath(collection, "/points/" + encodeURIComponent(id) + "/image?" + params);
}

// Images need the key header too, so they are fetched and shown from blob URLs.
async function showImage(img, path, options) {
  const blob = await (await call(path, options)).blob();
  const url = URL.createObjectURL(blob);
  const old = img.dataset.objectUrl;
  img.dataset.objectUrl = url;
  img.src = url;
  if (old) URL.revokeObjectURL(old);
  await img.decode().catch(() => {});
}

function renderUpload(file, windowName) {
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("window", windowName);
  return ["v1/render", { method: "POST", body: form }];
}

// ---- status lines ----------------------------------------------------------------------------

function setStatus(text, kind = "") {
  $("status").textContent = text;
  $("status").className = kind;
}

function collectionLabel(name) {
  const c = state.collections.find((x) => x.name === name);
  return c ? name + " (" + c.encoder + ")" : name;
}

function filterText() {
  return FILTER_FIELDS.filter((f) => state.filters[f].length)
    .map((f) => f + " " + state.filters[f].join(" or ")).join(", ");
}

// ---- collections and filters -------------------------------------------------------------------

async function loadCollections() {
  try {
    const body = await getJSON("v1/collections");
    state.collections = body.collections;
    const main = $("collection");
    const other = $("compare-with");
    main.replaceChildren();
    other.replaceChildren(new Option("(none)", ""));
    for (const c of body.collections) {
      const option = new Option(c.name + " (" + c.encoder + ")", c.name);
      option.dataset.info = c.points + " images, " + c.dim + "-d " + c.encoder + " vectors";
      main.add(option);
      other.add(new Option(c.name + " (" + c.encoder + ")", c.name));
    }
    if (!body.collections.length) {
      setStatus("No collections yet: ingest some images first (radsearch ingest / radsearch demo).", "error");
      return;
    }
    await onCollectionChange();
  } catch (err) {
    setStatus("Cannot list collections: " + err.message, "error");
  }
}

async function onCollectionChange() {
  const option = $("collection").selectedOptions[0];
  $("collection-info").textContent = option ? option.dataset.info : "";
  for (const field of FILTER_FIELDS) state.filters[field] = [];
  renderFilterBar();
  await Promise.all(FILTER_FIELDS.map(loadFacet));
  if (state.query && state.query.kind === "point") clearQuery();
  updateButton();
  if (state.query) runSearch();
}

async function loadFacet(field) {
  const select = $("f-" + field);
  select.replaceChildren(new Option("add a" + (field === "anatomy" ? "n " : " ") + field + "…", ""));
  try {
    const body = await getJSON(collectionPath($("collection").value, "/facets/" + field));
    for (const [value, count] of Object.entries(body.counts)) {
      select.add(new Option(value + " (" + count + ")", value));
    }
  } catch (err) {
    setStatus("Cannot load " + field + " values: " + err.message, "error");
  }
}

function addFilter(field, value) {
  if (!value || state.filters[field].includes(value)) return;
  state.filters[field].push(value);
  renderFilterBar();
  if (state.query) runSearch();
}

function removeFilter(field, value) {
  state.filters[field] = state.filters[field].filter((v) => v !== value);
  renderFilterBar();
  if (state.query) runSearch();
}

function renderFilterBar() {
  const chips = $("filter-chips");
  chips.replaceChildren();
  for (const field of FILTER_FIELDS) {
    for (const value of state.filters[field]) {
      const remove = el("button", { type: "button", textContent: "×", title: "remove" });
      remove.setAttribute("aria-label", "remove filter " + field + " " + value);
      remove.addEventListener("click", () => removeFilter(field, value));
      chips.append(el("span", { className: "chip" }, field + ": " + value, remove));
    }
  }
  if (!chips.children.length) chips.append(el("span", { className: "hint", textContent: "none" }));
}

function currentFilter() {
  const filter = {};
  for (const field of FILTER_FIELDS) if (state.filters[field].length) filter[field] = state.filters[field];
  return filter;
}

// What the last search's "Results" field was corrected to, said under the results (never silently).
let limitNote = "";

// The number of results to ask for: the field's value, or (out of range, not a whole number) the
// field's bound or default, written back into the field and said in `limitNote`.
function currentLimit() {
  const field = $("limit");
  const max = Number(field.max);
  const typed = Number(field.value);
  let limit = typed;
  limitNote = "";
  if (field.value.trim() === "" || !Number.isInteger(typed) || typed < 1) {
    limit = Number(field.defaultValue);
    limitNote = "Results must be a whole number from 1 to " + max + ": searched for " + limit + ".";
  } else if (typed > max) {
    limit = max;
    limitNote = "This page shows at most " + max + " results: searched for " + max + ".";
  }
  field.value = String(limit);
  return limit;
}

// ---- the query panel -------------------------------------------------------------------------

async function isDicom(file) {
  const head = new Uint8Array(await file.slice(128, 132).arrayBuffer());
  return String.fromCharCode(...head) === "DICM";
}

async function chooseFile(file) {
  if (!file) return;
  state.query = { kind: "upload", file, name: file.name, dicom: await isDicom(file) };
  state.roi = null;
  resetFeedback();
  await showQuery();
  runSearch();
}

function clearQuery() {
  state.query = null;
  state.roi = null;
  resetFeedback();
  $("query-view").hidden = true;
  $("drop").hidden = false;
  $("columns").replaceChildren();
  setStatus("Choose an image to search with.");
  updateButton();
}

async function queryImageRequest(windowName) {
  const q = state.query;
  if (q.kind === "upload") return renderUpload(q.file, windowName);
  return [pointImagePath(q.collection, q.id, windowName), {}];
}

async function showQuery() {
  const q = state.query;
  $("drop").hidden = true;
  $("query-view").hidden = false;
  $("query-name").textContent = q.kind === "upload" ? q.name : "more like " + (q.key || q.id);
  $("crop").disabled = q.kind !== "upload";
  $("crop").title = q.kind === "upload" ? "" : "regions are drawn on uploaded images";
  drawRoi();
  try {
    const [path, options] = await queryImageRequest(state.queryWindow);
    await showImage($("query-image"), path, options);
  } catch (err) {
    if (q.kind === "upload" && !q.dicom) {
      // the server could not render it: the browser still can show a PNG or JPEG
      $("query-image").src = URL.createObjectURL(q.file);
    } else {
      setStatus("Cannot show the query image: " + err.message, "error");
    }
  }
  updateButton();
}

function renderPresets(container, current, onPick) {
  container.replaceChildren();
  for (const [name, label] of WINDOWS) {
    const button = el("button", { type: "button", textContent: label });
    button.dataset.window = name;
    button.setAttribute("aria-pressed", String(name === current));
    button.addEventListener("click", () => onPick(name));
    container.append(button);
  }
}

function setQueryWindow(name) {
  state.queryWindow = name;
  renderPresets(document.querySelector('.presets[data-target="query"]'), name, setQueryWindow);
  if (state.query) showQuery();
}

// The region: dragged on the shown image, kept in pixels of the rendered frame (the image's
// natural size), which is what the API's ``roi`` means.
let drag = null;

function toNatural(event) {
  const img = $("query-image");
  const box = img.getBoundingClientRect();
  const sx = img.naturalWidth / box.width;
  const sy = img.naturalHeight / box.height;
  const x = Math.min(Math.max(event.clientX - box.left, 0), box.width);
  const y = Math.min(Math.max(event.clientY - box.top, 0), box.height);
  return { x: Math.round(x * sx), y: Math.round(y * sy) };
}

function drawRoi() {
  const roiBox = $("roi-box");
  const img = $("query-image");
  $("crop-clear").hidden = !state.roi;
  $("roi-info").textContent = state.roi
    ? "region " + state.roi.width + "×" + state.roi.height + " at " + state.roi.x + "," + state.roi.y : "";
  if (!state.roi || !img.naturalWidth) { roiBox.hidden = true; return; }
  const box = img.getBoundingClientRect();
  const parent = $("query-box").getBoundingClientRect();
  const sx = box.width / img.naturalWidth;
  const sy = box.height / img.naturalHeight;
  Object.assign(roiBox.style, {
    left: box.left - parent.left + state.roi.x * sx + "px",
    top: box.top - parent.top + state.roi.y * sy + "px",
    width: state.roi.width * sx + "px",
    height: state.roi.height * sy + "px",
  });
  roiBox.hidden = false;
}

function setCropping(on) {
  $("crop").setAttribute("aria-pressed", String(on));
  $("query-box").classList.toggle("cropping", on);
}

function startDrag(event) {
  if ($("crop").getAttribute("aria-pressed") !== "true" || event.button !== 0) return;
  event.preventDefault();
  drag = toNatural(event);
}

function moveDrag(event) {
  if (!drag) return;
  const at = toNatural(event);
  state.roi = {
    x: Math.min(drag.x, at.x), y: Math.min(drag.y, at.y),
    width: Math.max(1, Math.abs(at.x - drag.x)), height: Math.max(1, Math.abs(at.y - drag.y)),
  };
  drawRoi();
}

function endDrag() {
  if (!drag) return;
  drag = null;
  setCropping(false);
  if (state.roi && state.roi.width >= 4 && state.roi.height >= 4) {
    runSearch();
  } else {
    state.roi = null;
    drawRoi();
  }
}

// ---- feedback --------------------------------------------------------------------------------

function resetFeedback() {
  state.liked.clear();
  state.disliked.clear();
  renderFeedbackBar();
}

function renderFeedbackBar() {
  const n = state.liked.size + state.disliked.size;
  $("feedback-bar").hidden = n === 0;
  $("feedback-text").textContent = "Refined by " + state.liked.size + " 👍 and " + state.disliked.size + " 👎.";
}

function vote(id, like) {
  const mine = like ? state.liked : state.disliked;
  const other = like ? state.disliked : state.liked;
  other.delete(id);
  if (mine.has(id)) mine.delete(id); else mine.add(id);
  renderFeedbackBar();
  runSearch();
}

// ---- searching -------------------------------------------------------------------------------

function updateButton() { $("search").disabled = !(state.query && $("collection").value); }

function shape() {
  const groupBy = $("group-by").value;
  return { groupBy, limit: currentLimit() };
}

function excludeFor(query) {
  if (!$("exclude-patient").checked) return null;
  if (query.kind === "upload") return query.dicom ? { same_patient: true } : null;
  return query.payload && query.payload.patient_hash ? { same_patient: true } : null;
}

function uploadForm(query, { groupBy, limit }, withFeedback) {
  const form = new FormData();
  form.append("file", query.file, query.file.name);
  form.append("limit", String(limit));
  const filter = currentFilter();
  if (Object.keys(filter).length) form.append("filter", JSON.stringify(filter));
  if (groupBy) form.append("group_by", groupBy);
  const exclude = excludeFor(query);
  if (exclude) form.append("exclude", JSON.stringify(exclude));
  if (state.roi) form.append("roi", JSON.stringify(state.roi));
  if (withFeedback) {
    for (const id of state.liked) form.append("positive", id);
    for (const id of state.disliked) form.append("negative", id);
  }
  return form;
}

function pointBody(query, { groupBy, limit }) {
  const body = { limit };
  if (state.liked.size || state.disliked.size) {
    body.positive = [query.id, ...state.liked];
    if (state.disliked.size) body.negative = [...state.disliked];
  } else {
    body.point_id = query.id;
  }
  const filter = currentFilter();
  if (Object.keys(filter).length) body.filter = filter;
  if (groupBy) body.group_by = groupBy;
  const exclude = excludeFor(query);
  if (exclude) body.exclude = exclude;
  return body;
}

let searchSeq = 0;

async function runSearch() {
  const query = state.query;
  const collection = $("collection").value;
  if (!query || !collection) return;
  const seq = ++searchSeq;
  const options = shape();
  const compareWith = $("compare-with").value;
  setStatus("Searching…");
  $("search").disabled = true;
  try {
    if (compareWith && compareWith !== collection) {
      if (query.kind !== "upload") {
        throw new ApiError("comparing collections needs an uploaded image (point ids differ per collection)");
      }
      const form = uploadForm(query, options, false);
      form.append("collections", collection);
      form.append("collections", compareWith);
      const body = await getJSON("v1/search/compare", { method: "POST", body: form });
      if (seq !== searchSeq) return;
      renderColumns(body.results.map((r) => ({ ...r, what: query.name })), options);
    } else {
      const body = query.kind === "upload"
        ? await getJSON(collectionPath(collection, "/search/image"),
          { method: "POST", body: uploadForm(query, options, true) })
        : await getJSON(collectionPath(collection, "/search"), {
          method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify(pointBody(query, options)),
        });
      if (seq !== searchSeq) return;
      renderColumns([{ ...body, what: query.kind === "upload" ? query.name : query.key || query.id }], options);
    }
  } catch (err) {
    if (seq !== searchSeq) return;
    $("columns").replaceChildren();
    renderWarnings([]);
    setStatus("Search failed: " + err.message, "error");
  } finally {
    if (seq === searchSeq) {
      updateButton();
      // for scripts (and tests) waiting on a search: how many have finished on this page
      $("status").dataset.searches = String(seq);
    }
  }
}

function groupsOf(result) {
  if (result.groups) return result.groups;
  return result.hits.map((hit) => ({ key: hit.id, hits: [hit] }));
}

function summary(result, groups, groupBy) {
  const where = collectionLabel(result.collection);
  if (!groups.length) {
    const filters = filterText();
    return [filters ? "No images match the filters (" + filters + ") in " + where + "."
      : "No images in " + where + " to compare with.", "empty"];
  }
  if (result.close_match === false) {
    return ["No close match in " + where + ": even the best hit (score " + groups[0].hits[0].score.toFixed(3)
      + ") is below the collection's calibrated threshold.", "weak"];
  }
  return [groups.length + " " + GROUP_NOUN[groupBy] + " similar to " + result.what + " in " + where
    + " (" + result.took_ms.toFixed(0) + " ms)", ""];
}

function renderColumns(results, { groupBy }) {
  const columns = $("columns");
  columns.replaceChildren();
  columns.classList.toggle("two", results.length > 1);
  const warnings = [];
  let lines = [];
  for (const result of results) {
    const groups = groupsOf(result);
    const [text, kind] = summary(result, groups, groupBy);
    lines.push([text, kind]);
    warnings.push(...(result.warnings || []));
    const column = el("section", { className: "column" });
    column.setAttribute("aria-label", "results in " + result.collection);
    if (results.length > 1) {
      column.append(el("h2", { textContent: collectionLabel(result.collection) }),
        el("div", { className: "column-status " + kind, textContent: text }));
    }
    const cards = el("div", { className: "cards" });
    for (const group of groups) cards.append(card(group, result.collection, groupBy, results.length === 1));
    column.append(cards);
    columns.append(column);
  }
  renderWarnings(warnings);
  if (results.length === 1) setStatus(...lines[0]);
  else setStatus(lines.map(([t]) => t).join(" · "), lines.some(([, k]) => k) ? "weak" : "");
}

function tag(text) { return el("span", { className: "tag", textContent: text }); }

function countText(group, groupBy) {
  const n = group.hits.length;
  if (groupBy === "object") return n + (n === 1 ? " frame" : " frames");
  if (groupBy === "series" || groupBy === "study") {
    const objects = new Set(group.hits.map((h) => (h.payload || {}).key)).size;
    return objects + (objects === 1 ? " instance" : " instances");
  }
  return "";
}

function card(group, collection, groupBy, withFeedback) {
  const best = group.hits[0];
  const p = best.payload || {};
  const node = el("article", { className: "card" + (best.weak ? " weak" : "") });
  node.dataset.pointId = best.id;
  node.dataset.key = p.key || "";
  const img = el("img", { alt: (p.modality || "") + " " + (p.anatomy || "") + " " + (p.key || best.id) });
  const thumb = el("button", { type: "button", className: "thumb" }, img);
  thumb.setAttribute("aria-label", "enlarge " + (p.key || best.id) + " beside the query");
  thumb.addEventListener("click", () => openViewer(collection, best));
  showImage(img, pointImagePath(collection, best.id, "auto", 256)).catch(() => {
    img.alt = "image unavailable";
  });
  const score = el("div", { className: "score" }, "score " + best.score.toFixed(3),
    el("span", { className: "count", textContent: countText(group, groupBy) }));
  const tags = el("div", { className: "tags" });
  if (p.modality) tags.append(tag(p.modality));
  if (p.anatomy) tags.append(tag(p.anatomy));
  for (const label of p.pathology || []) tags.append(tag(label));
  const meta = el("div", { className: "meta" }, score, tags,
    el("div", { className: "key", textContent: (p.key || "") + (p.frame ? " #" + p.frame : "") }));
  if (best.weak) meta.append(el("div", { className: "weak-note", textContent: "weak match" }));
  const actions = el("div", { className: "actions" });
  const more = el("button", { type: "button", className: "link", textContent: "more like this" });
  more.addEventListener("click", () => moreLikeThis(collection, best));
  actions.append(more);
  if (withFeedback) {
    for (const [like, symbol, words] of [[true, "👍", "more like"], [false, "👎", "less like"]]) {
      const button = el("button", { type: "button", className: "vote", textContent: symbol });
      button.setAttribute("aria-label", words + " " + (p.key || best.id));
      button.setAttribute("aria-pressed", String((like ? state.liked : state.disliked).has(best.id)));
      button.dataset.vote = like ? "up" : "down";
      button.addEventListener("click", () => vote(best.id, like));
      actions.append(button);
    }
  }
  meta.append(actions);
  node.append(thumb, meta);
  return node;
}

function renderWarnings(warnings) {
  const box = $("warnings");
  box.replaceChildren();
  for (const w of warnings) {
    box.append(el("div", {
      textContent: "No stored " + w.field + " is “" + w.value + "”"
        + (w.suggestions.length ? "; did you mean " + w.suggestions.join(", ") + "?" : "."),
    }));
  }
  if (limitNote) box.append(el("div", { textContent: limitNote }));
}

async function moreLikeThis(collection, hit) {
  $("compare-with").value = "";
  state.query = { kind: "point", id: hit.id, collection, key: (hit.payload || {}).key, payload: hit.payload || {} };
  state.roi = null;
  resetFeedback();
  await showQuery();
  runSearch();
}

// ---- the comparison viewer -------------------------------------------------------------------

let viewerOpener = null;

async function showViewerImages() {
  const { collection, hit } = state.viewerHit;
  const [queryPath, queryOptions] = await queryImageRequest(state.viewerWindow);
  await Promise.all([
    showImage($("viewer-query"), queryPath, queryOptions).catch(() => {}),
    showImage($("viewer-hit"), pointImagePath(collection, hit.id, state.viewerWindow, 1024)).catch((err) => {
      $("viewer-hit-caption").textContent = "Cannot show the hit: " + err.message;
    }),
  ]);
}

function setViewerWindow(name) {
  state.viewerWindow = name;
  renderPresets(document.querySelector('.presets[data-target="viewer"]'), name, setViewerWindow);
  if (state.viewerHit) showViewerImages();
}

function openViewer(collection, hit) {
  viewerOpener = document.activeElement;
  state.viewerHit = { collection, hit };
  const p = hit.payload || {};
  $("viewer-hit-caption").textContent = (p.key || hit.id) + " — score " + hit.score.toFixed(3)
    + (p.modality ? " · " + p.modality : "") + (p.anatomy ? " · " + p.anatomy : "");
  $("viewer").hidden = false;
  $("viewer-close").focus();
  setViewerWindow(state.queryWindow);
}

function closeViewer() {
  $("viewer").hidden = true;
  state.viewerHit = null;
  if (viewerOpener) viewerOpener.focus();
}

// ---- wiring ----------------------------------------------------------------------------------

function wire() {
  const drop = $("drop");
  drop.addEventListener("click", () => $("file").click());
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); }
  });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    chooseFile(e.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", (e) => chooseFile(e.target.files[0]));
  $("query-clear").addEventListener("click", clearQuery);
  $("collection").addEventListener("change", onCollectionChange);
  $("compare-with").addEventListener("change", () => runSearch());
  $("group-by").addEventListener("change", () => runSearch());
  $("exclude-patient").addEventListener("change", () => runSearch());
  $("search").addEventListener("click", runSearch);
  for (const field of FILTER_FIELDS) {
    $("f-" + field).addEventListener("change", (e) => {
      addFilter(field, e.target.value);
      e.target.value = "";
    });
  }
  $("crop").addEventListener("click", () => setCropping($("crop").getAttribute("aria-pressed") !== "true"));
  $("crop-clear").addEventListener("click", () => { state.roi = null; drawRoi(); runSearch(); });
  $("query-box").addEventListener("mousedown", startDrag);
  window.addEventListener("mousemove", moveDrag);
  window.addEventListener("mouseup", endDrag);
  window.addEventListener("resize", drawRoi);
  $("query-image").addEventListener("load", drawRoi);
  $("feedback-clear").addEventListener("click", () => { resetFeedback(); runSearch(); });
  $("viewer-close").addEventListener("click", closeViewer);
  $("viewer").addEventListener("click", (e) => { if (e.target === $("viewer")) closeViewer(); });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && !$("viewer").hidden) closeViewer(); });
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    $("api-key").value = "";
    loadCollections();
  });
  $("key-forget").addEventListener("click", () => { sessionStorage.removeItem(KEY_STORAGE); location.reload(); });
  $("key-form").hidden = !apiKey();
  renderPresets(document.querySelector('.presets[data-target="query"]'), state.queryWindow, setQueryWindow);
  renderFilterBar();
}

wire();
loadCollections();
