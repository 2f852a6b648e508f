// "Verify my vote": fetch the vote's inclusion proof and signed checkpoint, and check both
// here, in the browser (src/verify/record.ts), against the record key the voter trusts.
import { useCallback, useEffect, useState } from "react";
import { Link as RouterLink, useParams } from "react-router-dom";
import { Alert, AlertTitle, Box, Button, Link, List, ListItem, ListItemText, Paper, Stack, TextField, Typography } from "@mui/material";
import { ApiError, api } from "../api/client";
import type { MyVote, Page } from "../api/types";
import { ErrorAlert, Loading, PageTitle } from "../components/common";
import { trustedKey, useAppSelector } from "../store";
import { verifyProof, type ProofResponse, type Verdict } from "../verify/record";

type State =
  | { kind: "loading" }
  | { kind: "waiting"; attempt: number }
  | { kind: "done"; verdict: Verdict; proof: ProofResponse }
  | { kind: "error"; error: unknown };

function anchorText(proof: ProofResponse): string {
  const a = proof.anchor;
  if (!a) return "Not anchored yet: the next anchoring round (every few seconds) records the checkpoint.";
  const where = a.target === "journal" ? "the node's signed anchor journal" : a.target.startsWith("evm:") ? `the chain ${a.target.slice(4)}` : a.target;
  const at = a.block_number !== null && a.block_number !== undefined ? (a.target === "journal" ? `, line ${a.block_number}` : `, block ${a.block_number}`) : "";
  const tx = a.tx_hash ? `, transaction ${a.tx_hash}` : "";
  return `Anchored in ${where}: batch ${a.batch_id}${at}${tx}. This browser checked the path from the checkpoint to the batch root; that the root is on the chain, canopy verify checks against the contract.`;
}

