// Open decisions, and a search over all of them.
import { useEffect, useState, type FormEvent } from "react";
import { Link as RouterLink, useSearchParams } from "react-router-dom";
import { Box, Button, Card, CardActionArea, CardContent, Chip, Grid2 as Grid, MenuItem, Pagination, Stack, TextField, Typography } from "@mui/material";
import { api } from "../api/client";
import type { Decision, Page } from "../api/types";
import { ErrorAlert, Loading, PageTitle, formatMicros, methodNames } from "../components/common";

export function StatusChip({ status }: { status?: string }) {
  if (!status) return null;
  const color = status === "open" ? "success" : status === "final" ? "primary" : status === "cancelled" ? "error" : "default";
  return <Chip size="small" label={status} color={color as "success"} variant={status === "open" || status === "final" ? "filled" : "outlined"} />;
}

function DecisionCard({ d }: { d: Decision }) {
  return (
    <Card variant="outlined" sx={{ height: "100%" }}>
      <CardActionArea component={RouterLink} to={`/decisions/${d.id}`} sx={{ height: "100%", alignItems: "flex-start" }}>
        <CardContent>
          <Stack direction="row" spacing={1} sx={{ mb: 1, flexWrap: "wrap", gap: 0.5 }}>
            <StatusChip status={d.status ?? "open"} />
            <Chip size="small" variant="outlined" label={methodNames[d.method] ?? d.method} />
            {d.region && <Chip size="small" variant="outlined" label={d.region} />}
          </Stack>
          <Typography variant="h6" component="h3">
            {d.title}
          </Typography>
          {d.description && (
            <Typography color="text.secondary" sx={{ mt: 0.5, display: "-webkit-box", WebkitLineClamp: 2, WebkitBoxOrient: "vertical", overflow: "hidden" }}>
              {d.description}
            </Typography>
          )}
          <Typography variant="body2" sx={{ mt: 1 }}>
            {d.options.length} options · closes {formatMicros(d.closes_at)}
          </Typography>
        </CardContent>
      </CardActionArea>
    </Card>
  );
}

function DecisionGrid({ decisions, label }: { decisions: Decision[]; label: string }) {
  return (
    <Grid container spacing={2} component="ul" aria-label={label} sx={{ listStyle: "none", p: 0, m: 0 }}>
      {decisions.map((d) => (
        <Grid key={d.id} size={{ xs: 12, sm: 6, md: 4 }} component="li">
          <DecisionCard d={d} />
        </Grid>
      ))}
    </Grid>
  );
}

export function Decisions() {
  const [params, setParams] = useSearchParams();
  const [active, setActive] = useState<Decision[] | null>(null);
  const [found, setFound] = useState<Page<Decision> | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [q, setQ] = useState(params.get("q") ?? "");
  const [region, setRegion] = useState(params.get("region") ?? "");
  const [status, setStatus] = useState(params.get("status") ?? "");
  const searching = ["q", "region", "status", "page"].some((k) => params.get(k));

  useEffect(() => {
    api
      .get<Decision[]>("/api/v1/voting/active-decisions")
      .then((list) => setActive(list.map((d) => ({ ...d, status: d.status ?? "open" }))))
      .catch(setError);
  }, []);

  useEffect(() => {
    if (!searching) {
      setFound(null);
      return;
    }
    const query = new URLSearchParams();
    for (const k of ["q", "region", "status", "page"]) if (params.get(k)) query.set(k, params.get(k)!);
    setError(null);
    api.get<Page<Decision>>(`/api/v1/voting/decisions?${query}`).then(setFound).catch(setError);
  }, [params, searching]);

  const search = (e: FormEvent) => {
    e.preventDefault();
    const next = new URLSearchParams();
    if (q.trim()) next.set("q", q.trim());
    if (region.trim()) next.set("region", region.trim());
    if (status) next.set("status", status);
    setParams(next);
  };

  return (
    <>
      <PageTitle sub="Vote on what is open now, or search every decision.">Decisions</PageTitle>
      <Box component="form" role="search" aria-label="Search decisions" onSubmit={search} sx={{ mb: 3 }}>
        <Stack direction={{ xs: "column", sm: "row" }} spacing={1.5}>
          <TextField label="Words" value={q} onChange={(e) => setQ(e.target.value)} size="small" sx={{ flexGrow: 1 }} inputProps={{ maxLength: 200 }} />
          <TextField label="Region" value={region} onChange={(e) => setRegion(e.target.value)} size="small" />
          <TextField select label="Status" value={status} onChange={(e) => setStatus(e.target.value)} size="small" sx={{ minWidth: 140 }}>
            <MenuItem value="">any</MenuItem>
            {["scheduled", "open", "closed", "final", "cancelled"].map((s) => (
              <MenuItem key={s} value={s}>
                {s}
              </MenuItem>
            ))}
          </TextField>
          <Button type="submit" variant="contained">
            Search
          </Button>
          {searching && (
            <Button onClick={() => setParams(new URLSearchParams())} variant="text">
              Clear
            </Button>
          )}
        </Stack>
      </Box>
      <ErrorAlert error={error} />
      {searching ? (
        <section aria-labelledby="found-heading">
          <Typography variant="h5" component="h2" id="found-heading" sx={{ mb: 1.5 }}>
            {found ? `${found.total} found` : "Searching"}
          </Typography>
          {found ? <DecisionGrid decisions={found.decisions ?? []} label="Search results" /> : <Loading label="Searching" />}
          {found && found.total > found.per_page && (
            <Pagination
              sx={{ mt: 2 }}
              count={Math.ceil(found.total / found.per_page)}
              page={found.page}
              onChange={(_, page) => {
                const next = new URLSearchParams(params);
                next.set("page", String(page));
                setParams(next);
              }}
            />
          )}
        </section>
      ) : (
        <section aria-labelledby="active-heading">
          <Typography variant="h5" component="h2" id="active-heading" sx={{ mb: 1.5 }}>
            Open now
          </Typography>
          {!active ? (
            <Loading label="Loading decisions" />
          ) : active.length === 0 ? (
            <Typography>No decision is open right now.</Typography>
          ) : (
            <DecisionGrid decisions={active} label="Open decisions" />
          )}
        </section>
      )}
    </>
  );
}
