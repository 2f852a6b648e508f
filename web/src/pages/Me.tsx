// My votes, my profile (role, verified weight and regions, two-factor sign-in), the
// notification centre.
import { useEffect, useState, type FormEvent } from "react";
import { Link as RouterLink } from "react-router-dom";
import {
  Alert,
  Button,
  Chip,
  Link,
  List,
  ListItem,
  ListItemText,
  Paper,
  Stack,
  Table,
  TextField,
  TableBody,
  TableCell,
  TableContainer,
  TableHead,
  TableRow,
  Typography,
} from "@mui/material";
import { api } from "../api/client";
import type { MyVote, Page, Verification } from "../api/types";
import { ErrorAlert, Loading, PageTitle } from "../components/common";
import { allRead, can, useAppDispatch, useAppSelector } from "../store";

function ballotText(v: MyVote): string {
  const b = v.ballot;
  if (b.option !== undefined && b.option !== null) return `option ${b.option + 1}`;
  if (b.approve) return `approve ${b.approve.map((o) => o + 1).join(", ")}`;
  if (b.ranking) return `ranking ${b.ranking.map((o) => o + 1).join(" > ")}`;
  if (b.allocation) return b.allocation.map(([o, n]) => `${n}×${o + 1}`).join(", ");
  return "";
}

export function VotesTable({ votes }: { votes: MyVote[] }) {
  if (votes.length === 0) return <Typography>No votes yet.</Typography>;
  return (
    <TableContainer tabIndex={0} role="region" aria-label="Your votes, scrollable">
      <Table size="small" data-testid="my-votes">
        <TableHead>
          <TableRow>
            <TableCell scope="col">Decision</TableCell>
            <TableCell scope="col">Ballot</TableCell>
            <TableCell scope="col">Proof</TableCell>
            <TableCell scope="col">
              <span className="visually-hidden">Actions</span>
            </TableCell>
          </TableRow>
        </TableHead>
        <TableBody>
          {votes.map((v) => (
            <TableRow key={v.decision_id}>
              <TableCell>
                <Link component={RouterLink} to={`/decisions/${v.decision_id}`}>
                  {v.title}
                </Link>
              </TableCell>
              <TableCell>{ballotText(v)}</TableCell>
              <TableCell>
                <Chip size="small" variant="outlined" label={v.proof.status} />
              </TableCell>
              <TableCell>
                <Button size="small" component={RouterLink} to={`/verify/${v.decision_id}/${v.receipt.leaf_hash}`} aria-label={`Verify my vote on ${v.title}`}>
                  Verify
                </Button>
              </TableCell>
            </TableRow>
          ))}
        </TableBody>
      </Table>
    </TableContainer>
  );
}

export function MyVotes() {
  const [votes, setVotes] = useState<MyVote[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    api
      .get<Page<MyVote>>("/api/v1/voting/my-votes")
      .then((p) => setVotes(p.votes ?? []))
      .catch(setError);
  }, []);
  return (
    <>
      <PageTitle sub="Your current vote in each decision, with its receipt: check any of them against the signed record.">My votes</PageTitle>
      <ErrorAlert error={error} />
      {votes ? <VotesTable votes={votes} /> : !error && <Loading label="Loading your votes" />}
    </>
  );
}

export function Profile() {
  const session = useAppSelector((s) => s.auth.session);
  const [me, setMe] = useState<Verification | null>(null);
  const [votes, setVotes] = useState<MyVote[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    api.get<Verification>("/api/v1/auth/verify-expert").then(setMe).catch(setError);
    if (can.vote(session?.role))
      api
        .get<Page<MyVote>>("/api/v1/voting/my-votes")
        .then((p) => setVotes(p.votes ?? []))
        .catch(() => setVotes([]));
  }, [session?.role]);
  return (
    <>
      <PageTitle>Profile</PageTitle>
      <ErrorAlert error={error} />
      <Paper variant="outlined" sx={{ p: { xs: 2, sm: 3 }, mb: 3 }} component="section" aria-labelledby="who-heading">
        <Typography variant="h5" component="h2" id="who-heading" sx={{ mb: 1 }}>
          {session?.username ?? "Your account"}
        </Typography>
        {!me ? (
          !error && <Loading label="Loading your profile" />
        ) : (
          <dl className="facts">
            <dt>Account id</dt>
            <dd>
              <code data-testid="user-id">{session?.userId}</code>
            </dd>
            <dt>Role</dt>
            <dd data-testid="role">{me.role}</dd>
            <dt>Vote weight</dt>
            <dd>{me.weight}</dd>
            <dt>Verified</dt>
            <dd>{me.verified ? "yes" : "no"}</dd>
            {me.verified && (
              <>
                {me.field && (
                  <>
                    <dt>Field</dt>
                    <dd>{me.field}</dd>
                  </>
                )}
                <dt>Regions</dt>
                <dd>{me.regions && me.regions.length > 0 ? me.regions.join(", ") : "all"}</dd>
                <dt>Verified by</dt>
                <dd>{me.verified_by}</dd>
                <dt>Verified at</dt>
                <dd>{me.verified_at ? new Date(me.verified_at * 1000).toLocaleString() : ""}</dd>
              </>
            )}
          </dl>
        )}
        {me && !me.verified && (me.role === "citizen" || me.role === "expert" || me.role === "stakeholder") && (
          <Typography variant="body2" color="text.secondary">
            Experts and stakeholders are verified by an administrator, who needs your account id above.
          </Typography>
        )}
      </Paper>
      <TwoFactor />
      {votes && (
        <Paper variant="outlined" sx={{ p: { xs: 2, sm: 3 } }} component="section" aria-labelledby="votes-heading">
          <Typography variant="h5" component="h2" id="votes-heading" sx={{ mb: 1 }}>
            Your votes
          </Typography>
          <VotesTable votes={votes} />
        </Paper>
      )}
    </>
  );
}

