import { expect, test } from "@playwright/test";
import { ADMIN, call, expectAccessible, login, newVoter, screenshot, signedInContext } from "./helpers";

test("an admin creates a decision, closes it, and sees the signed outcome", async ({ page, browser }) => {
  await page.goto("/signin");
  await page.getByLabel("Username").fill(ADMIN.username);
  await page.getByLabel("Password").fill(ADMIN.password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByRole("heading", { name: "Decisions", level: 1 })).toBeVisible();

  await page.getByRole("link", { name: "New decision" }).click();
  await page.getByLabel("Question").fill("Reopen the river path?");
  await page.getByLabel("Description").fill("The path along the north bank has been closed since the flood.");
  await page.getByLabel("Region").fill("north");
  await page.getByLabel("Option 1", { exact: true }).fill("reopen");
  await page.getByLabel("Option 2", { exact: true }).fill("keep closed");
  await page.getByRole("button", { name: "Add an option" }).click();
  await page.getByLabel("Option 3", { exact: true }).fill("reopen in summer");
  await expectAccessible(page, "new decision");
  await screenshot(page, "admin-create");
  await page.getByRole("button", { name: "Create decision" }).click();
  await expect(page.getByRole("heading", { name: "Reopen the river path?", level: 1 })).toBeVisible();
  const decisionId = page.url().split("/").pop()!;

  // Two voters vote; the search finds the decision.
  for (const option of [0, 2]) {
    const v = await newVoter("river");
    await call("POST", "/api/v1/voting/cast-vote", v.tokens.access_token, { decision_id: decisionId, option });
  }
  await page.goto("/?q=river+path");
  await expect(page.getByRole("list", { name: "Search results" })).toContainText("Reopen the river path?");
  await expectAccessible(page, "search");
  await screenshot(page, "decisions-search");

  await page.goto(`/decisions/${decisionId}`);
  await expect(page.getByTestId("turnout")).toHaveText("2");
  await page.getByRole("button", { name: "Close early" }).click();
  await page.getByLabel("Reason (for the audit trail)").fill("Enough votes to decide");
  await page.getByRole("button", { name: "Close now" }).click();
  // The close is checkpointed within about a second, then the result is signed: final.
  await expect(page.getByTestId("outcome")).toContainText("Tie between reopen and reopen in summer", { timeout: 30_000 });
  await expect(page.getByLabel("Signed statement")).toContainText(decisionId);
  await expectAccessible(page, "final decision");
  await screenshot(page, "decision-final");

  await page.goto("/admin/feed");
  await expect(page.getByRole("heading", { name: "Operations feed" })).toBeVisible();
  await expectAccessible(page, "operations feed");
  await screenshot(page, "admin-feed");
});

test("an admin verifies an expert; the expert's profile shows it", async ({ browser }) => {
  const expert = await newVoter("hydrologist");
  const adminTokens = await login(ADMIN.username, ADMIN.password);
  const adminContext = await signedInContext(browser, { username: ADMIN.username, tokens: adminTokens });
  const page = await adminContext.newPage();
  await page.goto("/admin/verify");
  await page.getByLabel("Account id").fill(expert.userId);
  await page.getByLabel("Weight").fill("2.5");
  await page.getByLabel("Field").fill("hydrology");
  await page.getByLabel("Regions").fill("north, delta");
  await page.getByRole("button", { name: "Verify" }).click();
  await expect(page.getByRole("status")).toContainText("is now a verified expert with weight 2.5");
  await expectAccessible(page, "verify expert");
  await screenshot(page, "admin-verify-expert");
  await adminContext.close();

  // Signed in again, the token carries the new role.
  const tokens = await login(expert.username, expert.password);
  const context = await signedInContext(browser, { ...expert, tokens });
  const mine = await context.newPage();
  await mine.goto("/profile");
  await expect(mine.getByTestId("role")).toHaveText("expert");
  await expect(mine.getByText("hydrology")).toBeVisible();
  await expect(mine.getByText(/^(north, delta|delta, north)$/)).toBeVisible();
  await screenshot(mine, "profile-expert");
  await context.close();
});
