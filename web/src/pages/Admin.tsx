// For operators and admins: create a decision, verify an expert or stakeholder, and the
// operations feed (/admin socket: stats and alerts; the alert stream until it exists).
import { useEffect, useState, type FormEvent } from "react";
import { Link as RouterLink, useNavigate } from "react-router-dom";
import {
  Alert,
  Box,
  Button,
  IconButton,
  Link,
  List,
  ListItem,
  ListItemText,
  MenuItem,
  Paper,
  Stack,
  TextField,
  Typography,
} from "@mui/material";
import { api } from "../api/client";
import type { Decision, Method, SensorAlert } from "../api/types";
import { ErrorAlert, PageTitle, methodNames } from "../components/common";
import { streamAlerts, watchAdmin } from "../live/live";

/** A `datetime-local` value (local time) for a Date. */
function localInput(d: Date): string {
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
const toMicros = (local: string) => new Date(local).getTime() * 1000;

export function CreateDecision() {
  const navigate = useNavigate();
  const [title, setTitle] = useState("");
  const [description, setDescription] = useState("");
  const [region, setRegion] = useState("");
  const [options, setOptions] = useState<string[]>(["", ""]);
  const [method, setMethod] = useState<Method>("single_choice");
  const [credits, setCredits] = useState(100);
  const [quorum, setQuorum] = useState(1);
  const [opensAt, setOpensAt] = useState("");
  const [closesAt, setClosesAt] = useState(localInput(new Date(Date.now() + 7 * 86400_000)));
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const body: Record<string, unknown> = {
        title: title.trim(),
        description: description.trim(),
        region: region.trim(),
        options: options.map((o) => o.trim()).filter(Boolean),
        method,
        quorum,
        closes_at: toMicros(closesAt),
      };
      if (opensAt) body.opens_at = toMicros(opensAt);
      if (method === "quadratic") body.credits = credits;
      const d = await api.post<Decision>("/api/v1/voting/decision/create", body);
      navigate(`/decisions/${d.id}`);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <Box sx={{ maxWidth: 720 }}>
      <PageTitle sub="Voters see it in the open decisions once its window opens.">New decision</PageTitle>
      <form onSubmit={submit}>
        <Stack spacing={2}>
          <TextField label="Question" value={title} onChange={(e) => setTitle(e.target.value)} required />
          <TextField label="Description" value={description} onChange={(e) => setDescription(e.target.value)} multiline minRows={3} />
          <Stack direction={{ xs: "column", sm: "row" }} spacing={2}>
            <TextField label="Region" value={region} onChange={(e) => setRegion(e.target.value)} sx={{ flexGrow: 1 }} />
            <TextField select label="Voting method" value={method} onChange={(e) => setMethod(e.target.value as Method)} sx={{ minWidth: 200 }}>
              {Object.entries(methodNames).map(([k, v]) => (
                <MenuItem key={k} value={k}>
                  {v}
                </MenuItem>
              ))}
            </TextField>
            {method === "quadratic" && (
              <TextField label="Credits per voter" type="number" value={credits} onChange={(e) => setCredits(Number(e.target.value))} inputProps={{ min: 1, max: 10000 }} />
            )}
          </Stack>
          <Box component="fieldset" sx={{ border: 0, p: 0, m: 0 }}>
            <Typography component="legend" variant="subtitle1" sx={{ mb: 1 }}>
              Options
            </Typography>
            <Stack spacing={1}>
              {options.map((o, i) => (
                <Stack key={i} direction="row" spacing={1}>
                  <TextField
                    label={`Option ${i + 1}`}
                    value={o}
                    onChange={(e) => setOptions(options.map((x, j) => (j === i ? e.target.value : x)))}
                    fullWidth
                    size="small"
                  />
                  <IconButton aria-label={`Remove option ${i + 1}`} disabled={options.length <= 2} onClick={() => setOptions(options.filter((_, j) => j !== i))}>
                    ✕
                  </IconButton>
                </Stack>
              ))}
              <Button onClick={() => setOptions([...options, ""])} sx={{ alignSelf: "flex-start" }}>
                Add an option
              </Button>
            </Stack>
          </Box>
          <Stack direction={{ xs: "column", sm: "row" }} spacing={2}>
            <TextField
              label="Opens"
              type="datetime-local"
              value={opensAt}
              onChange={(e) => setOpensAt(e.target.value)}
              helperText="Empty: now"
              slotProps={{ inputLabel: { shrink: true } }}
            />
            <TextField label="Closes" type="datetime-local" value={closesAt} onChange={(e) => setClosesAt(e.target.value)} required slotProps={{ inputLabel: { shrink: true } }} />
            <TextField label="Quorum (votes)" type="number" value={quorum} onChange={(e) => setQuorum(Number(e.target.value))} inputProps={{ min: 0 }} />
          </Stack>
          <ErrorAlert error={error} title="The decision was not created" />
          <Button type="submit" variant="contained" disabled={busy || !title.trim() || options.filter((o) => o.trim()).length < 2}>
            {busy ? "Creating…" : "Create decision"}
          </Button>
        </Stack>
      </form>
    </Box>
  );
}

