// The decision page's support panel: the consensus model's forecast of the outcome, kept
// current by the results the /voting socket pushes (each count carries a fresh forecast)
// or, while the page polls, by asking the recommendations route again when the count
// moves; and what the four analysis agents recommend from the decision's impact statement.
import { useEffect, useRef, useState } from "react";
import { Box, LinearProgress, Paper, Table, TableBody, TableCell, TableContainer, TableHead, TableRow, Typography } from "@mui/material";
import { ApiError, api } from "../api/client";
import type { Analysis, Decision, Prediction, Results } from "../api/types";
import { ErrorAlert } from "../components/common";

/** How often, at most, a polling page asks the recommendations route again. */
const REFRESH_MS = 5000;

const AGENT_NAMES: Record<string, string> = {
  "environmental-impact": "Environmental impact",
  "economic-analysis": "Economic analysis",
  "social-justice": "Social justice",
  "technical-verification": "Technical verification",
};

const percent = (p: number) => `${(p * 100).toFixed(0)}%`;
/** A table an agent could not read, without the reason after it ("indicators: …"). */
const tableOf = (missing: string) => missing.split(":")[0];

export function DecisionSupport({ decision, results, live }: { decision: Decision; results?: Results; live: boolean }) {
  const [analysis, setAnalysis] = useState<Analysis | null>(null);
  // No impact statement (or not allowed to read it): the panel shows the forecast alone.
  const [noStatement, setNoStatement] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const askedAt = useRef(0);
  const offset = results?.as_of?.offset;
  const pushed = results?.prediction;

  useEffect(() => {
    // The socket's counts bring their own forecast; asking again would only repeat it.
    if (noStatement || (live && pushed && analysis)) return;
    const wait = Math.max(0, askedAt.current + REFRESH_MS - Date.now());
    const controller = new AbortController();
    const timer = setTimeout(() => {
      askedAt.current = Date.now();
      api
        .get<Analysis>(`/api/v1/agents/recommendations/${decision.id}`, { signal: controller.signal })
        .then((a) => {
          setAnalysis(a);
          setError(null);
        })
        .catch((e) => {
          if (controller.signal.aborted) return;
          if (e instanceof ApiError && (e.code === "not_found" || e.status === 403)) setNoStatement(true);
          else setError(e);
        });
    }, wait);
    return () => {
      clearTimeout(timer);
      controller.abort();
    };
  }, [decision.id, offset, live, noStatement]); // eslint-disable-line react-hooks/exhaustive-deps

  const open = decision.status === undefined || decision.status === "open";
  const prediction: Prediction | null | undefined = pushed ?? analysis?.prediction;
  if (!analysis && !(open && prediction) && !error) return null;

  return (
    <Paper component="section" aria-labelledby="support-heading" variant="outlined" sx={{ p: { xs: 2, sm: 3 }, mb: 3 }} data-testid="decision-support">
      <Typography variant="h5" component="h2" id="support-heading" sx={{ mb: 2 }}>
        Decision support
      </Typography>
      <ErrorAlert error={error} title="The recommendations could not be read" />
      {open && (prediction ? <Forecast decision={decision} prediction={prediction} /> : analysis?.prediction_unavailable && <NoForecast reason={analysis.prediction_unavailable} />)}
      {analysis && <Recommendations decision={decision} analysis={analysis} />}
    </Paper>
  );
}

