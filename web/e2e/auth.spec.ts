import { expect, test } from "@playwright/test";
import { admin, createDecision, expectAccessible, newVoter, screenshot, signedInContext, totpCode, unique } from "./helpers";

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

test("two-factor sign-in: set up on the profile, then asked for at sign-in", async ({ browser }) => {
  const voter = await newVoter("twofactor");
  const context = await signedInContext(browser, voter);
  const page = await context.newPage();
  await page.goto("/profile");
  await page.getByLabel("Your password").fill(voter.password);
  await page.getByRole("button", { name: "Set up two-factor sign-in" }).click();
  const secret = (await page.getByTestId("totp-secret").textContent())!.trim();
  await expectAccessible(page, "two-factor set-up");
  await screenshot(page, "two-factor");
  // A wrong code turns nothing on.
  const right = totpCode(secret);
  await page.getByLabel("Code from the app").fill(right === "000000" ? "000001" : "000000");
  await page.getByRole("button", { name: "Turn on" }).click();
  await expect(page.getByRole("alert")).toContainText("bad_credentials");
  await page.getByLabel("Code from the app").fill(totpCode(secret));
  await page.getByRole("button", { name: "Turn on" }).click();
  await expect(page.getByTestId("twofactor-on")).toBeVisible();
  await expect(page.getByTestId("recovery-codes").getByRole("listitem")).toHaveCount(10);
  const recovery = (await page.getByTestId("recovery-codes").getByRole("listitem").first().textContent())!.trim();

  // The password alone no longer signs in; with the app's code, or a recovery code, it does.
  await page.getByRole("button", { name: "Sign out" }).click();
  await expect(page).toHaveURL(/\/signin$/);
  await page.getByLabel("Username").fill(voter.username);
  await page.getByLabel("Password").fill(voter.password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByRole("alert")).toContainText("bad_credentials");
  await page.getByRole("button", { name: "I use two-factor authentication" }).click();
  // A code works once: the one that turned 2FA on is spent, so the app's next one (the
  // node allows a step of drift) signs in.
  await page.getByLabel("Authenticator code or recovery code").fill(totpCode(secret, Date.now() + 30_000));
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByRole("heading", { name: "Decisions", level: 1 })).toBeVisible();
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("Username").fill(voter.username);
  await page.getByLabel("Password").fill(voter.password);
  await page.getByRole("button", { name: "I use two-factor authentication" }).click();
  await page.getByLabel("Authenticator code or recovery code").fill(recovery);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByRole("heading", { name: "Decisions", level: 1 })).toBeVisible();
  await context.close();
});