type Enrolment = { secret_base32: string; otpauth_url: string };

/**
 * Two-factor sign-in: the password unlocks a new secret for an authenticator app, a code
 * from the app turns it on, and the recovery codes are shown once. Nothing of it is kept
 * in the browser.
 */
function TwoFactor() {
  const [password, setPassword] = useState("");
  const [code, setCode] = useState("");
  const [enrolment, setEnrolment] = useState<Enrolment | null>(null);
  const [recovery, setRecovery] = useState<string[] | null>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);

  const run = async (e: FormEvent, step: () => Promise<void>) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await step();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  const enrol = (e: FormEvent) =>
    run(e, async () => setEnrolment(await api.post<Enrolment>("/api/v1/auth/2fa/enrol", { password })));
  const confirm = (e: FormEvent) =>
    run(e, async () => {
      const answer = await api.post<{ recovery_codes: string[] }>("/api/v1/auth/2fa/confirm", { password, code: code.trim() });
      setRecovery(answer.recovery_codes);
      setPassword("");
      setCode("");
    });

  return (
    <Paper variant="outlined" sx={{ p: { xs: 2, sm: 3 }, mb: 3 }} component="section" aria-labelledby="twofactor-heading">
      <Typography variant="h5" component="h2" id="twofactor-heading" sx={{ mb: 1 }}>
        Two-factor sign-in
      </Typography>
      {recovery ? (
        <>
          <Alert severity="success" sx={{ mb: 2 }} data-testid="twofactor-on">
            Two-factor sign-in is on: from now on, signing in asks for a code from your authenticator app.
          </Alert>
          <Typography sx={{ mb: 1 }}>
            Recovery codes, each good once if you lose the app. They are shown only now: write them down.
          </Typography>
          <List dense aria-label="Recovery codes" data-testid="recovery-codes">
            {recovery.map((c) => (
              <ListItem key={c} disableGutters>
                <code>{c}</code>
              </ListItem>
            ))}
          </List>
        </>
      ) : !enrolment ? (
        <form onSubmit={enrol} noValidate>
          <Stack spacing={2} sx={{ maxWidth: 460 }}>
            <Typography variant="body2" color="text.secondary">
              Ask for a code from an authenticator app as well as your password when you sign in.
            </Typography>
            <TextField label="Your password" type="password" autoComplete="current-password" value={password} onChange={(e) => setPassword(e.target.value)} required />
            <ErrorAlert error={error} />
            <Button type="submit" variant="outlined" disabled={busy || !password} sx={{ alignSelf: "flex-start" }}>
              {busy ? "Checking…" : "Set up two-factor sign-in"}
            </Button>
          </Stack>
        </form>
      ) : (
        <form onSubmit={confirm} noValidate>
          <Stack spacing={2} sx={{ maxWidth: 460 }}>
            <Typography>
              Add this account to your authenticator app with the key below (or open the link on the phone that has the app), then enter the
              six digits it shows.
            </Typography>
            <dl className="facts">
              <dt>Key</dt>
              <dd>
                <code data-testid="totp-secret" style={{ wordBreak: "break-all" }}>
                  {enrolment.secret_base32}
                </code>
              </dd>
              <dt>Link</dt>
              <dd>
                <Link href={enrolment.otpauth_url} sx={{ wordBreak: "break-all" }}>
                  {enrolment.otpauth_url}
                </Link>
              </dd>
            </dl>
            <TextField
              label="Code from the app"
              autoComplete="one-time-code"
              inputProps={{ inputMode: "numeric" }}
              value={code}
              onChange={(e) => setCode(e.target.value)}
              required
            />
            <ErrorAlert error={error} />
            <Button type="submit" variant="contained" disabled={busy || !code.trim()} sx={{ alignSelf: "flex-start" }}>
              {busy ? "Checking…" : "Turn on"}
            </Button>
          </Stack>
        </form>
      )}
    </Paper>
  );
}

export function Notifications() {
  const items = useAppSelector((s) => s.notifications.items);
  const connected = useAppSelector((s) => s.notifications.connected);
  const dispatch = useAppDispatch();
  useEffect(() => {
    const t = setTimeout(() => dispatch(allRead()), 1500);
    return () => clearTimeout(t);
  }, [dispatch, items.length]);
  return (
    <>
      <PageTitle sub={connected ? "Live: confirmations and outcomes arrive as they happen." : "Checked every 15 seconds while the live channel is not connected."}>
        Notifications
      </PageTitle>
      {items.length === 0 ? (
        <Alert severity="info">Nothing yet. Cast a vote and you will be told when the record confirms it.</Alert>
      ) : (
        <List aria-label="Notifications">
          {items.map((n) => (
            <ListItem key={n.id} divider alignItems="flex-start">
              <ListItemText
                primary={
                  <Stack direction="row" spacing={1} sx={{ alignItems: "center", flexWrap: "wrap" }}>
                    {!n.read && <Chip size="small" color="primary" label="new" />}
                    <strong>{n.title}</strong>
                  </Stack>
                }
                secondary={
                  <>
                    {n.body && <span>{n.body} · </span>}
                    {new Date(n.at).toLocaleTimeString()}
                    {n.decisionId && (
                      <>
                        {" · "}
                        <Link component={RouterLink} to={n.leafHash ? `/verify/${n.decisionId}/${n.leafHash}` : `/decisions/${n.decisionId}`}>
                          {n.leafHash ? "verify" : "open"}
                        </Link>
                      </>
                    )}
                  </>
                }
              />
            </ListItem>
          ))}
        </List>
      )}
    </>
  );
}
