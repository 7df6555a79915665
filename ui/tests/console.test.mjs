// The console in a real headless browser (Debian's chromium, driven by playwright-core; never a
// downloaded browser build), against a running server that `crates/cli/tests/console.rs` starts
// and fills: 1,000 secrets, 100,000 audit records.
//
// Environment: SELENE_KMS_URL, SELENE_KMS_ADMIN_TOKEN, SELENE_KMS_TENANT, SELENE_KMS_CANARY (the
// value of an imported secret, which must appear nowhere), CHROMIUM (default /usr/bin/chromium),
// SELENE_KMS_SHOTS (a directory for one screenshot per view; none when unset).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const url = process.env.SELENE_KMS_URL;
const token = process.env.SELENE_KMS_ADMIN_TOKEN;
const tenant = process.env.SELENE_KMS_TENANT ?? "acme";
const canary = process.env.SELENE_KMS_CANARY ?? "";
const shots = process.env.SELENE_KMS_SHOTS;
assert.ok(url && token, "SELENE_KMS_URL and SELENE_KMS_ADMIN_TOKEN are needed");

let browser;
let page;
const seen = { tokens: [] };
const pageErrors = [];

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  // A debug build of the server over 100,000 records is slow: waits are generous, never sleeps.
  page.setDefaultTimeout(120_000);
  page.on("dialog", (dialog) => dialog.accept());
  page.on("pageerror", (error) => pageErrors.push(error));
  if (shots) mkdirSync(shots, { recursive: true });
});

after(async () => {
  await browser?.close();
  assert.deepEqual(pageErrors, [], "the console threw no error");
});

/// What the API says of a secret's current version (not the page).
async function currentVersion(name) {
  const response = await fetch(`${url}/v1/admin/tenants/${tenant}/secrets`, { headers: { Authorization: `Bearer ${token}` } });
  const { secrets } = await response.json();
  return secrets.find((s) => s.secret_name === name).current_version;
}

async function shot(name) {
  if (shots) await page.screenshot({ path: join(shots, `${name}.png`), fullPage: false });
}

/// Nothing the console shows or keeps may be a value, a handle, a credential or a token of a
/// principal it created: the DOM, the storage of every kind, and the page's cookies.
async function holdsNoSecret() {
  const values = await page.evaluate(() => [...document.querySelectorAll("input, textarea")].map((e) => e.value).join("\n"));
  const dom = (await page.content()) + values;
  const storage = await page.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }) + document.cookie);
  for (const text of [dom, storage]) {
    for (const marker of ["ksh1_", "ksh2_", "kse1_", "kse2_"]) {
      assert.ok(!text.includes(marker), `a handle or credential (${marker}) in the page`);
    }
    if (canary) assert.ok(!text.includes(canary), "a secret value in the page");
    for (const t of seen.tokens) assert.ok(!text.includes(t), "a principal's token kept in the page");
    assert.ok(!text.includes(token), "the admin token in the DOM or storage");
  }
  assert.equal(storage, "{}{}", "nothing in localStorage, sessionStorage or cookies");
}

async function go(hash) {
  await page.evaluate((h) => (location.hash = h), hash);
}

test("a wrong token is refused, and the admin token signs in", async () => {
  const response = await page.goto(`${url}/ui/`);
  const csp = response.headers()["content-security-policy"];
  assert.match(csp, /default-src 'self'/);
  assert.match(csp, /frame-ancestors 'none'/);
  await page.fill("input[name=token]", "not-a-token");
  await page.click("#signin button[type=submit]");
  await page.waitForSelector("#signin .error");
  assert.match(await page.textContent("#signin .error"), /KMS_UNAUTHENTICATED/);
  await shot("signin");
  await page.fill("input[name=token]", token);
  await page.click("#signin button[type=submit]");
  await page.waitForSelector("table[data-view=tenants]");
  await holdsNoSecret();
});

