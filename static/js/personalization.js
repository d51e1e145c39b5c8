/*
 * Antidote tracker: queues clicks on catalog links, search submits and form submits,
 * and sends them in one batch after a short pause (debounce); reports how long the
 * page was visible when it is hidden or left. No dependencies.
 *
 * The server includes this script only for visitors it may track (no GPC, no DNT,
 * no opt-out, consent given in opt-in mode); it checks the browser's signals again.
 * Configuration comes from the script tag: data-endpoint, data-debounce-ms,
 * data-page-item (the page's catalog item, "procedure:12"; absent elsewhere).
 */
(function () {
  "use strict";

  var script = document.currentScript;
  if (!script || !window.fetch || !Element.prototype.closest) return;
  if (navigator.globalPrivacyControl === true || navigator.doNotTrack === "1") return;

  var endpoint = script.getAttribute("data-endpoint");
  var debounceMs = parseInt(script.getAttribute("data-debounce-ms"), 10);
  if (!endpoint) return;
  if (!(debounceMs >= 0)) debounceMs = 1000;

  var MAX_BATCH = 50; // the endpoint's limit per request
  var MAX_WAIT_MS = Math.max(5 * debounceMs, 5000); // steady clicking still sends
  var MAX_QUERY_LENGTH = 200;

  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var csrfToken = csrfMeta ? csrfMeta.getAttribute("content") : "";

  var queue = [];
  var lastSeen = {}; // event key -> time, to count rapid repeats once
  var timer = null;
  var firstQueuedAt = 0;

  function enqueue(event) {
    var now = Date.now();
    var key = [event.interaction_type, event.target_type, event.target_id,
               event.metadata && event.metadata.query].join("|");
    if (lastSeen[key] !== undefined && now - lastSeen[key] < Math.max(debounceMs, 300)) {
      return;
    }
    lastSeen[key] = now;
    if (!queue.length) firstQueuedAt = now;
    queue.push(event);
    clearTimeout(timer);
    var wait = Math.min(debounceMs, Math.max(0, firstQueuedAt + MAX_WAIT_MS - now));
    timer = setTimeout(flush, wait);
  }

  function flush() {
    clearTimeout(timer);
    timer = null;
    while (queue.length) send(queue.splice(0, MAX_BATCH));
  }

  function send(events) {
    try {
      // keepalive lets the request finish after the page is gone; unlike
      // sendBeacon it can carry the CSRF header.
      fetch(endpoint, {
        method: "POST",
        keepalive: true,
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken },
        body: JSON.stringify({ events: events }),
      }).catch(function () {});
    } catch (error) {
      // Tracking must never break the page.
    }
  }

  function catalogTarget(element) {
    var id = parseInt(element.getAttribute("data-track-id"), 10);
    var type = element.getAttribute("data-track-type");
    return type && id > 0 ? { target_type: type, target_id: id } : null;
  }

  document.addEventListener("click", function (event) {
    var element = event.target.closest("[data-track-type][data-track-id]");
    var target = element && catalogTarget(element);
    if (!target) return;
    var metadata = { path: location.pathname };
    // A recommended card names its list and position (click-through).
    var list = element.getAttribute("data-list-id");
    var position = parseInt(element.getAttribute("data-position"), 10);
    if (list && position > 0) {
      metadata.list_id = list;
      metadata.position = position;
    }
    enqueue({
      interaction_type: "click",
      target_type: target.target_type,
      target_id: target.target_id,
      metadata: metadata,
    });
  }, true);

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form || form.hasAttribute("data-track-ignore")) return;
    if (form.getAttribute("role") === "search") {
      var input = form.querySelector('input[type="search"], input[name="q"]');
      var query = input ? input.value.trim().slice(0, MAX_QUERY_LENGTH) : "";
      if (query) {
        enqueue({
          interaction_type: "search",
          target_type: "page",
          target_id: null,
          metadata: { query: query, path: location.pathname },
        });
      }
      return;
    }
    var target = catalogTarget(form) || { target_type: "page", target_id: null };
    enqueue({
      interaction_type: "form_submit",
      target_type: target.target_type,
      target_id: target.target_id,
      metadata: {
        form: form.getAttribute("name") || form.id || form.getAttribute("action") || "",
        path: location.pathname,
      },
    });
  }, true);

  // Engaged time: how long this page was visible, reported when it is hidden or
  // left, against the page's item (data-page-item="procedure:12") or the page.
  var MAX_ENGAGED_SECONDS = 1800; // the endpoint's limit per event
  var pageItem = (script.getAttribute("data-page-item") || "").split(":");
  var pageItemId = parseInt(pageItem[1], 10);
  var visibleSince = document.visibilityState === "visible" ? Date.now() : 0;
  var visibleMs = 0;

  function reportEngagedTime() {
    if (visibleSince) visibleMs += Date.now() - visibleSince;
    visibleSince = 0;
    var seconds = Math.min(Math.round(visibleMs / 1000), MAX_ENGAGED_SECONDS);
    if (seconds < 1) return;
    visibleMs = 0;
    // Straight into the queue: enqueue() would fold two reports into one.
    if (!queue.length) firstQueuedAt = Date.now();
    queue.push({
      interaction_type: "engaged",
      target_type: pageItemId > 0 ? pageItem[0] : "page",
      target_id: pageItemId > 0 ? pageItemId : null,
      metadata: { seconds: seconds, path: location.pathname },
    });
  }

  // Navigation right after a click must lose nothing: send what is queued as the
  // page goes away.
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") {
      reportEngagedTime();
      flush();
    } else {
      visibleSince = Date.now();
    }
  });
  window.addEventListener("pagehide", function () {
    reportEngagedTime();
    flush();
  });

  window.antidoteTracker = {
    track: function (interactionType, targetType, targetId, metadata) {
      enqueue({
        interaction_type: interactionType,
        target_type: targetType,
        target_id: targetId === undefined ? null : targetId,
        metadata: metadata || null,
      });
    },
    flush: flush,
  };
})();
