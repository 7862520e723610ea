// Refreshes the live part of the fleet page; everything else is plain server-rendered HTML.
// The fragment comes from the same origin and is escaped by the server's templates.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) {
    return;
  }
  var url = live.getAttribute("data-refresh");
  var every = parseInt(live.getAttribute("data-every"), 10) || 5000;
  function refresh() {
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 401) {  // the session ended: back to the login form
          window.location.assign("/ui/login");
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== undefined) {
          live.innerHTML = html;
        }
      })
      .catch(function () { /* keep the last view; the next round tries again */ });
  }
  window.setInterval(refresh, every);
})();