test("#/tenants shows the tenant at a glance", async () => {
  const row = page.locator("table[data-view=tenants] tbody tr", { hasText: tenant });
  await row.waitFor();
  const cells = await row.locator("td").allTextContents();
  assert.equal(cells[0], tenant);
  assert.match(cells[1], /^v\d+$/);
  assert.equal(cells[2], "enabled");
  assert.ok(Number(cells[3]) >= 1000, `${cells[3]} secrets`);
  await shot("tenants");
});

test("#/tenants/{t}/secrets lists versions and rotates through the dry run", async () => {
  await page.click(`a[href="#/tenants/${tenant}/secrets"]`);
  await page.waitForSelector("table[data-view=secrets]");
  assert.match(await page.textContent("#secret-count"), /\(1\d{3}\)/);
  assert.equal(await page.locator("table[data-view=secrets] tbody tr").count(), 100, "a page of them");
  await page.click("#secrets-next");
  await page.waitForFunction(() => document.querySelector("#secrets-range")?.textContent?.startsWith("101–"));
  await page.fill("#secret-filter", "payments/stripe");
  await page.waitForFunction(() => document.querySelectorAll("table[data-view=secrets] tbody tr").length === 1);
  const stripe = page.locator("table[data-view=secrets] tbody tr", { hasText: "payments/stripe" }).first();
  const before = Number((await stripe.locator("td").nth(3).textContent()).trim());
  await page.click('button[data-rotate="payments/stripe"]');
  await page.fill("form[data-operation=ROTATE] input[name=user]", "u-admin");
  await page.click("form[data-operation=ROTATE] button[type=submit]");
  await page.waitForSelector(".plan");
  assert.match(await page.textContent(".plan"), new RegExp(`new version ${before + 1}`));
  assert.match(await page.textContent(".plan"), /nothing is committed/);
  // The dry run committed nothing.
  assert.equal(await currentVersion("payments/stripe"), before);
  await shot("secrets-dry-run");
  await page.click("button[data-action=commit]");
  await page.waitForFunction(
    ([name, version]) => {
      const row = [...document.querySelectorAll("table[data-view=secrets] tbody tr")].find((r) => r.cells[0].textContent === name);
      return row && Number(row.cells[3].textContent) === version;
    },
    ["payments/stripe", before + 1],
  );
  // A key, created with its purpose.
  await page.fill("#create-secret input[name=secret_name]", "console/signing");
  await page.selectOption("#create-secret select[name=purpose]", "ed25519");
  await page.click("#create-secret button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#secret-count")?.textContent?.includes("1001"));
  await page.fill("#secret-filter", "console/");
  const key = page.locator("table[data-view=secrets] tbody tr", { hasText: "console/signing" });
  await key.waitFor();
  assert.equal((await key.locator("td").nth(2).textContent()).trim(), "ed25519");
  // Staging through the console: the canary is typed, sent once, and found nowhere after.
  await page.fill("#secret-filter", "payments/imported");
  await page.click('button[data-stage="payments/imported"]');
  await page.fill("#stage input[name=material]", canary);
  await page.click("#stage button[type=submit]");
  await page.waitForSelector("#stage .ok");
  assert.equal(await page.inputValue("#stage input[name=material]"), "");
  await page.fill("#secret-filter", "console/");
  await shot("secrets");
  await holdsNoSecret();
});

