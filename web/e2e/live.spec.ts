import { expect, test, type Browser } from "@playwright/test";
import { admin, createDecision, expectAccessible, newVoter, screenshot, signedInContext, socketServerUp } from "./helpers";

/**
 * Two voters in two browsers on one decision page: A casts through the ballot, and B's page
 * shows the new turnout within `within` ms of A's receipt, without reloading.
 */
async function twoVoters(browser: Browser, within: number, blockSocket: boolean) {
  const root = await admin();
  const decision = await createDecision(root.access_token, { title: `Restore the wetland? ${Date.now()}`, options: ["yes", "no", "later"] });
  const [a, b] = [await newVoter("alice"), await newVoter("bob")];
  const ctxA = await signedInContext(browser, a);
  const ctxB = await signedInContext(browser, b);
  const pageA = await ctxA.newPage();
  const pageB = await ctxB.newPage();
  if (blockSocket) await pageB.routeWebSocket(/socket\.io/, (ws) => ws.close());
  await pageB.goto(`/decisions/${decision.id}`);
  await pageA.goto(`/decisions/${decision.id}`);
  await expect(pageB.getByTestId("turnout")).toHaveText("0");
  if (blockSocket) await expect(pageB.getByTestId("live-mode")).toContainText("every 2 seconds");

  await pageA.getByRole("radio", { name: "no" }).check();
  await pageA.getByRole("button", { name: "Cast my vote" }).click();
  await expect(pageA.getByTestId("receipt")).toBeVisible();
  const castAt = Date.now();
  await expect(pageB.getByTestId("turnout")).toHaveText("1", { timeout: within });
  const seenAfter = Date.now() - castAt;
  await expect(pageB.getByTestId("leading")).toContainText("no wins");
  return { pageA, pageB, ctxA, ctxB, seenAfter };
}

test("a vote shows on another voter's open page within a second (socket)", async ({ browser }) => {
  // The node's socket.io server (/voting namespace) is being built in parallel; until it
  // answers, this is fixme and the polling test below proves the fallback.
  test.fixme(!(await socketServerUp()), "no socket.io server on the node yet");
  const { ctxA, ctxB, pageB } = await twoVoters(browser, 1000, false);
  await expect(pageB.getByTestId("live-mode")).toContainText("Live");
  await ctxA.close();
  await ctxB.close();
});

test("without a socket the page polls the results every 2 s and shows the vote", async ({ browser }) => {
  const { pageA, pageB, ctxA, ctxB, seenAfter } = await twoVoters(browser, 3000, true);
  test.info().annotations.push({ type: "seen after", description: `${seenAfter} ms` });
  await expect(pageB.getByTestId("breakdown")).toContainText("1 (100%)");
  await expectAccessible(pageB, "decision page (results)");
  await screenshot(pageB, "decision-results");
  await expectAccessible(pageA, "decision page (receipt)");
  await screenshot(pageA, "decision-receipt");
  await ctxA.close();
  await ctxB.close();
});

test("a voter changes their vote; the page works on a phone", async ({ browser }) => {
  const root = await admin();
  const decision = await createDecision(root.access_token, { title: "Plant which trees along the river?", options: ["willow", "alder", "poplar"], method: "approval" });
  const voter = await newVoter("phone");
  const ctx = await signedInContext(browser, voter, { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const page = await ctx.newPage();
  await page.goto(`/decisions/${decision.id}`);
  await page.getByRole("checkbox", { name: "willow" }).check();
  await page.getByRole("checkbox", { name: "alder" }).check();
  await expectAccessible(page, "approval ballot on a phone");
  await screenshot(page, "decision-phone-approval");
  await page.getByRole("button", { name: "Cast my vote" }).click();
  await expect(page.getByTestId("receipt")).toBeVisible();
  await expect(page.getByTestId("turnout")).toHaveText("1");
  await page.getByRole("button", { name: "Change my vote" }).click();
  await page.getByRole("checkbox", { name: "willow" }).uncheck();
  await page.getByRole("button", { name: "Cast my new vote" }).click();
  await expect(page.getByTestId("receipt")).toContainText("Your vote is recorded");
  await expect(page.getByTestId("turnout")).toHaveText("1");
  await page.getByRole("button", { name: "Open menu" }).click();
  await expect(page.getByRole("link", { name: "My votes" })).toBeVisible();
  await screenshot(page, "menu-phone");
  await ctx.close();
});
