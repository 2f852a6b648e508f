// The environmental dashboard: regions (from the sensor registry), each metric's newest
// windows, flagged sensors, a D3 chart of a metric's 1-minute or hourly trend, live alerts.
import { useEffect, useMemo, useState } from "react";
import {
  Alert,
  Box,
  Card,
  CardActionArea,
  CardContent,
  Chip,
  Grid2 as Grid,
  List,
  ListItem,
  ListItemText,
  MenuItem,
  Paper,
  Stack,
  TextField,
  ToggleButton,
  ToggleButtonGroup,
  Typography,
} from "@mui/material";
import { api } from "../api/client";
import type { RegionMetrics, Sensor, SensorAlert, Trend } from "../api/types";
import { LineChart } from "../charts/LineChart";
import { ErrorAlert, Loading, PageTitle } from "../components/common";
import { streamAlerts } from "../live/live";

const fmt = (n: number | undefined | null, digits = 1) => (n === undefined || n === null || !Number.isFinite(n) ? "–" : n.toFixed(digits));

export function Dashboard() {
  const [sensors, setSensors] = useState<Sensor[] | null>(null);
  const [region, setRegion] = useState("");
  const [metrics, setMetrics] = useState<RegionMetrics | null>(null);
  const [metric, setMetric] = useState("");
  const [bucket, setBucket] = useState<"minute" | "hour">("minute");
  const [trend, setTrend] = useState<Trend | null>(null);
  const [alerts, setAlerts] = useState<SensorAlert[]>([]);
  const [alertsOpen, setAlertsOpen] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [tick, setTick] = useState(0);

  const regions = useMemo(() => [...new Set((sensors ?? []).map((s) => s.region))].sort(), [sensors]);

  useEffect(() => {
    api
      .get<{ sensors: Sensor[] }>("/api/v1/data/sensors")
      .then((r) => {
        setSensors(r.sensors);
        const first = [...new Set(r.sensors.map((s) => s.region))].sort()[0];
        if (first) setRegion((current) => current || first);
      })
      .catch(setError);
  }, []);

  useEffect(() => {
    const t = setInterval(() => setTick((n) => n + 1), 15_000);
    return () => clearInterval(t);
  }, []);

  useEffect(() => {
    if (!region) return;
    api
      .get<RegionMetrics>(`/api/v1/data/metrics/${encodeURIComponent(region)}`)
      .then((m) => {
        setMetrics(m);
        setMetric((current) => (m.metrics.some((x) => x.metric === current) ? current : (m.metrics[0]?.metric ?? "")));
      })
      .catch(setError);
  }, [region, tick]);

  useEffect(() => {
    if (!region || !metric) {
      setTrend(null);
      return;
    }
    const q = new URLSearchParams({ region, metric, bucket });
    api.get<Trend>(`/api/v1/data/historical-trends?${q}`).then(setTrend).catch(setError);
  }, [region, metric, bucket, tick]);

  useEffect(() => {
    const ctl = new AbortController();
    void streamAlerts((a) => setAlerts((list) => [a, ...list].slice(0, 50)), ctl.signal, setAlertsOpen);
    return () => ctl.abort();
  }, []);

  const current = metrics?.metrics.find((m) => m.metric === metric);
  const flagged = useMemo(
    () => (current?.anomalies ?? []).filter((a) => a.z_flagged || a.model_flagged).map((a) => a.window_start),
    [current],
  );
  const threshold = alerts.find((a) => a.region === region && a.metric === metric)?.threshold;

  return (
    <>
      <PageTitle sub="Readings from registered sensors, windowed per minute and per hour; sensors flagged by z-score or the anomaly model.">
        Environment
      </PageTitle>
      <ErrorAlert error={error} />
      {!sensors ? (
        !error && <Loading label="Loading sensors" />
      ) : regions.length === 0 ? (
        <Alert severity="info">No sensor is registered yet.</Alert>
      ) : (
        <Stack direction={{ xs: "column", sm: "row" }} spacing={2} sx={{ mb: 3 }}>
          <TextField select label="Region" value={region} onChange={(e) => setRegion(e.target.value)} size="small" sx={{ minWidth: 200 }}>
            {regions.map((r) => (
              <MenuItem key={r} value={r}>
                {r} ({sensors.filter((s) => s.region === r).length} sensors)
              </MenuItem>
            ))}
          </TextField>
          {metrics?.model && !metrics.model.available && (
            <Typography variant="body2" color="text.secondary" sx={{ alignSelf: "center" }}>
              Anomaly model unavailable on this node: flags are by z-score only.
            </Typography>
          )}
        </Stack>
      )}

      {metrics && (
        <Grid container spacing={2} sx={{ mb: 3 }} component="ul" aria-label={`Metrics in ${region}`} style={{ listStyle: "none", padding: 0 }}>
          {metrics.metrics.map((m) => {
            const flags = m.anomalies.filter((a) => a.z_flagged || a.model_flagged);
            return (
              <Grid key={m.metric} size={{ xs: 12, sm: 6, md: 4 }} component="li">
                <Card variant="outlined" sx={{ borderColor: m.metric === metric ? "primary.main" : undefined, borderWidth: m.metric === metric ? 2 : 1 }}>
                  <CardActionArea onClick={() => setMetric(m.metric)} aria-pressed={m.metric === metric} aria-label={`Show the ${m.metric} trend`}>
                    <CardContent>
                      <Stack direction="row" sx={{ justifyContent: "space-between", alignItems: "center" }}>
                        <Typography variant="h6" component="h2">
                          {m.metric}
                        </Typography>
                        {flags.length > 0 && <Chip size="small" color="error" label={`${flags.length} flagged`} data-testid="anomaly-flag" />}
                      </Stack>
                      <Typography sx={{ fontSize: 28, fontWeight: 700 }}>
                        {fmt(m.short_window?.mean)} <Typography component="span">{m.unit}</Typography>
                      </Typography>
                      <Typography variant="body2" color="text.secondary">
                        last minute ({m.short_window?.count ?? 0} readings); hour mean {fmt(m.long_window?.mean)}, max {fmt(m.long_window?.max)}
                      </Typography>
                    </CardContent>
                  </CardActionArea>
                </Card>
              </Grid>
            );
          })}
        </Grid>
      )}

      {current && (
        <Paper variant="outlined" sx={{ p: { xs: 1.5, sm: 3 }, mb: 3 }} component="section" aria-labelledby="trend-heading">
          <Stack direction={{ xs: "column", sm: "row" }} sx={{ justifyContent: "space-between", mb: 1, gap: 1 }}>
            <Typography variant="h5" component="h2" id="trend-heading">
              {metric} in {region}
            </Typography>
            <ToggleButtonGroup exclusive size="small" value={bucket} onChange={(_, v) => v && setBucket(v)} aria-label="Window">
              <ToggleButton value="minute">1 minute</ToggleButton>
              <ToggleButton value="hour">1 hour</ToggleButton>
            </ToggleButtonGroup>
          </Stack>
          {trend && trend.points.length > 0 ? (
            <LineChart
              points={trend.points}
              unit={trend.unit}
              flagged={bucket === "minute" ? flagged : []}
              threshold={threshold}
              title={`${metric} (${trend.unit ?? ""}) in ${region}, mean per ${bucket} with its min–max range`}
            />
          ) : (
            <Typography>No windows in range yet.</Typography>
          )}
          {current.anomalies.length > 0 && (
            <Box sx={{ mt: 2 }}>
              <Typography variant="subtitle1" component="h3">
                Flagged sensors
              </Typography>
              <List dense>
                {current.anomalies.map((a) => (
                  <ListItem key={`${a.sensor_id}-${a.window_start}`} disableGutters>
                    <ListItemText
                      primary={`${a.sensor_id} at ${new Date(a.window_start).toLocaleTimeString()}`}
                      secondary={[
                        a.z_flagged ? `z-score ${fmt(a.z_max)}` : null,
                        a.model_flagged ? `model: fault ${fmt((a.p_fault ?? 0) * 100, 0)}%` : null,
                      ]
                        .filter(Boolean)
                        .join(" · ")}
                    />
                  </ListItem>
                ))}
              </List>
            </Box>
          )}
        </Paper>
      )}

      <Paper variant="outlined" sx={{ p: { xs: 1.5, sm: 3 } }} component="section" aria-labelledby="alerts-heading">
        <Typography variant="h5" component="h2" id="alerts-heading">
          Live alerts
        </Typography>
        <Typography variant="body2" color="text.secondary" sx={{ mb: 1 }}>
          {alertsOpen ? "Listening: a region's minute mean crossing a threshold shows here." : "Connecting to the alert stream…"}
        </Typography>
        <List aria-live="polite" aria-label="Alerts" data-testid="alerts">
          {alerts.length === 0 && <ListItem disableGutters>No alert since you opened this page.</ListItem>}
          {alerts.map((a, i) => (
            <ListItem key={i} disableGutters>
              <ListItemText
                primary={`${a.kind === "threshold_exceeded" ? "Above" : "Back below"} threshold: ${a.metric} in ${a.region}`}
                secondary={`${fmt(a.value)} against ${fmt(a.threshold)} · window ${new Date(a.window_start_ms).toLocaleTimeString()}`}
              />
            </ListItem>
          ))}
        </List>
      </Paper>
    </>
  );
}
