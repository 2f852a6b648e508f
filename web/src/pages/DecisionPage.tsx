// One decision: its question, your ballot and receipt, live results with the forecast and
// the agents' recommendations, the breakdown, the rounds of a ranked-choice count, and the
// signed outcome once final.
import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import { Link as RouterLink, useParams } from "react-router-dom";
import {
  Alert,
  Box,
  Button,
  Chip,
  Dialog,
  DialogActions,
  DialogContent,
  DialogTitle,
  Link,
  Paper,
  Stack,
  Table,
  TableBody,
  TableCell,
  TableContainer,
  TableHead,
  TableRow,
  TextField,
  Typography,
} from "@mui/material";
import { ApiError, api } from "../api/client";
import type { Ballot, Breakdown, Decision, MyVote, Page, Receipt, Results } from "../api/types";
import { BarChart } from "../charts/BarChart";
import { ErrorAlert, Loading, PageTitle, formatMicros, methodNames } from "../components/common";
import { requestBreakdown, watchDecision } from "../live/live";
import { can, noticed, receiptKept, resultsReceived, useAppDispatch, useAppSelector } from "../store";
import { BallotForm, ballotBody, ballotReady, describeBallot } from "./Ballot";
import { DecisionSupport } from "./DecisionSupport";
import { StatusChip } from "./Decisions";

const COMPONENTS = ["democratic", "expert", "community", "environmental"];

function Section({ title, id, children }: { title: string; id: string; children: React.ReactNode }) {
  return (
    <Paper component="section" aria-labelledby={id} variant="outlined" sx={{ p: { xs: 2, sm: 3 }, mb: 3 }}>
      <Typography variant="h5" component="h2" id={id} sx={{ mb: 2 }}>
        {title}
      </Typography>
      {children}
    </Paper>
  );
}

function outcomeText(d: Decision, o?: { kind: string; option?: number; options?: number[] }) {
  if (!o) return "";
  const name = (i: number) => d.options[i] ?? `option ${i + 1}`;
  if (o.kind === "winner" && o.option !== undefined) return `${name(o.option)} wins`;
  if (o.kind === "tie") return `Tie between ${(o.options ?? []).map(name).join(" and ")}`;
  if (o.kind === "no_votes") return "No votes";
  return o.kind;
}

