import { ApiError, api, seg } from "../api";
import { failure, h, replace, table } from "../dom";

interface Change {
  seq: number;
  operation: string;
  secret_name: string;
  requester_engine_id: string;
  requester_user_id: string | null;
  was: string;
  now: string;
}

interface Impact {
  evaluated: number;
  allow_to_deny: number;
  deny_to_allow: number;
  changes: Change[];
}

/// `#/tenants/{t}/policy`: the document, an editor, and the impact of an edit on every recorded
/// request (from `policy/simulate`) shown before the edit can be applied.
export async function policy(tenant: string, rerender: () => void): Promise<HTMLElement> {
  const path = `/v1/admin/tenants/${seg(tenant)}/policy`;
  let current = "";
  try {
    current = JSON.stringify(await api("GET", path), null, 2);
  } catch (e) {
    if (!(e instanceof ApiError && e.reason === "KMS_POLICY_NOT_FOUND")) throw e;
    current = JSON.stringify({ rules: [], admins: [] }, null, 2);
  }
  const editor = h("textarea", { name: "policy", spellcheck: false }, current) as HTMLTextAreaElement;
  const impact = h("div", { id: "impact" });
  const apply = h("button", { type: "button", id: "apply", disabled: true }, "Apply") as HTMLButtonElement;
  const simulate = h("button", { type: "button", id: "simulate" }, "Show impact") as HTMLButtonElement;
  let simulated = "";
  editor.addEventListener("input", () => {
    apply.disabled = editor.value !== simulated || !simulated;
  });
  simulate.addEventListener("click", async () => {
    let document: unknown;
    try {
      document = JSON.parse(editor.value);
    } catch {
      replace(impact, h("p", { class: "error", role: "alert" }, "The document is not valid JSON."));
      return;
    }
    try {
      const result = await api<Impact>("POST", `${path}/simulate`, { policy: document });
      simulated = editor.value;
      apply.disabled = false;
      replace(impact, impactView(result));
    } catch (e) {
      replace(impact, failure(e));
    }
  });
  apply.addEventListener("click", async () => {
    apply.disabled = true;
    try {
      const stored = await api<{ policy_version: number }>("PUT", path, JSON.parse(simulated));
      replace(impact, h("p", { class: "ok applied" }, `Applied as version ${stored.policy_version}.`));
      rerender();
    } catch (e) {
      replace(impact, failure(e));
    }
  });
  return h(
    "section",
    { id: "policy" },
    h("h1", {}, `Policy of ${tenant}`),
    h("p", { class: "muted" }, "Edit, show the impact on the recorded requests, then apply: nothing changes until Apply."),
    editor,
    h("p", {}, simulate, " ", apply),
    impact,
  );
}

function impactView(result: Impact): HTMLElement {
  return h(
    "div",
    { class: "panel", "data-impact": "" },
    h(
      "p",
      {},
      h("strong", {}, `${result.evaluated}`),
      " recorded requests re-evaluated: ",
      h("strong", { class: "allow-to-deny" }, `${result.allow_to_deny}`),
      " allowed before and denied now, ",
      h("strong", { class: "deny-to-allow" }, `${result.deny_to_allow}`),
      " denied before and allowed now.",
    ),
    result.changes.length
      ? table(
          ["seq", "operation", "secret", "engine", "user", "was", "now"],
          result.changes.map((c) => [c.seq, c.operation, c.secret_name, c.requester_engine_id, c.requester_user_id ?? "", c.was, c.now]),
        )
      : null,
  );
}
