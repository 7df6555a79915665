// ROTATE and REVOKE from the console: the dry run first, its plan shown, and the commit only
// when the operator confirms it, with the plan's simulation id.
import { api, seg } from "../api";
import { failure, fields, h, replace } from "../dom";

interface Bundle {
  validation_status: string;
  reason_code: string;
  diagnostics?: string[];
  simulation_id?: string | null;
  rotated_version?: number | null;
  revoked?: { target?: string; version?: number | null } | null;
}

function requestId(prefix: string): string {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return `${prefix}-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

function summary(bundle: Bundle): string {
  const parts = [bundle.reason_code];
  if (bundle.rotated_version) parts.push(`new version ${bundle.rotated_version}`);
  if (bundle.revoked?.target) {
    parts.push(`revokes ${bundle.revoked.target}${bundle.revoked.version ? ` ${bundle.revoked.version}` : ""}`);
  }
  if (bundle.diagnostics?.length) parts.push(bundle.diagnostics.join(", "));
  return parts.join(" · ");
}

/// A form for `operation` on `secret`; `target` gives a REVOKE its `revoke_target`.
export function mutationForm(
  tenant: string,
  secret: string,
  operation: "ROTATE" | "REVOKE",
  onDone: () => void,
): HTMLElement {
  const outcome = h("div", { class: "outcome" });
  const form = h(
    "form",
    { class: "inline", "data-operation": operation },
    h("strong", {}, operation === "ROTATE" ? "Rotate" : "Revoke a version"),
    operation === "REVOKE" ? h("label", {}, "version", h("input", { name: "version", type: "number", min: 1, required: true, size: 6 })) : null,
    h("label", {}, "requester engine", h("input", { name: "engine", value: "PH1.OS", required: true })),
    h("label", {}, "requester user (an admin of the policy)", h("input", { name: "user" })),
    h("button", { type: "submit" }, "Dry run"),
  ) as HTMLFormElement;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = fields(form);
    const request: Record<string, unknown> = {
      correlation_id: requestId("console"),
      turn_id: "console",
      tenant_id: tenant,
      operation,
      secret_name: secret,
      requester_engine_id: f.engine,
    };
    if (f.user) request.requester_user_id = f.user;
    if (operation === "REVOKE") request.revoke_target = { version: Number(f.version) };
    const path = `/v1/admin/tenants/${seg(tenant)}/requests`;
    try {
      const plan = await api<Bundle>("POST", path, { ...request, dry_run: true, idempotency_key: requestId("plan") });
      if (!plan.simulation_id) {
        replace(outcome, h("p", { class: "error", role: "alert" }, `Dry run: ${summary(plan)}; nothing to commit.`));
        return;
      }
      const commit = h("button", { type: "button", "data-action": "commit" }, "Commit");
      replace(
        outcome,
        h("p", { class: "plan" }, "Dry run: ", h("span", { class: "mono" }, summary(plan)), " — nothing is committed yet."),
        commit,
        " ",
        h("button", { type: "button", class: "secondary", onclick: () => replace(outcome) }, "Cancel"),
      );
      commit.addEventListener("click", async () => {
        (commit as HTMLButtonElement).disabled = true;
        try {
          const done = await api<Bundle>("POST", path, {
            ...request,
            simulation_id: plan.simulation_id,
            idempotency_key: requestId("commit"),
          });
          replace(outcome, h("p", { class: "ok committed" }, "Committed: ", h("span", { class: "mono" }, summary(done))));
          onDone();
        } catch (e) {
          replace(outcome, failure(e));
        }
      });
    } catch (e) {
      replace(outcome, failure(e));
    }
  });
  return h("div", { class: "panel" }, form, outcome);
}