export function DecisionPage() {
  const { id = "" } = useParams();
  const dispatch = useAppDispatch();
  const session = useAppSelector((s) => s.auth.session);
  const results = useAppSelector((s) => s.live.results[id]);
  const breakdown = useAppSelector((s) => s.live.breakdown[id]);
  const mode = useAppSelector((s) => s.live.mode[id]);
  const liveStatus = useAppSelector((s) => s.live.status[id]);
  const keptReceipt = useAppSelector((s) => (session ? s.receipts[`${session.userId}/${id}`] : undefined));
  const [decision, setDecision] = useState<Decision | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [ballot, setBallot] = useState<Ballot>({});
  const [myVote, setMyVote] = useState<MyVote | null>(null);
  const [receipt, setReceipt] = useState<Receipt | null>(null);
  const [casting, setCasting] = useState(false);
  const [castError, setCastError] = useState<unknown>(null);
  const [changing, setChanging] = useState(false);
  const voteId = useRef<string | null>(null);
  const receiptRef = useRef<HTMLDivElement>(null);

  const load = useCallback(() => {
    api
      .get<Decision>(`/api/v1/voting/decisions/${id}`)
      .then(setDecision)
      .catch(setError);
  }, [id]);

  useEffect(load, [load]);

  // A status the /decisions socket announces, or a final result we have not read yet.
  useEffect(() => {
    if (liveStatus && decision && liveStatus.status !== decision.status) load();
  }, [liveStatus, decision, load]);

  useEffect(() => {
    if (!decision) return;
    if (decision.status === "cancelled" || decision.status === "scheduled") return;
    if (decision.status === "final") {
      // A final count never changes: read it once.
      api.get<Results>(`/api/v1/voting/decision/${id}/results`).then((r) => dispatch(resultsReceived(r))).catch(() => {});
      requestBreakdown(id);
      return;
    }
    return watchDecision(id);
  }, [id, decision?.status]); // eslint-disable-line react-hooks/exhaustive-deps

  // Closed decisions turn final once the record checkpoints the close: look again now and then.
  useEffect(() => {
    if (decision?.status !== "closed") return;
    const t = setInterval(load, 3000);
    return () => clearInterval(t);
  }, [decision?.status, load]);

  useEffect(() => {
    if (!session || !can.vote(session.role)) return;
    api
      .get<Page<MyVote>>("/api/v1/voting/my-votes")
      .then((page) => {
        const mine = page.votes?.find((v) => v.decision_id === id) ?? null;
        setMyVote(mine);
        if (mine) setBallot(mine.ballot.option !== undefined && mine.ballot.option !== null ? { option: mine.ballot.option } : mine.ballot);
      })
      .catch(() => {});
  }, [id, session]);

  const shownReceipt = receipt ?? myVote?.receipt ?? keptReceipt ?? null;
  const hasVoted = !!shownReceipt;

  const cast = async () => {
    if (!decision || !session) return;
    setCasting(true);
    setCastError(null);
    // One id per ballot: a retry after a dropped answer gets the first receipt back.
    voteId.current ??= crypto.randomUUID();
    try {
      const r = await api.post<Receipt>("/api/v1/voting/cast-vote", {
        decision_id: id,
        vote_id: voteId.current,
        ...ballotBody(decision, ballot),
      });
      voteId.current = null;
      setReceipt(r);
      setChanging(false);
      dispatch(receiptKept({ userId: session.userId, receipt: r }));
      dispatch(noticed({ id: `cast-${r.vote_id}`, kind: "vote_cast", title: `Vote cast: ${decision.title}`, body: describeBallot(decision, ballot), decisionId: id, leafHash: r.leaf_hash }));
      requestAnimationFrame(() => receiptRef.current?.focus());
      // Read our own vote back: the results route waits until it includes the receipt's offset.
      if (r.position)
        api
          .get<Results>(`/api/v1/voting/decision/${id}/results?min_offset=${r.position.offset}`)
          .then((res) => dispatch(resultsReceived(res)))
          .catch(() => {});
    } catch (e) {
      if (e instanceof ApiError && e.status < 500) voteId.current = null; // refused: a new ballot gets a new id
      setCastError(e);
    } finally {
      setCasting(false);
    }
  };

  const bars = useMemo(
    () =>
      (results?.options ?? []).map((o) => ({
        label: o.label ?? decision?.options[o.option] ?? `option ${o.option + 1}`,
        value: o.composite,
        highlight: results?.leading.kind === "winner" && results.leading.option === o.option,
      })),
    [results, decision],
  );

  if (error) return <ErrorAlert error={error} title="This decision could not be loaded" />;
  if (!decision) return <Loading label="Loading the decision" />;

  const status = decision.status ?? "open";
  const canVote = can.vote(session?.role) && status === "open";
  const final = decision.result;

  return (
    <>
      <PageTitle
        sub={
          <Stack direction="row" spacing={1} component="span" sx={{ flexWrap: "wrap", gap: 0.5, alignItems: "center" }}>
            <StatusChip status={status} />
            <Chip size="small" variant="outlined" label={methodNames[decision.method] ?? decision.method} />
            {decision.region && <Chip size="small" variant="outlined" label={`region ${decision.region}`} />}
            <span>
              {formatMicros(decision.opens_at)} – {formatMicros(decision.closes_at)}
            </span>
          </Stack>
        }
      >
        {decision.title}
      </PageTitle>
      {decision.description && <Typography sx={{ mb: 3, whiteSpace: "pre-wrap" }}>{decision.description}</Typography>}

      {final && (
        <Section title="Outcome" id="outcome-heading">
          <Alert severity="success" sx={{ mb: 2 }} data-testid="outcome">
            <strong>{outcomeText(decision, final.result.outcome)}</strong> — final, signed by the record
            {final.tree_size !== undefined ? ` over ${final.tree_size} entries` : ""}.
          </Alert>
          <Typography variant="body2" sx={{ mb: 1 }}>
            The signed statement (check it with <code>canopy verify --tally</code>):{" "}
            <Link href={`/api/v1/audit/decisions/${id}/result`}>download</Link>
          </Typography>
          <Box component="pre" sx={{ fontSize: 12, overflowX: "auto", bgcolor: "grey.100", p: 1.5, borderRadius: 1, maxHeight: 200 }} tabIndex={0} aria-label="Signed statement">
            {final.statement}
          </Box>
        </Section>
      )}

      {can.vote(session?.role) && (
        <Section title={hasVoted ? "Your vote" : "Vote"} id="vote-heading">
          {shownReceipt && (
            <Box ref={receiptRef} tabIndex={-1} sx={{ mb: 2, outline: "none" }} data-testid="receipt">
              <Alert severity="success" sx={{ mb: 1 }} role="status">
                {receipt ? "Your vote is recorded." : "You have voted on this decision."}
                {myVote && !receipt && <> Your ballot: {describeBallot(decision, myVote.ballot)}.</>}
              </Alert>
              <Typography variant="body2" sx={{ wordBreak: "break-all" }}>
                Receipt: vote <code>{shownReceipt.vote_id}</code>
                {shownReceipt.position && (
                  <>
                    {" "}
                    at log position {shownReceipt.position.partition}:{shownReceipt.position.offset}
                  </>
                )}
                , leaf hash <code data-testid="leaf-hash">{shownReceipt.leaf_hash}</code>
              </Typography>
              <Button component={RouterLink} to={`/verify/${id}/${shownReceipt.leaf_hash}`} variant="outlined" sx={{ mt: 1 }}>
                Verify my vote
              </Button>
            </Box>
          )}
          {canVote && (!hasVoted || changing) ? (
            <Box component="form" onSubmit={(e) => (e.preventDefault(), void cast())} aria-label="Ballot">
              <BallotForm decision={decision} ballot={ballot} onChange={setBallot} />
              <ErrorAlert error={castError} title="Your vote was not cast" />
              <Stack direction="row" spacing={1} sx={{ mt: 2 }}>
                <Button type="submit" variant="contained" disabled={casting || !ballotReady(decision, ballot)}>
                  {casting ? "Casting…" : hasVoted ? "Cast my new vote" : "Cast my vote"}
                </Button>
                {changing && <Button onClick={() => setChanging(false)}>Keep my vote</Button>}
              </Stack>
            </Box>
          ) : canVote ? (
            <Button variant="outlined" onClick={() => setChanging(true)}>
              Change my vote
            </Button>
          ) : (
            !hasVoted && <Typography>Voting is {status === "scheduled" ? "not open yet" : "over"}.</Typography>
          )}
        </Section>
      )}

      {status !== "scheduled" && status !== "cancelled" && (
        <Section title="Results" id="results-heading">
          <Typography variant="body2" color="text.secondary" sx={{ mb: 1 }} data-testid="live-mode">
            {status === "final" ? "Final count" : mode === "socket" ? "Live" : mode === "polling" ? "Updated every 2 seconds" : "Connecting"}
            {results?.as_of ? ` · as of log position ${results.as_of.partition}:${results.as_of.offset}` : ""}
          </Typography>
          {!results ? (
            <Loading label="Loading results" />
          ) : (
            <>
              <Stack direction={{ xs: "column", sm: "row" }} spacing={{ xs: 0.5, sm: 3 }} sx={{ mb: 2 }} aria-live="polite">
                <Typography>
                  Turnout: <strong data-testid="turnout">{results.turnout}</strong>
                </Typography>
                <Typography>
                  Quorum{decision.quorum ? ` (${decision.quorum})` : ""}: <strong>{results.quorum_met ? "met" : "not met"}</strong>
                </Typography>
                <Typography data-testid="leading">
                  {status === "open" ? "Leading" : "Result"}: <strong>{results.leading.kind === "no_votes" ? "no votes yet" : outcomeText(decision, results.leading)}</strong>
                </Typography>
              </Stack>
              <BarChart bars={bars} title={`Composite score per option for ${decision.title}`} />
              {results.rounds && results.rounds.length > 0 && <Rounds decision={decision} rounds={results.rounds} />}
            </>
          )}
        </Section>
      )}

      {session && status !== "scheduled" && status !== "cancelled" && <DecisionSupport decision={decision} results={results} live={mode === "socket"} />}

      {breakdown && <BreakdownTable decision={decision} breakdown={breakdown} onRefresh={() => requestBreakdown(id)} />}

      {can.create(session?.role) && (status === "open" || status === "scheduled") && <OwnerActions decision={decision} onDone={load} />}
    </>
  );
}

