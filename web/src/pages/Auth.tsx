// Sign in, register, claim an invitation.
import { useState, type FormEvent } from "react";
import { Link as RouterLink, useLocation, useNavigate } from "react-router-dom";
import { Alert, Box, Button, Link, Paper, Stack, TextField, Typography } from "@mui/material";
import { ApiError, api } from "../api/client";
import type { TokenPair } from "../api/types";
import { ErrorAlert, PageTitle } from "../components/common";
import { signedIn, useAppDispatch } from "../store";

function Narrow({ children }: { children: React.ReactNode }) {
  return (
    <Box sx={{ maxWidth: 460, mx: "auto" }}>
      <Paper sx={{ p: { xs: 2, sm: 4 } }} variant="outlined">
        {children}
      </Paper>
    </Box>
  );
}

export function SignIn() {
  const dispatch = useAppDispatch();
  const navigate = useNavigate();
  const location = useLocation();
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [totp, setTotp] = useState("");
  const [askCode, setAskCode] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const code = totp.trim();
      const body: Record<string, string> = { username, password };
      // Six digits are a TOTP code; anything longer is one of the recovery codes.
      if (code) body[/^\d{6}$/.test(code) ? "totp" : "recovery_code"] = code;
      const tokens = await api.post<TokenPair>("/api/v1/auth/login", body, { auth: false });
      dispatch(signedIn({ tokens, username }));
      const next = (location.state as { from?: string } | null)?.from ?? "/";
      navigate(next, { replace: true });
    } catch (err) {
      // Older nodes answered `totp_required`/`bad_totp`; newer ones one `bad_credentials`.
      if (err instanceof ApiError && (err.code === "totp_required" || err.code === "bad_totp")) setAskCode(true);
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <Narrow>
      <PageTitle>Sign in</PageTitle>
      <form onSubmit={submit} noValidate>
        <Stack spacing={2}>
          <TextField label="Username" autoComplete="username" value={username} onChange={(e) => setUsername(e.target.value)} required autoFocus />
          <TextField label="Password" type="password" autoComplete="current-password" value={password} onChange={(e) => setPassword(e.target.value)} required />
          {askCode ? (
            <TextField
              label="Authenticator code or recovery code"
              autoComplete="one-time-code"
              inputProps={{ inputMode: "text" }}
              value={totp}
              onChange={(e) => setTotp(e.target.value)}
              helperText="The six digits your authenticator app shows, or one of your recovery codes"
            />
          ) : (
            <Link component="button" type="button" onClick={() => setAskCode(true)} sx={{ alignSelf: "flex-start" }}>
              I use two-factor authentication
            </Link>
          )}
          <ErrorAlert error={error} />
          <Button type="submit" variant="contained" disabled={busy || !username || !password}>
            {busy ? "Signing in…" : "Sign in"}
          </Button>
          <Typography>
            No account yet?{" "}
            <Link component={RouterLink} to="/register">
              Register
            </Link>
          </Typography>
        </Stack>
      </form>
    </Narrow>
  );
}

export function Register() {
  const dispatch = useAppDispatch();
  const navigate = useNavigate();
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await api.post<{ user_id: string }>("/api/v1/auth/register", { username, password }, { auth: false });
      const tokens = await api.post<TokenPair>("/api/v1/auth/login", { username, password }, { auth: false });
      dispatch(signedIn({ tokens, username }));
      navigate("/", { replace: true });
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  const weak = error instanceof ApiError && error.code === "weak_password";

  return (
    <Narrow>
      <PageTitle sub="A citizen account: vote on open decisions, check your votes in the record.">Register</PageTitle>
      <form onSubmit={submit} noValidate>
        <Stack spacing={2}>
          <TextField label="Username" autoComplete="username" value={username} onChange={(e) => setUsername(e.target.value)} required autoFocus />
          <TextField
            label="Password"
            type="password"
            autoComplete="new-password"
            value={password}
            onChange={(e) => setPassword(e.target.value)}
            required
            error={weak}
            helperText="10 characters or more; not a common password, not your username"
          />
          <ErrorAlert error={error} />
          <Button type="submit" variant="contained" disabled={busy || !username || !password}>
            {busy ? "Creating the account…" : "Register"}
          </Button>
          <Typography>
            Have an account?{" "}
            <Link component={RouterLink} to="/signin">
              Sign in
            </Link>
          </Typography>
        </Stack>
      </form>
    </Narrow>
  );
}

export function Claim() {
  const [code, setCode] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [claimed, setClaimed] = useState<{ roll_id?: string; region?: string } | null>(null);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      setClaimed(await api.post("/api/v1/rolls/claim", { code }));
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <Narrow>
      <PageTitle sub="An invitation code from a voter roll lets this account vote on the decisions that name the roll.">Claim an invitation</PageTitle>
      <form onSubmit={submit} noValidate>
        <Stack spacing={2}>
          <TextField label="Invitation code" value={code} onChange={(e) => setCode(e.target.value)} required helperText="As handed out; case and dashes do not matter" />
          <ErrorAlert error={error} />
          {claimed && (
            <Alert severity="success" role="status">
              Claimed: you now vote for roll {claimed.roll_id ?? ""}
              {claimed.region ? ` in ${claimed.region}` : ""}.
            </Alert>
          )}
          <Button type="submit" variant="contained" disabled={busy || !code.trim()}>
            {busy ? "Claiming…" : "Claim"}
          </Button>
        </Stack>
      </form>
    </Narrow>
  );
}
