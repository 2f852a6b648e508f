import { useEffect, useRef, type ReactNode } from "react";
import { Alert, Box, CircularProgress, Typography } from "@mui/material";
import { ApiError, errorMessage } from "../api/client";

/** The page's heading; it takes focus when the page opens, so screen readers announce it. */
export function PageTitle({ children, sub }: { children: ReactNode; sub?: ReactNode }) {
  const ref = useRef<HTMLHeadingElement>(null);
  useEffect(() => {
    ref.current?.focus();
  }, []);
  return (
    <Box sx={{ mb: 2 }}>
      <Typography variant="h4" component="h1" ref={ref} tabIndex={-1} sx={{ outline: "none", fontSize: { xs: "1.6rem", sm: "2.1rem" } }}>
        {children}
      </Typography>
      {sub && (
        <Typography color="text.secondary" sx={{ mt: 0.5 }}>
          {sub}
        </Typography>
      )}
    </Box>
  );
}

/** An error from the API: its message for people, its code for the curious. */
export function ErrorAlert({ error, title }: { error: unknown; title?: string }) {
  if (!error) return null;
  const code = error instanceof ApiError ? error.code : undefined;
  return (
    <Alert severity="error" sx={{ my: 2 }} role="alert">
      {title && <strong>{title}: </strong>}
      {errorMessage(error)}
      {code && (
        <Typography component="span" variant="body2" sx={{ ml: 1, fontFamily: "monospace" }}>
          ({code})
        </Typography>
      )}
    </Alert>
  );
}

export function Loading({ label = "Loading" }: { label?: string }) {
  return (
    <Box sx={{ display: "flex", alignItems: "center", gap: 2, my: 3 }} role="status">
      <CircularProgress size={24} aria-label={label} />
      <span>{label}…</span>
    </Box>
  );
}

/** µs since the epoch, as the node writes decision windows, for people. */
export const fromMicros = (us: number) => new Date(us / 1000);
export const formatMicros = (us: number) => fromMicros(us).toLocaleString();

export const methodNames: Record<string, string> = {
  single_choice: "Single choice",
  approval: "Approval",
  ranked_choice: "Ranked choice",
  quadratic: "Quadratic",
};
