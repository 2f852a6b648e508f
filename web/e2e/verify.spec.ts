import { expect, test } from "@playwright/test";
import { admin, call, createDecision, expectAccessible, newVoter, screenshot, signedInContext } from "./helpers";

test("verify my vote: green once a checkpoint covers it, the anchor path checked, red for a tampered proof", async ({ browser }) => {
  const root = await admin();
  const decision = await createDecision(root.access_token, { title: "Open the dam's fish ladder?", options: ["yes", "no"] });
  // Another vote first, so this voter's leaf is not alone and its audit path is not empty.
  const first = await newVoter("early");
  await call("POST", "/api/v1/voting/cast-vote", first.tokens.access_token, { decision_id: decision.id, option: 1 });
  const voter = await newVoter("checker");
  const context = await signedInContext(browser, voter);
  const page = await context.newPage();

  await page.goto(`/decisions/${decision.id}`);
  await page.getByRole("radio", { name: "yes" }).check();
  await page.getByRole("button", { name: "Cast my vote" }).click();
  const leaf = (await page.getByTestId("leaf-hash").textContent())!.trim();
  await page.getByRole("link", { name: "Verify my vote" }).click();
  await expect(page).toHaveURL(new RegExp(`/verify/${decision.id}/${leaf}$`));
  // The node cuts a checkpoint within about a second; the page retries until one covers it.
  const verdict = page.getByTestId("verdict");
  await expect(verdict).toHaveAttribute("data-verdict", "ok", { timeout: 20_000 });
  await expect(verdict).toContainText("Your vote is in the record");
  await expect(page.getByText("Leaf", { exact: true })).toBeVisible(); // the receipt's leaf was hashed too
  await expect(page.getByTestId("anchor")).toBeVisible();
  await expectAccessible(page, "verify (green)");
  await screenshot(page, "verify-green");

  // Once the checkpoint is anchored (the node's journal, every 10 s), the browser checks
  // the path from its entry to the anchored batch root too, and a forged root fails.
  await expect(async () => {
    await page.reload();
    await expect(page.getByText("Anchor", { exact: true })).toBeVisible({ timeout: 3_000 });
  }).toPass({ timeout: 45_000 });
  await expect(page.getByTestId("anchor")).toContainText("checked the path from the checkpoint to the batch root");
  await screenshot(page, "verify-anchored");
  await page.route("**/api/v1/audit/decisions/*/proof?*", async (route) => {
    const response = await route.fetch();
    const proof = await response.json();
    const root: string = proof.anchor.batch_root;
    proof.anchor.batch_root = (root[0] === "0" ? "1" : "0") + root.slice(1);
    await route.fulfill({ response, json: proof });
  });
  await page.reload();
  await expect(verdict).toHaveAttribute("data-verdict", "failed");
  await expect(verdict).toContainText("bad_anchor");
  await page.unroute("**/api/v1/audit/decisions/*/proof?*");

  // The same proof with one byte of its audit path flipped.
  let tampered = false;
  await page.route("**/api/v1/audit/decisions/*/proof?*", async (route) => {
    const response = await route.fetch();
    const proof = await response.json();
    expect(proof.proof.length).toBeGreaterThan(0);
    const hash: string = proof.proof[0];
    proof.proof[0] = (hash[0] === "0" ? "1" : "0") + hash.slice(1);
    tampered = true;
    await route.fulfill({ response, json: proof });
  });
  await page.reload();
  await expect(verdict).toHaveAttribute("data-verdict", "failed");
  await expect(verdict).toContainText("leads to another root");
  expect(tampered).toBe(true);
  await expectAccessible(page, "verify (red)");
  await screenshot(page, "verify-red");

  // A forged checkpoint signature fails too.
  await page.unroute("**/api/v1/audit/decisions/*/proof?*");
  await page.route("**/api/v1/audit/decisions/*/proof?*", async (route) => {
    const response = await route.fetch();
    const proof = await response.json();
    proof.checkpoint = proof.checkpoint.replace(/\n(\d+)\n/, (_: string, n: string) => `\n${Number(n) + 1}\n`);
    await route.fulfill({ response, json: proof });
  });
  await page.reload();
  await expect(verdict).toHaveAttribute("data-verdict", "failed");
  await expect(verdict).toContainText("bad_signature");
  await page.unroute("**/api/v1/audit/decisions/*/proof?*");

  // From my votes, the same check.
  await page.goto("/my-votes");
  await expect(page.getByTestId("my-votes")).toContainText("Open the dam's fish ladder?");
  await expectAccessible(page, "my votes");
  await screenshot(page, "my-votes");
  await page.getByRole("link", { name: "Verify my vote on Open the dam's fish ladder?" }).click();
  await expect(verdict).toHaveAttribute("data-verdict", "ok");

  // The notification centre keeps the vote cast here, with a link to check it.
  await page.getByRole("link", { name: /Notifications, \d+ unread/ }).click();
  await expect(page.getByRole("list", { name: "Notifications" })).toContainText("Vote cast: Open the dam's fish ladder?");
  await expectAccessible(page, "notifications");
  await screenshot(page, "notifications");
  await context.close();
});
