// The admin console: hash routes over the JSON API, signed in with an admin token kept in this
// tab only. It never asks the server for a value, a handle or a credential, and never shows one.
import { failure, h, link, replace } from "./dom";
import { api } from "./api";
import { currentToken, signOut } from "./session";
import { audit } from "./views/audit";
import { policy } from "./views/policy";
import { principals } from "./views/principals";
import { secrets } from "./views/secrets";
import { signin } from "./views/signin";
import { tenants } from "./views/tenants";

const app = document.getElementById("app") as HTMLElement;
const nav = document.getElementById("nav") as HTMLElement;
const who = document.getElementById("who") as HTMLElement;

type View = (rerender: () => void) => Promise<HTMLElement>;

/// The view of a hash route, or `null` for one the console does not have.
function route(hash: string): { view: View; section: string } | null {
  const path = hash.replace(/^#/, "") || "/tenants";
  let parts: string[];
  try {
    parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  } catch {
    return null;
  }
  if (parts.length === 1 && parts[0] === "tenants") return { view: () => tenants(), section: "tenants" };
  if (parts.length === 1 && parts[0] === "principals") return { view: () => principals(), section: "principals" };
  if (parts.length === 3 && parts[0] === "tenants") {
    const tenant = parts[1];
    switch (parts[2]) {
      case "secrets":
        return { view: () => secrets(tenant), section: "tenants" };
      case "policy":
        return { view: (rerender) => policy(tenant, rerender), section: "tenants" };
      case "audit":
        return { view: () => audit(tenant), section: "tenants" };
    }
  }
  return null;
}

function navigation(section: string): void {
  const item = (href: string, text: string, name: string) => {
    const a = link(href, text);
    if (name === section) a.classList.add("current");
    return a;
  };
  replace(nav, item("#/tenants", "Tenants", "tenants"), item("#/principals", "Principals", "principals"));
}

// Renders that finish after a newer one began are dropped: the page shows the route asked last.
let generation = 0;

async function render(): Promise<void> {
  const mine = ++generation;
  if (!currentToken()) {
    replace(nav);
    replace(who);
    replace(app, signin(() => void render()));
    return;
  }
  const found = route(location.hash);
  if (!found) {
    replace(app, h("p", { class: "error" }, "No such page."), link("#/tenants", "Tenants"));
    return;
  }
  navigation(found.section);
  try {
    const me = await api<{ name: string; role: string }>("GET", "/v1/auth/whoami");
    replace(
      who,
      `${me.name} (${me.role}) `,
      h("button", { type: "button", class: "secondary", id: "signout", onclick: () => { signOut(); void render(); } }, "Sign out"),
    );
    const view = await found.view(() => void render());
    if (mine === generation) replace(app, view);
  } catch (e) {
    if (!currentToken()) {
      void render();
      return;
    }
    replace(app, failure(e));
  }
}

window.addEventListener("hashchange", () => void render());
void render();
