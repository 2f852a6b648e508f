import { expect, test } from "@playwright/test";
import { admin, call, expectAccessible, newVoter, screenshot, signedInContext, unique } from "./helpers";

test("the dashboard charts readings ingested through the API and flags the spike", async ({ browser }) => {
  const root = await admin();
  const region = unique("delta");
  const sensor = unique("aq");
  await call("POST", "/api/v1/data/sensors", root.access_token, { sensor_id: sensor, region, latitude: 51.9, longitude: 4.5, metrics: ["pm25", "no2"] });
  // An hour and a half of minute readings, calm (so the sensor has a previous hour to be
  // scored against), then one far above it.
  const now = Date.now();
  const readings = Array.from({ length: 90 }, (_, i) => ({
    sensor_id: sensor,
    metric: "pm25",
    unit: "µg/m³",
    value: 12 + (i % 5) + (i === 89 ? 90 : 0),
    timestamp: now - (90 - i) * 60_000,
  }));
  const stored = await call("POST", "/api/v1/data/process-sensor-data", root.access_token, readings);
  expect(stored.accepted).toBe(90);
  // The readings are durable; wait until the region's views have windowed them all.
  const last = stored.as_of[0].offset - 1;
  await call("GET", `/api/v1/data/metrics/${region}?min_offset=${last}`, root.access_token);

  const viewer = await newVoter("viewer");
  const context = await signedInContext(browser, viewer);
  const page = await context.newPage();
  await page.goto("/dashboard");
  await page.getByLabel("Region").click();
  await page.getByRole("option", { name: new RegExp(`^${region}`) }).click();
  await expect(page.getByRole("heading", { name: `pm25 in ${region}` })).toBeVisible();
  const chart = page.getByTestId("line-chart");
  await expect(chart.locator("path.mean-line")).toHaveAttribute("d", /^M[\d.]+,[\d.]+(L[\d.]+,[\d.]+){10,}/);
  expect(await chart.locator("circle.point").count()).toBeGreaterThan(10);
  await expect(page.getByTestId("anomaly-flag")).toContainText("flagged");
  await expect(page.getByText(`${sensor} at`)).toBeVisible();
  await page.getByRole("button", { name: "1 hour" }).click();
  await expect(chart.locator("circle.point").first()).toBeVisible();
  await page.getByRole("button", { name: "1 minute" }).click();

  // A reading above the threshold in another region arrives as a live alert.
  await expect(page.getByText("Listening: a region's minute mean")).toBeVisible();
  const hot = unique("hot");
  const hotSensor = unique("aq");
  await call("POST", "/api/v1/data/sensors", root.access_token, { sensor_id: hotSensor, region: hot, latitude: 52, longitude: 5, metrics: ["pm25"] });
  await call("POST", "/api/v1/data/process-sensor-data", root.access_token, { sensor_id: hotSensor, metric: "pm25", unit: "µg/m³", value: 180, timestamp: Date.now() });
  await expect(page.getByTestId("alerts")).toContainText(`Above threshold: pm25 in ${hot}`);
  await expectAccessible(page, "dashboard");
  await screenshot(page, "dashboard");
  await context.close();
});
