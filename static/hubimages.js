// Progressive enhancement for hubimages's pages: every control works without this file.
// Loaded in <head> without `defer`, so the "js" class is set before the page is drawn.
document.documentElement.classList.add("js");

(function () {
  "use strict";

  function checkedBoxes() {
    return document.querySelectorAll('#selection input[name="digest"]:checked');
  }

  // The list polls for changes only while nothing is selected, no index is open and no
  // panel is shown, so a refresh never throws away what the user is doing. (A listener,
  // not an hx-trigger filter: htmx runs with allowEval off, under a strict CSP.)
  function idle() {
    return (
      checkedBoxes().length === 0 &&
      !document.querySelector("#rows details[open], dialog[open]")
    );
  }

  document.addEventListener("htmx:confirm", function (event) {
    if (event.target.hasAttribute("data-poll") && !idle()) event.preventDefault();
  });

  function updateSelection() {
    var form = document.getElementById("selection");
    if (!form) return;
    var boxes = form.querySelectorAll('input[name="digest"]');
    var checked = checkedBoxes().length;
    var count = document.getElementById("selected-count");
    if (count) {
      count.value = String(checked);
      count.textContent = String(checked);
      count.closest(".selected-count").hidden = false;
    }
    var button = document.getElementById("preview-delete");
    if (button) button.disabled = checked === 0;
    var all = document.getElementById("select-all");
    if (all) {
      all.hidden = boxes.length === 0;
      all.checked = boxes.length > 0 && checked === boxes.length;
      all.indeterminate = checked > 0 && checked < boxes.length;
    }
  }

  document.addEventListener("change", function (event) {
    var target = event.target;
    if (target.id === "select-all") {
      document.querySelectorAll('#selection input[name="digest"]').forEach(function (box) {
        box.checked = target.checked;
      });
    }
    if (target.id === "select-all" || target.name === "digest") updateSelection();
  });

  function copy(button) {
    var text = button.getAttribute("data-copy");
    var done = function () {
      var label = button.textContent;
      button.textContent = "Copied";
      button.classList.add("copied");
      setTimeout(function () {
        button.textContent = label;
        button.classList.remove("copied");
      }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () {});
      return;
    }
    // Plain-HTTP deployments have no clipboard API: fall back to a hidden text area.
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    try {
      if (document.execCommand("copy")) done();
    } finally {
      document.body.removeChild(area);
    }
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button.copy");
    if (button) {
      event.preventDefault();
      copy(button);
    }
  });

  // Swapped-in content: reveal the JavaScript-only controls, open a panel as a modal.
  function enhance(root) {
    root.querySelectorAll("button.copy[hidden]").forEach(function (button) {
      button.hidden = false;
    });
    root.querySelectorAll("dialog[data-modal]:not([open])").forEach(function (dialog) {
      dialog.addEventListener("close", function () {
        dialog.remove();
        // After a partly failed deletion the list below is out of date (and its poll
        // waits while boxes are ticked): show what the registry holds now.
        if (dialog.hasAttribute("data-reload-on-close")) window.location.reload();
      });
      dialog.showModal();
    });
    updateSelection();
  }

  // The delete preview answers 409 (the plan changed, the repository is busy), 422 (not
  // confirmed, refused) and 502 (registry unreachable) with a fresh preview to show:
  // htmx leaves 4xx/5xx unswapped unless told.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var status = event.detail.xhr.status;
    var target = event.detail.target;
    var answers = target && (target.id === "panel" || target.id === "dry-run");
    if (answers && [409, 422, 502].indexOf(status) !== -1) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    enhance(document);
  });
  document.addEventListener("htmx:afterSettle", function (event) {
    enhance(document);
  });
})();
