import { api, seg } from "../api";
import { failure, fields, h, replace, table } from "../dom";

interface Principal {
  principal_id: string;
  name: string;
  role: string;
  tenants: string[];
  spiffe_id: string | null;
  created_at_ms: number;
  expires_at_ms: number | null;
  revoked: boolean;
  tokens: { token_id: string; revoked: boolean }[];
}

/// `#/principals`: list, create (the token shown once, here, and kept nowhere), revoke.
export async function principals(): Promise<HTMLElement> {
  const once = h("div", { id: "token-once" });
  const status = h("div");
  const listed = h("div", { id: "principal-list" });
  const refresh = async (): Promise<void> => {
    try {
      const { principals } = await api<{ principals: Principal[] }>("GET", "/v1/admin/principals");
      replace(listed, principalTable(principals, status, refresh));
    } catch (e) {
      replace(status, failure(e));
    }
  };
  const form = h(
    "form",
    { class: "inline", id: "create-principal" },
    h("strong", {}, "Create"),
    h("label", {}, "name", h("input", { name: "name", required: true })),
    h("label", {}, "role", h("select", { name: "role" }, ...["executor", "os", "admin"].map((r) => h("option", { value: r }, r)))),
    h("label", {}, "tenants (comma-separated, or *)", h("input", { name: "tenants", required: true })),
    h("button", { type: "submit" }, "Create"),
  ) as HTMLFormElement;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = fields(form);
    const tenants = f.tenants.split(",").map((t) => t.trim()).filter(Boolean);
    try {
      const made = await api<{ principal_id: string; token: string }>("POST", "/v1/admin/principals", {
        name: f.name,
        role: f.role,
        tenants,
      });
      form.reset();
      // Shown once, in this box only: dismissing it (or leaving the page) forgets it.
      replace(
        once,
        h(
          "div",
          { class: "once" },
          h("p", {}, `Token of ${f.name} (${made.principal_id}): copy it now, it is shown once.`),
          h("code", { class: "mono", id: "new-token" }, made.token),
          h("p", {}, h("button", { type: "button", id: "dismiss", onclick: () => replace(once) }, "I have copied it")),
        ),
      );
      await refresh();
    } catch (e) {
      replace(status, failure(e));
    }
  });
  await refresh();
  return h("section", { id: "principals" }, h("h1", {}, "Principals"), form, once, status, listed);
}

function principalTable(principals: Principal[], status: HTMLElement, refresh: () => Promise<void>): HTMLElement {
  const rows = principals.map((p) => [
    h("span", { class: "mono" }, p.principal_id),
    p.name,
    p.role,
    p.tenants.join(", "),
    p.revoked ? h("span", { class: "error" }, "revoked") : h("span", { class: "ok" }, "live"),
    `${p.tokens.filter((t) => !t.revoked).length} live / ${p.tokens.length}`,
    p.revoked
      ? ""
      : h(
          "button",
          {
            type: "button",
            class: "secondary",
            "data-revoke-principal": p.name,
            onclick: async () => {
              if (!confirm(`Revoke ${p.name} and every token of it?`)) return;
              try {
                await api("DELETE", `/v1/admin/principals/${seg(p.principal_id)}`);
                await refresh();
              } catch (e) {
                replace(status, failure(e));
              }
            },
          },
          "Revoke",
        ),
  ]);
  return table(["id", "name", "role", "tenants", "state", "tokens", ""], rows, { "data-view": "principals" });
}
