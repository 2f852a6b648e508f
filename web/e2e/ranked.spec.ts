import { expect, test } from "@playwright/test";
import { admin, call, createDecision, expectAccessible, newVoter, screenshot, signedInContext } from "./helpers";

test("a ranked-choice decision shows its instant-runoff rounds; the ranking is built with the keyboard", async ({ browser }) => {
  const root = await admin();
  const decision = await createDecision(root.access_token, {
    title: "Rank the flood plans",
    options: ["retreat", "wall", "marsh"],
    method: "ranked_choice",
  });
  // First preferences: wall 2, marsh 2 (3 with the ballot below), retreat 1, whose second
  // is marsh: retreat goes out first, its vote moves to marsh, and marsh wins.
  for (const ranking of [[1, 2], [1, 0], [2, 1], [2], [0, 2]]) {
    const v = await newVoter("ranker");
    await call("POST", "/api/v1/voting/cast-vote", v.tokens.access_token, { decision_id: decision.id, ranking });
  }
  const voter = await newVoter("keys");
  const context = await signedInContext(browser, voter);
  const page = await context.newPage();
  await page.goto(`/decisions/${decision.id}`);

  // Add retreat, then marsh, then move marsh up: all by keyboard.
  await page.getByRole("button", { name: "Add retreat to your ranking" }).focus();
  await page.keyboard.press("Enter");
  await page.getByRole("button", { name: "Add marsh to your ranking" }).focus();
  await page.keyboard.press("Enter");
  await page.getByRole("button", { name: "Move marsh up" }).focus();
  await page.keyboard.press("Enter");
  await expect(page.getByRole("button", { name: "Move marsh down" })).toBeFocused();
  await expect(page.getByTestId("ranked-item")).toHaveText([/marsh/, /retreat/]);
  await expectAccessible(page, "ranked ballot");
  await page.getByRole("button", { name: "Cast my vote" }).click();
  await expect(page.getByTestId("receipt")).toBeVisible();

  const rounds = page.getByTestId("rounds");
  await expect(page.getByTestId("turnout")).toHaveText("6");
  expect(await rounds.locator("tbody tr").count()).toBeGreaterThanOrEqual(2);
  await expect(rounds.locator("tbody tr").first()).toContainText("retreat"); // eliminated in round 1
  await expect(page.getByTestId("leading")).toContainText("marsh wins");
  await expectAccessible(page, "ranked results");
  await screenshot(page, "decision-ranked");
  await context.close();
});

test("a quadratic ballot spends credits within the budget", async ({ browser }) => {
  const root = await admin();
  const decision = await createDecision(root.access_token, {
    title: "Fund the restoration projects",
    options: ["reedbeds", "fish ladder", "tree nursery"],
    method: "quadratic",
    credits: 10,
  });
  const voter = await newVoter("quad");
  const context = await signedInContext(browser, voter);
  const page = await context.newPage();
  await page.goto(`/decisions/${decision.id}`);
  const more = page.getByRole("button", { name: /One vote more for reedbeds/ });
  await more.click();
  await more.click();
  await more.click();
  await expect(page.getByTestId("credits")).toHaveText("9 of 10 credits spent, 1 left");
  await expect(more).toBeDisabled(); // a fourth vote would cost 7 more
  await page.getByRole("button", { name: /One vote more for fish ladder/ }).click();
  await expect(page.getByTestId("credits")).toHaveText("10 of 10 credits spent, 0 left");
  await expectAccessible(page, "quadratic ballot");
  await screenshot(page, "decision-quadratic");
  await page.getByRole("button", { name: "Cast my vote" }).click();
  await expect(page.getByTestId("receipt")).toBeVisible();
  await expect(page.getByTestId("turnout")).toHaveText("1");
  await context.close();
});