function Rounds({ decision, rounds }: { decision: Decision; rounds: NonNullable<Results["rounds"]> }) {
  const name = (i: number) => decision.options[i] ?? `option ${i + 1}`;
  return (
    <Box sx={{ mt: 3 }} component="section" aria-labelledby="rounds-heading">
      <Typography variant="h6" component="h3" id="rounds-heading" sx={{ mb: 1 }}>
        Instant-runoff rounds
      </Typography>
      <TableContainer tabIndex={0} role="region" aria-label="Rounds, scrollable">
        <Table size="small" data-testid="rounds">
          <caption>Each round counts every ballot for its highest-ranked continuing option; the last is eliminated.</caption>
          <TableHead>
            <TableRow>
              <TableCell scope="col">Round</TableCell>
              {decision.options.map((o) => (
                <TableCell key={o} scope="col" align="right">
                  {o}
                </TableCell>
              ))}
              <TableCell scope="col" align="right">
                Exhausted
              </TableCell>
              <TableCell scope="col">Eliminated</TableCell>
            </TableRow>
          </TableHead>
          <TableBody>
            {rounds.map((r, i) => (
              <TableRow key={i}>
                <TableCell component="th" scope="row">
                  {i + 1}
                </TableCell>
                {decision.options.map((_, o) => (
                  <TableCell key={o} align="right">
                    {r.continuing.includes(o) ? `${((r.composite[o] ?? 0) * 100).toFixed(1)}%` : "—"}
                  </TableCell>
                ))}
                <TableCell align="right">{r.exhausted}</TableCell>
                <TableCell>
                  {r.eliminated === null || r.eliminated === undefined ? "—" : name(r.eliminated)}
                  {r.tie_broken ? " (tie broken)" : ""}
                </TableCell>
              </TableRow>
            ))}
          </TableBody>
        </Table>
      </TableContainer>
    </Box>
  );
}

