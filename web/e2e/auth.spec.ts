import { expect, test } from "@playwright/test";
import { admin, createDecision, expectAccessible, newVoter, screenshot, signedInContext, unique } from "./helpers";

test("register, sign out, sign in again, claim page", async ({ page }) => {
  const root = await admin();
  await createDecision(root.access_token, {
    title: "Dredge the north channel?",
    description: "Silt has narrowed the channel; dredging would restore boat access but disturb the seagrass.",
    region: "north",
    options: ["dredge", "leave it"],
  });
  await page.goto("/");
  await expect(page).toHaveURL(/\/signin$/);
  await expect(page.getByRole("heading", { name: "Sign in" })).toBeVisible();
  await expectAccessible(page, "sign in");
  await screenshot(page, "signin");

  await page.getByRole("link", { name: "Register" }).first().click();
  const username = unique("ui");
  await page.getByLabel("Username").fill(username);
  await page.getByLabel("Password").fill("short");
  await page.getByRole("button", { name: "Register" }).click();
  await expect(page.getByRole("alert")).toContainText("weak_password");
  await expectAccessible(page, "register");
  await screenshot(page, "register");

  await page.getByLabel("Password").fill("a long voter password for tests");
  await page.getByRole("button", { name: "Register" }).click();
  await expect(page.getByRole("heading", { name: "Decisions", level: 1 })).toBeVisible();

  await page.getByRole("button", { name: "Sign out" }).click();
  await expect(page).toHaveURL(/\/signin$/);
  await page.getByLabel("Username").fill(username);
  await page.getByLabel("Password").fill("the wrong password, long");
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByRole("alert")).toContainText("bad_credentials");
  await page.getByLabel("Password").fill("a long voter password for tests");
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByRole("heading", { name: "Decisions", level: 1 })).toBeVisible();
  await expect(page.getByRole("heading", { name: "Open now" })).toBeVisible();
  await expect(page.getByRole("list", { name: "Open decisions" })).toContainText("Dredge the north channel?");
  await expectAccessible(page, "decisions");
  await screenshot(page, "decisions");

  await page.goto("/claim");
  await page.getByLabel("Invitation code").fill("NOT-A-CODE");
  await page.getByRole("button", { name: "Claim" }).click();
  await expect(page.getByRole("alert")).toContainText("invalid_invitation");
  await expectAccessible(page, "claim");
  await screenshot(page, "claim");
});

test("the profile shows role, weight and account id", async ({ browser }) => {
  const voter = await newVoter("profile");
  const context = await signedInContext(browser, voter);
  const page = await context.newPage();
  await page.goto("/profile");
  await expect(page.getByTestId("role")).toHaveText("citizen");
  await expect(page.getByTestId("user-id")).toHaveText(voter.userId);
  await expectAccessible(page, "profile");
  await screenshot(page, "profile");
  await context.close();
});
