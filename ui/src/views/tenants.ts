import { api, seg } from "../api";
import { h, link, table } from "../dom";

interface Tenant {
  tenant_id: string;
  policy_version: number;
  enabled: boolean;
  secrets: number;
}

/// `#/tenants`: every tenant the admin may name, at a glance.
export async function tenants(): Promise<HTMLElement> {
  const { tenants } = await api<{ tenants: Tenant[] }>("GET", "/v1/admin/tenants");
  const rows = tenants.map((t) => [
    h("span", { class: "mono" }, t.tenant_id),
    t.policy_version ? `v${t.policy_version}` : "none",
    h("span", { class: t.enabled ? "ok" : "error" }, t.enabled ? "enabled" : "disabled"),
    t.secrets,
    h(
      "span",
      {},
      link(`#/tenants/${seg(t.tenant_id)}/secrets`, "secrets"),
      " · ",
      link(`#/tenants/${seg(t.tenant_id)}/policy`, "policy"),
      " · ",
      link(`#/tenants/${seg(t.tenant_id)}/audit`, "audit"),
    ),
  ]);
  return h(
    "section",
    { id: "tenants" },
    h("h1", {}, "Tenants"),
    tenants.length
      ? table(["tenant", "policy", "state", "secrets", ""], rows, { "data-view": "tenants" })
      : h("p", { class: "muted" }, "No tenant yet: set a policy or create a secret to make one."),
  );
}