export function VerifyVote() {
  const { decisionId = "", leaf = "" } = useParams();
  const session = useAppSelector((s) => s.auth.session);
  const kept = useAppSelector((s) => (session ? s.receipts[`${session.userId}/${decisionId}`] : undefined));
  const [leafHex, setLeafHex] = useState<string | undefined>(kept?.leaf_hash === leaf ? kept.leaf : undefined);
  const [state, setState] = useState<State>({ kind: "loading" });
  const [key, setKey] = useState(trustedKey.get());
  const [served, setServed] = useState<string>("");
  const [run, setRun] = useState(0);

  // The receipt's leaf, so the browser can hash it too (from my-votes if not kept here).
  useEffect(() => {
    if (leafHex || !session) return;
    api
      .get<Page<MyVote>>("/api/v1/voting/my-votes")
      .then((p) => {
        const mine = p.votes?.find((v) => v.receipt.leaf_hash === leaf);
        if (mine) setLeafHex(mine.receipt.leaf);
      })
      .catch(() => {});
  }, [leaf, leafHex, session]);

  useEffect(() => {
    api
      .get<{ key: string }>("/api/v1/audit/key", { auth: false })
      .then((k) => {
        setServed(k.key);
        // Trust on first use: keep the first key seen; a later change shows as a failure.
        if (!trustedKey.get()) {
          trustedKey.set(k.key);
          setKey(k.key);
        }
      })
      .catch(() => {});
  }, []);

  const check = useCallback(
    async (signal: { cancelled: boolean }) => {
      setState({ kind: "loading" });
      for (let attempt = 1; attempt <= 30 && !signal.cancelled; attempt++) {
        try {
          const proof = await api.get<ProofResponse>(`/api/v1/audit/decisions/${decisionId}/proof?leaf=${leaf}`, { auth: false });
          const verdict = await verifyProof({ proof, decisionId, leafHashHex: leaf, leafHex, trustedKey: trustedKey.get() || undefined });
          if (!signal.cancelled) setState({ kind: "done", verdict, proof });
          return;
        } catch (e) {
          if (e instanceof ApiError && e.code === "not_checkpointed") {
            setState({ kind: "waiting", attempt });
            await new Promise((r) => setTimeout(r, 1000));
            continue;
          }
          if (!signal.cancelled) setState({ kind: "error", error: e });
          return;
        }
      }
    },
    [decisionId, leaf, leafHex],
  );

  useEffect(() => {
    const signal = { cancelled: false };
    void check(signal);
    return () => {
      signal.cancelled = true;
    };
  }, [check, run]);

  return (
    <>
      <PageTitle sub="Your browser checks that your vote is in the decision's signed record: nothing here trusts the server's word.">
        Verify my vote
      </PageTitle>
      <Typography variant="body2" sx={{ mb: 2, wordBreak: "break-all" }}>
        Decision{" "}
        <Link component={RouterLink} to={`/decisions/${decisionId}`}>
          {decisionId}
        </Link>
        , leaf hash <code>{leaf}</code>
      </Typography>
      <Box aria-live="polite" data-testid="verdict-region">
        {state.kind === "loading" && <Loading label="Fetching the proof" />}
        {state.kind === "waiting" && (
          <Alert severity="info" role="status">
            No checkpoint covers your vote yet (one is cut within about a second). Trying again… ({state.attempt})
          </Alert>
        )}
        {state.kind === "error" && <ErrorAlert error={state.error} title="The proof could not be fetched" />}
        {state.kind === "done" && <VerdictView verdict={state.verdict} proof={state.proof} />}
      </Box>

      <Paper variant="outlined" sx={{ p: 2, mt: 3 }} component="section" aria-labelledby="key-heading">
        <Typography variant="h6" component="h2" id="key-heading">
          The record key you trust
        </Typography>
        <Typography variant="body2" sx={{ mb: 1 }}>
          A checkpoint counts only if this key signed it. It was taken from this server the first time you verified; compare it with one
          published elsewhere (the operator's site, a newspaper) and paste that one here.
        </Typography>
        <Stack direction={{ xs: "column", sm: "row" }} spacing={1}>
          <TextField label="Record key" value={key} onChange={(e) => setKey(e.target.value)} fullWidth size="small" inputProps={{ spellCheck: false }} />
          <Button
            variant="outlined"
            onClick={() => {
              trustedKey.set(key.trim());
              setRun((n) => n + 1);
            }}
          >
            Trust and check again
          </Button>
        </Stack>
        {served && served !== key && (
          <Alert severity="warning" sx={{ mt: 1 }}>
            This server now publishes another key: <code style={{ wordBreak: "break-all" }}>{served}</code>
          </Alert>
        )}
      </Paper>
    </>
  );
}

function VerdictView({ verdict, proof }: { verdict: Verdict; proof: ProofResponse }) {
  return (
    <>
      {verdict.ok ? (
        <Alert severity="success" variant="filled" data-testid="verdict" data-verdict="ok" sx={{ mb: 2 }}>
          <AlertTitle>Your vote is in the record</AlertTitle>
          Included at position {proof.index} of {proof.tree_size} and signed by the record key. {proof.anchor ? "Anchored." : "Not anchored yet."}
        </Alert>
      ) : (
        <Alert severity="error" variant="filled" data-testid="verdict" data-verdict="failed" sx={{ mb: 2 }}>
          <AlertTitle>This proof does not check</AlertTitle>
          {verdict.failure?.message} ({verdict.failure?.code})
        </Alert>
      )}
      <List dense aria-label="Checks">
        {verdict.checks.map((c) => (
          <ListItem key={c.name} disableGutters>
            <ListItemText
              primary={
                <>
                  <span aria-hidden="true">{c.ok ? "✔ " : "✘ "}</span>
                  <strong>{c.name}</strong>
                  <span className="visually-hidden">{c.ok ? " passed" : " failed"}</span>
                </>
              }
              secondary={c.detail}
            />
          </ListItem>
        ))}
      </List>
      {verdict.ok && (
        <Alert severity={proof.anchor ? "success" : "info"} sx={{ mt: 1 }} data-testid="anchor">
          {anchorText(proof)}
        </Alert>
      )}
      <details style={{ marginTop: 16 }}>
        <summary>The proof as fetched</summary>
        <Box component="pre" sx={{ fontSize: 12, overflowX: "auto", bgcolor: "grey.100", p: 1.5 }}>
          {JSON.stringify(proof, null, 2)}
        </Box>
      </details>
    </>
  );
}
