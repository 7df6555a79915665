import { api, seg } from "../api";
import { failure, fields, h, replace, table } from "../dom";
import { mutationForm } from "./mutation";

interface Version {
  version: number;
  state: string;
  created_at_ms: number;
}

interface Secret {
  secret_name: string;
  secret_ref: string;
  kind: string;
  purpose: string;
  min_decryption_version: number;
  current_version: number;
  versions: Version[];
}

const PURPOSES = ["credential", "hmac-sha256", "ed25519", "aes-256-gcm"];
const SECRETS_PAGE = 100;

function versions(list: Version[]): HTMLElement {
  return h(
    "span",
    { class: "versions" },
    ...list.flatMap((v, i) => [i ? " " : "", h("span", { class: `state-${v.state}`, title: new Date(v.created_at_ms).toISOString() }, `v${v.version} ${v.state}`)]),
  );
}

/// `#/tenants/{t}/secrets`: versions and states; create, stage, rotate and revoke (each through
/// its dry run). Metadata only: no value is ever asked of the server, nor shown.
export async function secrets(tenant: string): Promise<HTMLElement> {
  const base = `/v1/admin/tenants/${seg(tenant)}`;
  const read = async (): Promise<Secret[]> => (await api<{ secrets: Secret[] }>("GET", `${base}/secrets`)).secrets;
  let secrets = await read();
  const actions = h("div", { id: "actions" });
  const listed = h("div", { id: "secret-list" });
  const count = h("span", { class: "muted", id: "secret-count" });
  const search = h("input", { name: "filter", placeholder: "filter by name", id: "secret-filter" }) as HTMLInputElement;
  let shown = secrets;
  let offset = 0;
  // After a change: the list read again, under the same filter and page, the outcome kept.
  const refresh = (): void => {
    read()
      .then((fresh) => {
        secrets = fresh;
        shown = secrets.filter((s) => s.secret_name.includes(search.value));
        offset = Math.min(offset, Math.max(0, shown.length - 1) - (Math.max(0, shown.length - 1) % SECRETS_PAGE));
        draw();
      })
      .catch((e) => replace(listed, failure(e)));
  };
  const row = (s: Secret) => [
    h("span", { class: "mono" }, s.secret_name),
    s.kind,
    s.purpose,
    s.current_version,
    versions(s.versions),
    h(
      "span",
      {},
      h("button", { type: "button", class: "secondary", "data-rotate": s.secret_name, onclick: () => replace(actions, mutationForm(tenant, s.secret_name, "ROTATE", refresh)) }, "Rotate"),
      " ",
      h("button", { type: "button", class: "secondary", "data-revoke": s.secret_name, onclick: () => replace(actions, mutationForm(tenant, s.secret_name, "REVOKE", refresh)) }, "Revoke"),
      s.kind === "IMPORTED" ? " " : null,
      s.kind === "IMPORTED" ? h("button", { type: "button", class: "secondary", "data-stage": s.secret_name, onclick: () => replace(actions, stageForm(base, s.secret_name, refresh)) }, "Stage") : null,
    ),
  ];
  // A page of rows at a time: a tenant of thousands of secrets stays a page of a hundred.
  const draw = (): void => {
    const page = shown.slice(offset, offset + SECRETS_PAGE);
    const prev = h("button", { type: "button", class: "secondary", id: "secrets-prev", disabled: offset === 0 }, "Previous");
    const next = h("button", { type: "button", class: "secondary", id: "secrets-next", disabled: offset + SECRETS_PAGE >= shown.length }, "Next");
    prev.addEventListener("click", () => {
      offset = Math.max(0, offset - SECRETS_PAGE);
      draw();
    });
    next.addEventListener("click", () => {
      offset += SECRETS_PAGE;
      draw();
    });
    const range = shown.length ? `${offset + 1}–${offset + page.length} of ${shown.length}` : "none";
    replace(count, ` (${secrets.length})`);
    replace(
      listed,
      h("div", { class: "pager" }, prev, next, h("span", { class: "muted", id: "secrets-range" }, range)),
      table(["name", "kind", "purpose", "current", "versions", ""], page.map(row), { "data-view": "secrets" }),
    );
  };
  search.addEventListener("input", () => {
    shown = secrets.filter((s) => s.secret_name.includes(search.value));
    offset = 0;
    draw();
  });
  draw();
  return h(
    "section",
    { id: "secrets" },
    h("h1", {}, `Secrets of ${tenant}`, count),
    createForm(base, refresh),
    actions,
    h("p", {}, search),
    listed,
  );
}

function createForm(base: string, refresh: () => void): HTMLElement {
  const status = h("span");
  const form = h(
    "form",
    { class: "inline", id: "create-secret" },
    h("strong", {}, "Create"),
    h("label", {}, "name", h("input", { name: "secret_name", required: true, placeholder: "payments/stripe" })),
    h("label", {}, "purpose", h("select", { name: "purpose" }, ...PURPOSES.map((p) => h("option", { value: p }, p)))),
    h("button", { type: "submit" }, "Create (generated)"),
    status,
  ) as HTMLFormElement;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = fields(form);
    try {
      await api("POST", `${base}/secrets`, { secret_name: f.secret_name, purpose: f.purpose });
      form.reset();
      replace(status, h("span", { class: "ok" }, `Created ${f.secret_name}.`));
      refresh();
    } catch (e) {
      replace(status, failure(e));
    }
  });
  return form;
}

/// Staging: the operator types the next version's material into a masked field (not a password
/// field, which a browser would offer to save); it is sent once, then the field is cleared. The
/// console never reads a value back.
function stageForm(base: string, secret: string, refresh: () => void): HTMLElement {
  const status = h("span");
  const form = h(
    "form",
    { class: "inline", id: "stage" },
    h("strong", {}, `Stage the next version of ${secret}`),
    h("label", {}, "material (sent once, never shown)", h("input", { name: "material", type: "text", class: "masked", required: true, autocomplete: "off", spellcheck: "false" })),
    h("button", { type: "submit" }, "Stage"),
    status,
  ) as HTMLFormElement;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = form.elements.namedItem("material") as HTMLInputElement;
    const bytes = new TextEncoder().encode(input.value);
    input.value = "";
    let binary = "";
    bytes.forEach((b) => (binary += String.fromCharCode(b)));
    try {
      await api("POST", `${base}/staged-versions`, { secret_name: secret, material_b64: btoa(binary) });
      binary = "";
      replace(status, h("span", { class: "ok" }, "Staged: the next rotation takes it."));
      refresh();
    } catch (e) {
      replace(status, failure(e));
    } finally {
      bytes.fill(0);
    }
  });
  return form;
}