function Forecast({ decision, prediction }: { decision: Decision; prediction: Prediction }) {
  const name = (i: number) => decision.options[i] ?? `option ${i + 1}`;
  const likeliest = prediction.probabilities.reduce((best, p, i, all) => (p > all[best] ? i : best), 0);
  return (
    <Box component="section" aria-labelledby="forecast-heading" sx={{ mb: 3 }} data-testid="forecast">
      <Typography variant="h6" component="h3" id="forecast-heading" sx={{ mb: 1 }}>
        Forecast
      </Typography>
      <Typography aria-live="polite" data-testid="forecast-headline">
        Most likely at close: <strong>{name(likeliest)}</strong> ({percent(prediction.probabilities[likeliest] ?? 0)})
        {prediction.current_leader === null ? ", with no votes counted yet." : `; the count now leads with ${name(prediction.current_leader)}.`}
      </Typography>
      <Box component="ul" aria-label="Chance of winning at close" sx={{ listStyle: "none", p: 0, my: 1.5 }}>
        {prediction.probabilities.map((p, i) => (
          <Box component="li" key={i} sx={{ display: "grid", gridTemplateColumns: { xs: "1fr 3.5em", sm: "12em 1fr 3.5em" }, gap: 1, alignItems: "center", mb: 0.5 }}>
            <span>{name(i)}</span>
            <LinearProgress variant="determinate" value={p * 100} aria-hidden sx={{ display: { xs: "none", sm: "block" }, height: 8, borderRadius: 1 }} />
            <Box component="span" sx={{ textAlign: "right" }} data-testid={`forecast-${i}`}>
              {percent(p)}
            </Box>
          </Box>
        ))}
      </Box>
      <Typography variant="body2" color="text.secondary">
        Model {prediction.model_version}, from the count so far ({percent(prediction.elapsed)} of the voting window gone) and the agents' scores. A
        forecast, not a result.
      </Typography>
    </Box>
  );
}

function NoForecast({ reason }: { reason: string }) {
  return (
    <Typography variant="body2" color="text.secondary" sx={{ mb: 2 }} data-testid="forecast-unavailable">
      No forecast on this node: {reason}
    </Typography>
  );
}

function Recommendations({ decision, analysis }: { decision: Decision; analysis: Analysis }) {
  const name = (i: number) => decision.options[i] ?? `option ${i + 1}`;
  const { consensus } = analysis;
  return (
    <Box component="section" aria-labelledby="agents-heading">
      <Typography variant="h6" component="h3" id="agents-heading" sx={{ mb: 1 }}>
        What the analysis agents recommend
      </Typography>
      <Typography sx={{ mb: 1 }} data-testid="agents-consensus">
        Together they favour <strong>{name(consensus.recommended)}</strong> ({consensus.agreeing} of {analysis.assessments.length} agree).
      </Typography>
      <TableContainer tabIndex={0} role="region" aria-label="Agents' recommendations, scrollable">
        <Table size="small" data-testid="recommendations">
          <caption>Each agent scores every option from the impact statement and the region's data from −1 (worst) to 1 (best).</caption>
          <TableHead>
            <TableRow>
              <TableCell scope="col">Agent</TableCell>
              <TableCell scope="col">Recommends</TableCell>
              {decision.options.map((o) => (
                <TableCell key={o} scope="col" align="right">
                  {o}
                </TableCell>
              ))}
              <TableCell scope="col">Notes</TableCell>
            </TableRow>
          </TableHead>
          <TableBody>
            {analysis.assessments.map((a) => (
              <TableRow key={a.agent}>
                <TableCell component="th" scope="row">
                  {AGENT_NAMES[a.agent] ?? a.agent}
                  <Typography component="span" variant="body2" color="text.secondary" sx={{ display: "block" }}>
                    v{a.version}
                  </Typography>
                </TableCell>
                <TableCell>{name(a.recommended)}</TableCell>
                {decision.options.map((_, o) => {
                  const s = a.scores.find((x) => x.option === o);
                  return (
                    <TableCell key={o} align="right">
                      {s ? s.score.toFixed(2) : "—"}
                    </TableCell>
                  );
                })}
                <TableCell>
                  {a.findings.length === 0 && a.missing.length === 0
                    ? "—"
                    : [...a.findings.slice(0, 3).map((f) => f.message), ...(a.missing.length ? [`could not read ${a.missing.map(tableOf).join(", ")}`] : [])].join("; ")}
                </TableCell>
              </TableRow>
            ))}
          </TableBody>
        </Table>
      </TableContainer>
    </Box>
  );
}
