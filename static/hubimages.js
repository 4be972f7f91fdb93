// Progressive enhancement for hubimages's pages: every control works without this file.
// Loaded in <head> without `defer`, so the "js" class is set before the page is drawn.
document.documentElement.classList.add("js");

(function () {
  "use strict";

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

  // The selection lives on the server: each change posts the page's boxes (htmx, on
  // form#selection) and the selection bar comes back with the count and what it frees.
  // Here only what needs no answer: the header box and whether Preview can be pressed.
  function updateSelection() {
    var form = document.getElementById("selection");
    if (!form) return;
    var boxes = form.querySelectorAll('input[type="checkbox"][name="digest"]');
    var checked = checkedBoxes().length;
    var bar = document.getElementById("selection-bar");
    var elsewhere = bar ? Number(bar.getAttribute("data-count")) || 0 : 0;
    var button = document.getElementById("preview-delete");
    if (button) button.disabled = checked === 0 && elsewhere === 0;
    var all = document.getElementById("select-all");
    if (all) {
      all.hidden = boxes.length === 0;
      all.checked = boxes.length > 0 && checked === boxes.length;
      all.indeterminate = checked > 0 && checked < boxes.length;
    }
  }

  function checkedBoxes() {
    return document.querySelectorAll('#selection input[type="checkbox"][name="digest"]:checked');
  }

  // Capture phase: the header box ticks the rows before htmx, listening on the form,
  // posts them.
  document.addEventListener(
    "change",
    function (event) {
      var target = event.target;
      if (target.id === "select-all") {
        document.querySelectorAll('#selection input[type="checkbox"][name="digest"]').forEach(function (box) {
          box.checked = target.checked;
        });
      }
      if (target.id === "select-all" || target.name === "digest") updateSelection();
    },
    true
  );

  // The list's controls leave their defaults out of the request, so the address bar
  // says only what differs (`?search=2.3`, not `?search=2.3&filter=all&per_page=25`).
  document.addEventListener("htmx:configRequest", function (event) {
    var controls = document.getElementById("list-controls");
    if (!controls || !controls.contains(event.detail.elt)) return;
    controls.querySelectorAll("[data-default]").forEach(function (field) {
      var value = event.detail.parameters[field.name];
      if (value === field.getAttribute("data-default")) {
        if (event.detail.formData) event.detail.formData.delete(field.name);
        else delete event.detail.parameters[field.name];
      }
    });
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
    root.querySelectorAll("button.copy[hidden], .js-only[hidden]").forEach(function (element) {
      element.hidden = false;
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

  // Focus lands on the result of an action, never on <body>: the message a page opens
  // with (Delete forever ends on the list with "Deleted …"), a deletion's outcome when it
  // arrives in its dialog, the selection bar after Cancel.
  function focusResult(element) {
    if (!element) return;
    if (!element.hasAttribute("tabindex")) element.setAttribute("tabindex", "-1");
    element.focus();
  }

  document.addEventListener("DOMContentLoaded", function () {
    enhance(document);
    if (document.activeElement === document.body || !document.activeElement) {
      focusResult(document.querySelector(".messages .message"));
    }
  });
  var focusAfterSwap = null;

  document.addEventListener("htmx:afterSettle", function (event) {
    enhance(document);
    markCurrent(false);
    if (focusAfterSwap) {
      focusResult(document.getElementById(focusAfterSwap));
      focusAfterSwap = null;
    }
    var outcome = document.querySelector("dialog[open] .delete-outcome:not([data-shown])");
    if (outcome) {
      outcome.setAttribute("data-shown", "");
      focusResult(outcome);
    }
  });

  // The preview's Cancel forgets the selection (the list comes back with nothing ticked)
  // and closes the dialog.
  document.addEventListener("htmx:afterRequest", function (event) {
    var element = event.detail.elt;
    if (!event.detail.successful || !element.hasAttribute("data-closes-dialog")) return;
    var dialog = element.closest("dialog");
    if (dialog) dialog.close();
    focusAfterSwap = "selection-summary"; // in the list the answer is about to replace
  });

  // Keyboard: / searches, j and k move between rows, x ticks, Enter opens the details,
  // ? lists the shortcuts. Never while typing, and never over an open dialog.
  var currentDigest = null;

  function listRows() {
    return Array.prototype.slice.call(document.querySelectorAll("#rows tbody.item"));
  }

  function markCurrent(focus) {
    var current = null;
    listRows().forEach(function (row) {
      var here = row.getAttribute("data-digest") === currentDigest;
      row.classList.toggle("row-current", here);
      if (here) current = row;
    });
    if (current && focus) {
      var link = current.querySelector(".digest a");
      if (link) link.focus();
      current.scrollIntoView({ block: "nearest" });
    }
    return current;
  }

  function move(step) {
    var rows = listRows();
    if (!rows.length) return;
    var at = rows.findIndex(function (row) {
      return row.getAttribute("data-digest") === currentDigest;
    });
    var next = at === -1 ? (step > 0 ? 0 : rows.length - 1) : Math.min(Math.max(at + step, 0), rows.length - 1);
    currentDigest = rows[next].getAttribute("data-digest");
    markCurrent(true);
  }

  function typing(target) {
    if (target.isContentEditable || target.tagName === "TEXTAREA" || target.tagName === "SELECT") return true;
    return target.tagName === "INPUT" && ["checkbox", "radio", "button", "submit"].indexOf(target.type) === -1;
  }

  function showShortcuts() {
    var dialog = document.getElementById("shortcuts");
    if (dialog && !dialog.open) dialog.showModal();
  }

  document.addEventListener("click", function (event) {
    if (event.target.closest("#show-shortcuts")) showShortcuts();
  });

  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    if (typing(event.target) || document.querySelector("dialog[open]")) return;
    if (!document.getElementById("rows")) return;
    var key = event.key;
    if (key === "/") {
      document.getElementById("search").focus();
    } else if (key === "j" || key === "k") {
      move(key === "j" ? 1 : -1);
    } else if (key === "x") {
      var row = markCurrent(false);
      var box = row && row.querySelector('input[type="checkbox"][name="digest"]');
      if (!box) return;
      box.click();
    } else if (key === "Enter") {
      var open = markCurrent(false);
      if (!open || event.target.closest("a, button, summary")) return;
      open.querySelector(".digest a").click();
    } else if (key === "?") {
      showShortcuts();
    } else {
      return;
    }
    event.preventDefault();
  });
})();
