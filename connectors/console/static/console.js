// ticket-triage review console: the only script. Pages work without it; it narrows dependent choices.
(function () {
  "use strict";
  // A dependent select (data-parent="category") shows only the options of the parent's chosen value
  // (each option carries data-under="<parent value>"); the server checks the pair again either way.
  function narrow(child) {
    var parent = document.getElementById(child.getAttribute("data-parent-id"));
    if (!parent) { return; }
    var want = parent.value;
    var firstVisible = null;
    Array.prototype.forEach.call(child.querySelectorAll("option"), function (opt) {
      var ok = opt.getAttribute("data-under") === want;
      opt.hidden = !ok;
      opt.disabled = !ok;
      if (ok && firstVisible === null) { firstVisible = opt; }
    });
    var groups = child.querySelectorAll("optgroup");
    Array.prototype.forEach.call(groups, function (grp) { grp.hidden = grp.getAttribute("label") !== want; });
    var sel = child.options[child.selectedIndex];
    if ((!sel || sel.disabled) && firstVisible) { firstVisible.selected = true; }
  }
  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("select[data-parent-id]"), function (child) {
      var parent = document.getElementById(child.getAttribute("data-parent-id"));
      if (parent) { parent.addEventListener("change", function () { narrow(child); }); }
      narrow(child);
    });
  });
})();
// Probability bars: their width comes from data-w (0..100); no inline styles (the CSP allows none).
document.addEventListener("DOMContentLoaded", function () {
  "use strict";
  Array.prototype.forEach.call(document.querySelectorAll(".bar[data-w]"), function (bar) {
    var w = Math.max(1, Math.min(100, parseInt(bar.getAttribute("data-w"), 10) || 0));
    bar.style.width = (0.8 * w) + "px";
  });
});