export function VerifyExpert() {
  const [userId, setUserId] = useState("");
  const [role, setRole] = useState("expert");
  const [weight, setWeight] = useState("1.5");
  const [field, setField] = useState("");
  const [regions, setRegions] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [done, setDone] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    setDone(null);
    try {
      await api.post("/api/v1/auth/verify-expert", {
        user_id: userId.trim(),
        role,
        weight: Number(weight),
        ...(field.trim() ? { field: field.trim() } : {}),
        regions: regions
          .split(",")
          .map((r) => r.trim())
          .filter(Boolean),
      });
      setDone(`${userId.trim()} is now a verified ${role} with weight ${weight}.`);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <Box sx={{ maxWidth: 640 }}>
      <PageTitle sub="The person finds their account id on their profile page. Their next sign-in carries the new role and weight.">
        Verify an expert or stakeholder
      </PageTitle>
      <form onSubmit={submit}>
        <Stack spacing={2}>
          <TextField label="Account id" value={userId} onChange={(e) => setUserId(e.target.value)} required inputProps={{ spellCheck: false }} />
          <Stack direction={{ xs: "column", sm: "row" }} spacing={2}>
            <TextField select label="Role" value={role} onChange={(e) => setRole(e.target.value)} sx={{ minWidth: 180 }}>
              <MenuItem value="expert">expert</MenuItem>
              <MenuItem value="stakeholder">stakeholder</MenuItem>
              <MenuItem value="citizen">citizen</MenuItem>
            </TextField>
            <TextField label="Weight" type="number" value={weight} onChange={(e) => setWeight(e.target.value)} inputProps={{ min: 0, step: 0.1 }} required />
          </Stack>
          <TextField label="Field" value={field} onChange={(e) => setField(e.target.value)} helperText="e.g. hydrology" />
          <TextField label="Regions" value={regions} onChange={(e) => setRegions(e.target.value)} helperText="Comma-separated; stakeholders vote only in their regions" />
          <ErrorAlert error={error} title="Not verified" />
          {done && (
            <Alert severity="success" role="status">
              {done}
            </Alert>
          )}
          <Button type="submit" variant="contained" disabled={busy || !userId.trim()}>
            Verify
          </Button>
        </Stack>
      </form>
    </Box>
  );
}

export function AdminFeed() {
  const [stats, setStats] = useState<Record<string, unknown> | null>(null);
  const [alerts, setAlerts] = useState<(SensorAlert & { via: string; at: number })[]>([]);
  const [socketUp, setSocketUp] = useState(false);
  const [streamUp, setStreamUp] = useState(false);

  useEffect(() => {
    const add = (via: string) => (a: SensorAlert) => setAlerts((list) => [{ ...a, via, at: Date.now() }, ...list].slice(0, 100));
    const stop = watchAdmin(setStats, add("socket"), setSocketUp);
    const ctl = new AbortController();
    void streamAlerts(add("stream"), ctl.signal, setStreamUp);
    return () => {
      stop();
      ctl.abort();
    };
  }, []);

  return (
    <>
      <PageTitle sub={socketUp ? "Live from the node's /admin channel." : "The /admin live channel is not connected; alerts come from the alert stream."}>
        Operations feed
      </PageTitle>
      <Paper variant="outlined" sx={{ p: { xs: 2, sm: 3 }, mb: 3 }} component="section" aria-labelledby="stats-heading">
        <Typography variant="h5" component="h2" id="stats-heading" sx={{ mb: 1 }}>
          Node statistics
        </Typography>
        {stats ? (
          <dl className="facts" data-testid="stats">
            {Object.entries(stats).map(([k, v]) => (
              <div key={k} style={{ display: "contents" }}>
                <dt>{k}</dt>
                <dd>{typeof v === "object" ? JSON.stringify(v) : String(v)}</dd>
              </div>
            ))}
          </dl>
        ) : (
          <Typography>{socketUp ? "Waiting for the first statistics…" : "Statistics arrive over the /admin channel once the node offers it."}</Typography>
        )}
        <Typography variant="body2" sx={{ mt: 1 }}>
          Health: <Link href="/readyz">readiness</Link> · <Link component={RouterLink} to="/admin/create">new decision</Link>
        </Typography>
      </Paper>
      <Paper variant="outlined" sx={{ p: { xs: 2, sm: 3 } }} component="section" aria-labelledby="admin-alerts-heading">
        <Typography variant="h5" component="h2" id="admin-alerts-heading">
          Sensor alerts
        </Typography>
        <Typography variant="body2" color="text.secondary">
          {streamUp || socketUp ? "Listening." : "Connecting…"}
        </Typography>
        <List aria-live="polite" aria-label="Sensor alerts">
          {alerts.length === 0 && <ListItem disableGutters>No alert since you opened this page.</ListItem>}
          {alerts.map((a, i) => (
            <ListItem key={i} disableGutters>
              <ListItemText
                primary={`${a.kind}: ${a.metric} in ${a.region} (${a.value.toFixed(1)} / ${a.threshold})`}
                secondary={`${new Date(a.at).toLocaleTimeString()} via ${a.via}`}
              />
            </ListItem>
          ))}
        </List>
      </Paper>
    </>
  );
}