test("#/tenants/{t}/audit pages the chain, filters it and shows its verification", { timeout: 300_000 }, async () => {
  // The token lives in the page's memory only: a reload asks for it again.
  await page.reload();
  await page.fill("input[name=token]", token);
  await page.click("#signin button[type=submit]");
  await page.waitForSelector("#app section");
  await go(`#/tenants/${tenant}/audit`);
  await page.waitForSelector("table[data-view=audit]");
  // The whole chain is verified on the server: a while in a debug build.
  await page.click("#verify");
  await page.waitForSelector("#verification [data-verified], #verification .error", { timeout: 180_000 });
  assert.equal(await page.getAttribute("#verification [data-verified]", "data-verified"), "true", await page.textContent("#verification"));
  assert.match(await page.textContent("#verification"), /pinned key/);
  assert.equal(await page.locator("table[data-view=audit] tbody tr").count(), 50, "one page, not the whole chain");
  const first = await page.locator("table[data-view=audit] tbody tr td").first().textContent();
  await page.click("#next");
  await page.waitForFunction((seq) => document.querySelector("table[data-view=audit] tbody tr td")?.textContent !== seq, first);
  await page.click("#prev");
  await page.waitForFunction((seq) => document.querySelector("table[data-view=audit] tbody tr td")?.textContent === seq, first);
  await page.fill("#filters input[name=operation]", "ROTATE");
  await page.click("#filters button[type=submit]");
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll("table[data-view=audit] tbody tr")];
    return rows.length > 0 && rows.every((r) => r.cells[2].textContent === "ROTATE");
  });
  await page.fill("#filters input[name=operation]", "");
  await page.fill("#filters input[name=engine]", "PH1.CONNECTOR");
  await page.fill("#filters input[name=reason_code]", "PH1_KMS_OK_MATERIAL_ISSUE");
  await page.click("#filters button[type=submit]");
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll("table[data-view=audit] tbody tr")];
    return rows.length === 50 && rows.every((r) => r.cells[4].textContent === "PH1.CONNECTOR" && r.cells[3].textContent === "PH1_KMS_OK_MATERIAL_ISSUE");
  });
  await shot("audit");
  await holdsNoSecret();
});

test("#/principals creates with the token shown once, lists and revokes", async () => {
  await page.click('a[href="#/principals"]');
  await page.waitForSelector("table[data-view=principals]");
  await page.fill("#create-principal input[name=name]", "console-executor");
  await page.selectOption("#create-principal select[name=role]", "executor");
  await page.fill("#create-principal input[name=tenants]", tenant);
  await page.click("#create-principal button[type=submit]");
  await page.waitForSelector("#new-token");
  const shown = (await page.textContent("#new-token")).trim();
  assert.ok(shown.length > 20, "the token is shown");
  await page.locator("table[data-view=principals] tbody tr", { hasText: "console-executor" }).waitFor();
  await shot("principals");
  await page.click("#dismiss");
  assert.equal(await page.locator("#new-token").count(), 0, "dismissed, the token is gone");
  seen.tokens.push(shown);
  await page.click('button[data-revoke-principal="console-executor"]');
  await page.locator("table[data-view=principals] tbody tr", { hasText: "console-executor" }).locator("text=revoked").waitFor();
  await holdsNoSecret();
});

test("#/tenants/{t}/policy shows an edit's impact before it is applied", { timeout: 300_000 }, async () => {
  await page.click('a[href="#/tenants"]');
  await page.waitForSelector("table[data-view=tenants]");
  await page.click(`a[href="#/tenants/${tenant}/policy"]`);
  await page.waitForSelector("#policy textarea");
  const doc = JSON.parse(await page.inputValue("#policy textarea"));
  // The edit: PH1.CONNECTOR loses GET_HANDLE, which the recorded requests used.
  doc.rules = doc.rules.filter((r) => !r.engines.includes("PH1.CONNECTOR"));
  await page.fill("#policy textarea", JSON.stringify(doc, null, 2));
  assert.ok(await page.isDisabled("#apply"), "nothing can be applied before its impact is shown");
  await page.click("#simulate");
  // Every recorded request is evaluated again: 100,000 of them take a while in a debug build.
  await page.waitForSelector("[data-impact], #impact .error", { timeout: 180_000 });
  assert.equal(await page.locator("#impact .error").count(), 0, await page.textContent("#impact"));
  const denied = Number(await page.textContent("[data-impact] .allow-to-deny"));
  assert.ok(denied >= 1000, `${denied} requests would now be denied`);
  await shot("policy");
  await page.click("#apply");
  await page.waitForSelector(".applied");
  await holdsNoSecret();
});
