import { api, seg } from "../api";
import { failure, fields, h, replace, table } from "../dom";

interface Record_ {
  seq: number;
  at_ms: number;
  operation: string | null;
  reason_code: string;
  principal_id: string | null;
  requester_engine_id: string | null;
  requester_user_id: string | null;
  dry_run: boolean;
  secret_ref: string | null;
  key_version?: number;
}

interface Page {
  records: Record_[];
  next_after_seq: number | null;
}

interface Verified {
  verified: boolean;
  records: number;
  manifested: number;
  key: string;
  problem: string | null;
}

const PAGE = 50;
/// Reads of one filtered page at most: a filter for rare records looks this far, then the
/// operator goes on with Next.
const ROUNDS = 20;

/// Up to a page of records after `after` that the filters keep. A filtered read scans a bounded
/// stretch of the chain, so a page of rare records may take several reads.
async function fill(tenant: string, after: number, filters: Record<string, string>): Promise<Page> {
  const records: Record_[] = [];
  let next: number | null = after;
  for (let round = 0; round < ROUNDS && next !== null && records.length < PAGE; round++) {
    const query = new URLSearchParams({ tenant_id: tenant, after_seq: String(next), limit: String(PAGE - records.length) });
    for (const [k, v] of Object.entries(filters)) if (v) query.set(k, v);
    const page: Page = await api<Page>("GET", `/v1/audit?${query}`);
    records.push(...page.records);
    next = page.next_after_seq;
  }
  return { records, next_after_seq: next };
}

/// `#/tenants/{t}/audit`: the chain page by page (never all of it at once), filtered by
/// operation, engine and reason on the server, and its verification against the pinned key.
export async function audit(tenant: string): Promise<HTMLElement> {
  const list = h("div", { id: "records" });
  const status = h("div", { id: "verification", class: "panel" });
  const cursors: number[] = [0];
  let filters: Record<string, string> = {};

  // Answers that arrive after a newer request was sent are dropped: the table always shows the
  // filters and page the operator asked for last.
  let generation = 0;
  const load = async (): Promise<void> => {
    const mine = ++generation;
    const after = cursors[cursors.length - 1];
    try {
      const page = await fill(tenant, after, filters);
      if (mine !== generation) return;
      const rows = page.records.map((r) => [
        r.seq,
        new Date(r.at_ms).toISOString(),
        r.operation ?? "",
        h("span", { class: r.reason_code.includes("_OK_") ? "ok" : "error" }, r.reason_code),
        r.requester_engine_id ?? "",
        r.requester_user_id ?? "",
        r.dry_run ? "dry run" : "",
        r.key_version ?? "",
      ]);
      const prev = h("button", { type: "button", class: "secondary", id: "prev", disabled: cursors.length < 2 }, "Previous");
      const next = h("button", { type: "button", class: "secondary", id: "next", disabled: page.next_after_seq === null }, "Next");
      prev.addEventListener("click", () => {
        cursors.pop();
        void load();
      });
      next.addEventListener("click", () => {
        if (page.next_after_seq !== null) cursors.push(page.next_after_seq);
        void load();
      });
      replace(
        list,
        h("div", { class: "pager" }, prev, next, h("span", { class: "muted" }, `after seq ${after}: ${page.records.length} records`)),
        table(["seq", "at", "operation", "reason", "engine", "user", "", "key version"], rows, { "data-view": "audit" }),
      );
    } catch (e) {
      replace(list, failure(e));
    }
  };

  const filter = h(
    "form",
    { class: "inline", id: "filters" },
    h("label", {}, "operation", h("input", { name: "operation", placeholder: "GET_HANDLE" })),
    h("label", {}, "engine", h("input", { name: "engine", placeholder: "PH1.CONNECTOR" })),
    h("label", {}, "reason", h("input", { name: "reason_code", placeholder: "KMS_NOT_AUTHORIZED" })),
    h("button", { type: "submit" }, "Filter"),
  ) as HTMLFormElement;
  filter.addEventListener("submit", (event) => {
    event.preventDefault();
    filters = fields(filter);
    cursors.splice(0, cursors.length, 0);
    void load();
  });

  // Verifying walks the whole chain and the store's state on the server: on request only.
  const verify = h("button", { type: "button", id: "verify" }, "Verify the chain") as HTMLButtonElement;
  const outcome = h("span", { class: "muted" }, " against the key pinned when the store was made, by the server.");
  verify.addEventListener("click", () => {
    verify.disabled = true;
    replace(outcome, " verifying…");
    api<Verified>("GET", `/v1/audit/verify?tenant_id=${seg(tenant)}`)
      .then((v) =>
        replace(
          outcome,
          h(
            "span",
            { class: v.verified ? "ok" : "error", "data-verified": String(v.verified) },
            v.verified ? " Verified" : " NOT verified",
            ` by the server against the ${v.key} key: ${v.records} records, ${v.manifested} under a signed manifest.`,
            v.problem ? ` ${v.problem}` : "",
          ),
        ),
      )
      .catch((e) => replace(outcome, failure(e)))
      .finally(() => (verify.disabled = false));
  });
  replace(status, verify, outcome);
  void load();
  return h("section", { id: "audit" }, h("h1", {}, `Audit of ${tenant}`), status, filter, list);
}
