(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("batchgen-data").textContent);
  var PAGE = 120;
  var grid = document.getElementById("grid");
  var q = document.getElementById("q");
  var sortSel = document.getElementById("sort");
  var statusSel = document.getElementById("status-filter");
  var more = document.getElementById("more");
  var shownLine = document.getElementById("shown");
  var testLine = document.getElementById("test-status");
  var limit = PAGE;
  var matches = [];

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function href(path) { return path.split("/").map(encodeURIComponent).join("/"); }
  function secs(s) {
    if (s === null || s === undefined) return "?";
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
  }
  function when(iso) {
    if (!iso) return "";
    var d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }
  function play(v) {
    var p = v.play();
    if (p && p.catch) p.catch(function () {});
  }

  DATA.items.forEach(function (it, i) {
    it._pos = i;
    it._hay = [it.prompt, it.negative_prompt, "seed " + it.seed, it.job_id, it.file || "", it.error || "",
               it.source, it.model, it.profile, it.precision, it.checkpoint || ""].join("\n").toLowerCase();
  });

  var c = DATA.counts;
  document.getElementById("summary").textContent =
    c.done + " of " + c.total + " done, " + c.failed + " failed, " + c.pending + " pending, " + c.running +
    " running. Page written " + when(DATA.generated_at) + "; reload to see newer videos.";

  function card(it) {
    var f = el("figure", "card " + it.status);
    f.dataset.jobId = it.job_id;
    f.dataset.status = it.status;
    if (it.status === "done" && it.file) {
      var v = document.createElement("video");
      v.muted = true; v.loop = true; v.playsInline = true; v.preload = "metadata";
      v.setAttribute("muted", ""); v.setAttribute("loop", ""); v.setAttribute("playsinline", "");
      v.setAttribute("preload", "metadata");
      v.style.setProperty("--ar", it.width + " / " + it.height);
      v.title = "Hover or click to play";
      v.src = href(it.file);
      v.addEventListener("click", function () { if (v.paused) play(v); else v.pause(); });
      f.addEventListener("mouseenter", function () { play(v); });
      f.addEventListener("mouseleave", function () { v.pause(); });
      v.addEventListener("error", function () {
        f.classList.add("broken");
        f.insertBefore(el("p", "note", "Cannot play " + it.file + " (missing, or a codec this browser lacks)."), v.nextSibling);
      });
      f.appendChild(v);
    } else {
      f.appendChild(el("pre", "error", it.error || "failed (no error recorded)"));
    }
    var cap = el("figcaption");
    cap.appendChild(el("p", "prompt", it.prompt));
    if (it.negative_prompt) cap.appendChild(el("p", "neg", "negative: " + it.negative_prompt));
    cap.appendChild(el("p", "meta", "seed " + it.seed + " \u00b7 " + it.num_frames + " frames \u00b7 " + it.width + "\u00d7" +
      it.height + " \u00b7 " + it.num_inference_steps + " steps \u00b7 guidance " + it.guidance_scale + " \u00b7 " + it.fps + " fps"));
    var how = it.status === "done" ? "rendered in " + secs(it.render_seconds) : "failed (attempt " + it.attempts + ")";
    cap.appendChild(el("p", "meta", how + " \u00b7 " + when(it.finished_at) + " \u00b7 " + it.model + " " +
      (it.profile ? it.profile + " " : "") + it.precision + (it.checkpoint ? " \u00b7 " + it.checkpoint : "")));
    var line = el("p", "meta");
    if (it.file) {
      var a = el("a", null, it.file);
      a.href = href(it.file);
      line.appendChild(a);
      line.appendChild(document.createTextNode(" \u00b7 "));
    }
    line.appendChild(document.createTextNode("job " + it.job_id + (it.source ? " \u00b7 " + it.source : "")));
    cap.appendChild(line);
    f.appendChild(cap);
    return f;
  }

  var SORTS = {
    newest: function (a, b) { return a.finished_at < b.finished_at ? 1 : a.finished_at > b.finished_at ? -1 : a._pos - b._pos; },
    oldest: function (a, b) { return a.finished_at < b.finished_at ? -1 : a.finished_at > b.finished_at ? 1 : a._pos - b._pos; },
    prompt: function (a, b) { return a.prompt.localeCompare(b.prompt) || a._pos - b._pos; },
    slowest: function (a, b) { return (b.render_seconds || 0) - (a.render_seconds || 0) || a._pos - b._pos; },
    manifest: function (a, b) { return a._pos - b._pos; }
  };

  function draw() {
    var words = q.value.toLowerCase().split(/\s+/).filter(Boolean);
    var status = statusSel.value;
    matches = DATA.items.filter(function (it) {
      if (status !== "all" && it.status !== status) return false;
      for (var i = 0; i < words.length; i++) if (it._hay.indexOf(words[i]) < 0) return false;
      return true;
    }).sort(SORTS[sortSel.value] || SORTS.newest);
    grid.textContent = "";
    var frag = document.createDocumentFragment();
    matches.slice(0, limit).forEach(function (it) { frag.appendChild(card(it)); });
    grid.appendChild(frag);
    var n = Math.min(limit, matches.length);
    shownLine.textContent = "showing " + n + " of " + matches.length + (matches.length !== DATA.items.length ? " matching" : "");
    more.hidden = matches.length <= limit;
    more.textContent = "Show more (" + (matches.length - n) + " left)";
    grid.dataset.shown = String(n);
    grid.dataset.matches = String(matches.length);
  }

  // The view lives in the address's #fragment (q=..&sort=..&show=..), so a filtered view can be bookmarked
  // or shared along with the folder.
  var params = {};
  location.hash.replace(/^#/, "").split("&").forEach(function (part) {
    if (!part) return;
    var i = part.indexOf("=");
    var k = i < 0 ? part : part.slice(0, i);
    try { params[k] = i < 0 ? true : decodeURIComponent(part.slice(i + 1).replace(/\+/g, " ")); } catch (e) {}
  });
  if (typeof params.q === "string") q.value = params.q;
  if (SORTS[params.sort]) sortSel.value = params.sort;
  if (params.show === "done" || params.show === "failed") statusSel.value = params.show;

  function remember() {
    var parts = [];
    if (q.value) parts.push("q=" + encodeURIComponent(q.value));
    if (sortSel.value !== "newest") parts.push("sort=" + sortSel.value);
    if (statusSel.value !== "all") parts.push("show=" + statusSel.value);
    try { history.replaceState(null, "", parts.length ? "#" + parts.join("&") : location.pathname); } catch (e) {}
  }
  function reset() { limit = PAGE; draw(); remember(); }
  q.addEventListener("input", reset);
  sortSel.addEventListener("change", reset);
  statusSel.addEventListener("change", reset);
  more.addEventListener("click", function () { limit += PAGE; draw(); });
  draw();
  document.body.dataset.ready = String(DATA.items.length);

  // #autoplay-test: play the first video at load and say whether it really plays (used by the tests).
  if (params["autoplay-test"]) {
    var v = grid.querySelector("video");
    if (!v) {
      testLine.textContent = "autoplay-test: no video on the page";
    } else {
      testLine.textContent = "autoplay-test: waiting";
      v.addEventListener("playing", function () {
        document.body.dataset.playing = v.closest("figure").dataset.jobId;
        testLine.textContent = "autoplay-test: playing " + v.getAttribute("src");
      });
      v.addEventListener("error", function () {
        document.body.dataset.playError = String(v.error ? v.error.code : "?");
        testLine.textContent = "autoplay-test: error " + (v.error ? v.error.code + " " + v.error.message : "");
      });
      var p = v.play();
      if (p && p.catch) p.catch(function (e) { testLine.textContent = "autoplay-test: play() refused: " + e; });
    }
  }
})();
