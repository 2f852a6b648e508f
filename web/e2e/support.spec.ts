import { expect, test } from "@playwright/test";
import { admin, call, createDecision, expectAccessible, newVoter, screenshot, signedInContext } from "./helpers";

// The node loads the consensus model when it has ONNX Runtime (scripts/test gives it one);
// without it the panel must say why there is no forecast.
const withModel = !!process.env.ORT_DYLIB_PATH;

const statement = {
  plans: [
    {
      option: 0,
      summary: "a low-emission zone in the centre",
      effects: [{ metric: "pm25", change_percent: -20, certainty: 0.8 }],
      cost_usd: 2_000_000,
      budget_usd: 2_500_000,
      annual_benefit_usd: 400_000,
      jobs_created: 25,
      timeline_months: 18,
      permits: [{ name: "traffic", status: "granted" }],
      distribution: [
        { region: "north", income_group: "low", cost_share: 0.2, benefit_share: 0.5 },
        { region: "north", income_group: "high", cost_share: 0.8, benefit_share: 0.5 },
      ],
    },
  ],
};

test("the decision page shows the agents' recommendations and a forecast the votes move, live and polling", async ({ browser }) => {
  const root = await admin();
  const decision = await createDecision(root.access_token, { title: `A low-emission zone? ${Date.now()}`, region: "north", options: ["adopt", "reject"], impact_statement: statement });
  const [watcher, poller, voter] = [await newVoter("watcher"), await newVoter("poller"), await newVoter("caster")];
  const live = await (await signedInContext(browser, watcher)).newPage();
  const polling = await (await signedInContext(browser, poller)).newPage();
  await polling.routeWebSocket(/socket\.io/, (ws) => ws.close());
  await live.goto(`/decisions/${decision.id}`);
  await polling.goto(`/decisions/${decision.id}`);
  await expect(live.getByTestId("live-mode")).toContainText("Live");
  await expect(polling.getByTestId("live-mode")).toContainText("every 2 seconds");

  for (const page of [live, polling]) {
    const support = page.getByTestId("decision-support");
    await expect(support.getByRole("heading", { name: "Decision support" })).toBeVisible();
    // One row per agent, with the option it recommends and its version.
    const rows = support.getByTestId("recommendations").locator("tbody tr");
    await expect(rows).toHaveCount(4);
    for (const agent of ["Environmental impact", "Economic analysis", "Social justice", "Technical verification"])
      await expect(rows.filter({ hasText: agent })).toContainText(/v\d+\.\d+\.\d+/);
    await expect(support.getByTestId("agents-consensus")).toContainText(/Together they favour (adopt|reject) \([0-4] of 4 agree\)/);
    if (withModel) await expect(support.getByTestId("forecast-headline")).toContainText("no votes counted yet");
    else await expect(support.getByTestId("forecast-unavailable")).toContainText("No forecast");
  }

  // A vote for "reject" moves the forecast on both pages: pushed with the count on the
  // socket, read again from the recommendations route by the polling page.
  await call("POST", "/api/v1/voting/cast-vote", voter.tokens.access_token, { decision_id: decision.id, option: 1 });
  await expect(live.getByTestId("turnout")).toHaveText("1");
  if (withModel) {
    await expect(live.getByTestId("forecast-headline")).toContainText("the count now leads with reject", { timeout: 3000 });
    await expect(polling.getByTestId("forecast-headline")).toContainText("the count now leads with reject", { timeout: 12_000 });
    const chances = await Promise.all([0, 1].map(async (i) => parseInt((await live.getByTestId(`forecast-${i}`).innerText()).replace("%", ""), 10)));
    // The two chances are a distribution (rounded to whole percents).
    expect(Math.abs(chances[0] + chances[1] - 100)).toBeLessThanOrEqual(1);
    await expect(live.getByTestId("forecast")).toContainText(/Model consensus-\d/);
  }
  await expectAccessible(live, "decision support");
  await screenshot(live, "decision-support");
  await live.context().close();
  await polling.context().close();
});

test("a decision without an impact statement gets a forecast but no recommendations", async ({ browser }) => {
  const root = await admin();
  const decision = await createDecision(root.access_token, { title: `No statement ${Date.now()}`, options: ["yes", "no"] });
  const [watcher, voter] = [await newVoter("plain"), await newVoter("plain-caster")];
  const page = await (await signedInContext(browser, watcher)).newPage();
  await page.goto(`/decisions/${decision.id}`);
  await expect(page.getByTestId("live-mode")).toContainText("Live");
  await call("POST", "/api/v1/voting/cast-vote", voter.tokens.access_token, { decision_id: decision.id, option: 1 });
  await expect(page.getByTestId("turnout")).toHaveText("1");
  if (withModel) await expect(page.getByTestId("forecast-headline")).toContainText("the count now leads with no");
  else await expect(page.getByTestId("decision-support")).toHaveCount(0);
  await expect(page.getByTestId("recommendations")).toHaveCount(0);
  await page.context().close();
});