function BreakdownTable({ decision, breakdown, onRefresh }: { decision: Decision; breakdown: Breakdown; onRefresh: () => void }) {
  const cell = (option: number, component: string) => breakdown.cells.find((c) => c.option === option && c.component === component);
  return (
    <Section title="Breakdown by component" id="breakdown-heading">
      <Typography variant="body2" color="text.secondary" sx={{ mb: 1 }}>
        Votes per option from each group of voters, and that option's share of the group.
        Turnout by group: {COMPONENTS.map((c, i) => `${c} ${breakdown.turnout_by_component?.[i] ?? 0}`).join(", ")}.
      </Typography>
      <TableContainer tabIndex={0} role="region" aria-label="Breakdown, scrollable">
        <Table size="small" data-testid="breakdown">
          <TableHead>
            <TableRow>
              <TableCell scope="col">Option</TableCell>
              {COMPONENTS.map((c, i) => (
                <TableCell key={c} scope="col" align="right">
                  {c}
                  {breakdown.component_weights ? ` (${(breakdown.component_weights[i] / 10000).toFixed(0)}%)` : ""}
                </TableCell>
              ))}
            </TableRow>
          </TableHead>
          <TableBody>
            {decision.options.map((label, o) => (
              <TableRow key={o}>
                <TableCell component="th" scope="row">
                  {label}
                </TableCell>
                {COMPONENTS.map((c) => {
                  const x = cell(o, c);
                  return (
                    <TableCell key={c} align="right">
                      {x ? `${x.count} (${(x.share * 100).toFixed(0)}%)` : "0"}
                    </TableCell>
                  );
                })}
              </TableRow>
            ))}
          </TableBody>
        </Table>
      </TableContainer>
      <Button size="small" onClick={onRefresh} sx={{ mt: 1 }}>
        Refresh breakdown
      </Button>
    </Section>
  );
}

function OwnerActions({ decision, onDone }: { decision: Decision; onDone: () => void }) {
  const [action, setAction] = useState<"close" | "cancel" | null>(null);
  const [reason, setReason] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const run = async () => {
    if (!action) return;
    setBusy(true);
    setError(null);
    try {
      await api.post(`/api/v1/voting/decisions/${decision.id}/${action}`, reason ? { reason } : {});
      setAction(null);
      onDone();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return (
    <Section title="Manage" id="manage-heading">
      <Stack direction="row" spacing={1}>
        {decision.status === "open" && (
          <Button variant="outlined" onClick={() => setAction("close")}>
            Close early
          </Button>
        )}
        <Button variant="outlined" color="error" onClick={() => setAction("cancel")}>
          Cancel decision
        </Button>
      </Stack>
      <ErrorAlert error={error} />
      <Dialog open={!!action} onClose={() => setAction(null)} aria-labelledby="manage-dialog-title">
        <DialogTitle id="manage-dialog-title">{action === "close" ? "Close this decision now?" : "Cancel this decision?"}</DialogTitle>
        <DialogContent>
          <Typography sx={{ mb: 2 }}>
            {action === "close"
              ? "Votes already in the log count; none after the close. This cannot be undone."
              : "No result is declared. Only a decision with no counted vote can be cancelled."}
          </Typography>
          <TextField label="Reason (for the audit trail)" fullWidth value={reason} onChange={(e) => setReason(e.target.value)} inputProps={{ maxLength: 500 }} />
          <ErrorAlert error={error} />
        </DialogContent>
        <DialogActions>
          <Button onClick={() => setAction(null)}>Back</Button>
          <Button onClick={run} disabled={busy} variant="contained" color={action === "cancel" ? "error" : "primary"}>
            {action === "close" ? "Close now" : "Cancel it"}
          </Button>
        </DialogActions>
      </Dialog>
    </Section>
  );
}
