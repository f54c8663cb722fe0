// Runs the page's Clerk step once Clerk's browser bundle (the page's <script id="clerk-js">,
// served by the instance's Frontend API) has loaded. Pages carry no inline script, so the
// Content-Security-Policy allows scripts from this origin and Clerk's only.
//   data-step="keepalive": load Clerk, which renews the 60 s __session cookie in the background
//   data-step="signin":    mount the sign-in form, then go to data-next (a same-site path)
//   data-step="signout":   sign out of Clerk, then go home
(function () {
  "use strict";
  const tag = document.getElementById("clerk-js");
  if (!tag) { return; }
  const step = tag.dataset.step;

  async function run() {
    const clerk = window.Clerk;
    await clerk.load();
    if (step === "signout") { await clerk.signOut({redirectUrl: "/"}); return; }
    if (step !== "signin") { return; }
    // the server sends a same-site path only; checked again here: never another origin
    let target = new URL(tag.dataset.next || "/", window.location.href);
    if (target.origin !== window.location.origin) { target = new URL("/", window.location.href); }
    if (clerk.user) { window.location.assign(target.href); return; }
    clerk.mountSignIn(document.getElementById("sign-in"), {forceRedirectUrl: target.href});
  }

  if (window.Clerk) { run(); } else { tag.addEventListener("load", run); }
})();
