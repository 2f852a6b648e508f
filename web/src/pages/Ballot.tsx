// A ballot in each voting method's shape: single choice (radios), approval (checkboxes),
// ranked choice (an ordered list moved with buttons), quadratic (steppers within a budget).
import { useState } from "react";
import {
  Box,
  Button,
  Checkbox,
  FormControl,
  FormControlLabel,
  FormGroup,
  FormLabel,
  IconButton,
  List,
  ListItem,
  Radio,
  RadioGroup,
  Stack,
  Typography,
} from "@mui/material";
import type { Ballot, Decision } from "../api/types";

export interface BallotProps {
  decision: Decision;
  ballot: Ballot;
  onChange: (b: Ballot) => void;
}

/** Whether the ballot is complete enough to cast. */
export function ballotReady(decision: Decision, b: Ballot): boolean {
  switch (decision.method) {
    case "approval":
      return (b.approve?.length ?? 0) > 0;
    case "ranked_choice":
      return (b.ranking?.length ?? 0) > 0;
    case "quadratic":
      return (b.allocation ?? []).some(([, v]) => v > 0);
    default:
      return b.option !== undefined;
  }
}

/** The cast body's ballot field, exactly one of option | approve | ranking | allocation. */
export function ballotBody(decision: Decision, b: Ballot): Ballot {
  switch (decision.method) {
    case "approval":
      return { approve: [...(b.approve ?? [])].sort((x, y) => x - y) };
    case "ranked_choice":
      return { ranking: b.ranking ?? [] };
    case "quadratic":
      return { allocation: (b.allocation ?? []).filter(([, v]) => v > 0) };
    default:
      return { option: b.option };
  }
}

export function describeBallot(decision: Decision, b: Ballot): string {
  const name = (i: number) => decision.options[i] ?? `option ${i + 1}`;
  if (b.option !== undefined && b.option !== null) return name(b.option);
  if (b.approve) return `approve ${b.approve.map(name).join(", ")}`;
  if (b.ranking) return b.ranking.map((o, i) => `${i + 1}. ${name(o)}`).join("  ");
  if (b.allocation) return b.allocation.map(([o, v]) => `${name(o)}: ${v} vote${v === 1 ? "" : "s"}`).join(", ");
  return "";
}

export function BallotForm(props: BallotProps) {
  switch (props.decision.method) {
    case "approval":
      return <ApprovalBallot {...props} />;
    case "ranked_choice":
      return <RankedBallot {...props} />;
    case "quadratic":
      return <QuadraticBallot {...props} />;
    default:
      return <SingleBallot {...props} />;
  }
}

function SingleBallot({ decision, ballot, onChange }: BallotProps) {
  return (
    <FormControl component="fieldset">
      <FormLabel component="legend">Choose one option</FormLabel>
      <RadioGroup
        name="option"
        value={ballot.option ?? ""}
        onChange={(e) => onChange({ option: Number(e.target.value) })}
      >
        {decision.options.map((label, i) => (
          <FormControlLabel key={i} value={i} control={<Radio />} label={label} />
        ))}
      </RadioGroup>
    </FormControl>
  );
}

function ApprovalBallot({ decision, ballot, onChange }: BallotProps) {
  const approved = new Set(ballot.approve ?? []);
  const toggle = (i: number) => {
    const next = new Set(approved);
    if (next.has(i)) next.delete(i);
    else next.add(i);
    onChange({ approve: [...next].sort((a, b) => a - b) });
  };
  return (
    <FormControl component="fieldset">
      <FormLabel component="legend">Approve every option you accept (at least one)</FormLabel>
      <FormGroup>
        {decision.options.map((label, i) => (
          <FormControlLabel key={i} control={<Checkbox checked={approved.has(i)} onChange={() => toggle(i)} />} label={label} />
        ))}
      </FormGroup>
    </FormControl>
  );
}

function RankedBallot({ decision, ballot, onChange }: BallotProps) {
  const ranking = ballot.ranking ?? [];
  const unranked = decision.options.map((_, i) => i).filter((i) => !ranking.includes(i));
  const [said, setSaid] = useState("");
  const name = (i: number) => decision.options[i];
  const set = (next: number[], message: string) => {
    onChange({ ranking: next });
    setSaid(message);
  };
  const move = (at: number, by: -1 | 1) => {
    const to = at + by;
    if (to < 0 || to >= ranking.length) return;
    const next = [...ranking];
    [next[at], next[to]] = [next[to], next[at]];
    set(next, `${name(ranking[at])} moved to place ${to + 1} of ${ranking.length}`);
    // Keep the focus with the moved option: on the same button, or the other one once it
    // reached the top or the bottom (a disabled button cannot hold the focus).
    const edge = to === 0 || to === ranking.length - 1;
    const button = (by < 0) !== edge ? "up" : "down";
    requestAnimationFrame(() => document.getElementById(`rank-${button}-${ranking[at]}`)?.focus());
  };
  return (
    <Box component="fieldset" sx={{ border: 0, p: 0, m: 0 }}>
      <FormLabel component="legend">Rank the options you support, most preferred first</FormLabel>
      <Typography variant="body2" color="text.secondary" sx={{ mb: 1 }}>
        Options you leave out are never counted for you. Use the buttons (or Tab and Enter) to reorder.
      </Typography>
      <List aria-label="Your ranking" component="ol" sx={{ p: 0 }}>
        {ranking.length === 0 && (
          <ListItem component="li">
            <Typography color="text.secondary">Nothing ranked yet: add options below.</Typography>
          </ListItem>
        )}
        {ranking.map((o, at) => (
          <ListItem
            key={o}
            component="li"
            divider
            sx={{ gap: 1, flexWrap: "wrap" }}
            data-testid="ranked-item"
          >
            <Typography sx={{ fontWeight: 700, minWidth: 28 }} aria-hidden="true">
              {at + 1}.
            </Typography>
            <Typography sx={{ flexGrow: 1 }}>{name(o)}</Typography>
            <Stack direction="row" spacing={0.5}>
              <IconButton id={`rank-up-${o}`} aria-label={`Move ${name(o)} up`} disabled={at === 0} onClick={() => move(at, -1)} size="small">
                ↑
              </IconButton>
              <IconButton
                id={`rank-down-${o}`}
                aria-label={`Move ${name(o)} down`}
                disabled={at === ranking.length - 1}
                onClick={() => move(at, 1)}
                size="small"
              >
                ↓
              </IconButton>
              <Button size="small" onClick={() => set(ranking.filter((x) => x !== o), `${name(o)} removed from your ranking`)} aria-label={`Remove ${name(o)}`}>
                Remove
              </Button>
            </Stack>
          </ListItem>
        ))}
      </List>
      {unranked.length > 0 && (
        <Box sx={{ mt: 1 }}>
          <Typography variant="subtitle2" component="p">
            Not ranked
          </Typography>
          <Stack direction="row" sx={{ flexWrap: "wrap", gap: 1, mt: 0.5 }}>
            {unranked.map((o) => (
              <Button
                key={o}
                variant="outlined"
                size="small"
                onClick={() => set([...ranking, o], `${name(o)} added at place ${ranking.length + 1}`)}
                aria-label={`Add ${name(o)} to your ranking`}
              >
                + {name(o)}
              </Button>
            ))}
          </Stack>
        </Box>
      )}
      <Box aria-live="polite" className="visually-hidden">
        {said}
      </Box>
    </Box>
  );
}

function QuadraticBallot({ decision, ballot, onChange }: BallotProps) {
  const votes = new Map(ballot.allocation ?? []);
  const budget = decision.credits || 0;
  const spent = [...votes.values()].reduce((n, v) => n + v * v, 0);
  const left = budget - spent;
  const set = (option: number, v: number) => {
    const next = new Map(votes);
    if (v <= 0) next.delete(option);
    else next.set(option, v);
    onChange({ allocation: [...next.entries()].sort((a, b) => a[0] - b[0]) });
  };
  return (
    <Box component="fieldset" sx={{ border: 0, p: 0, m: 0 }}>
      <FormLabel component="legend">Spread your credits: n votes on one option cost n² credits</FormLabel>
      <Typography sx={{ my: 1, fontWeight: 600 }} role="status" aria-live="polite" data-testid="credits">
        {spent} of {budget} credits spent, {left} left
      </Typography>
      <List sx={{ p: 0 }}>
        {decision.options.map((label, i) => {
          const v = votes.get(i) ?? 0;
          const nextCost = (v + 1) * (v + 1) - v * v;
          return (
            <ListItem key={i} divider sx={{ gap: 1, flexWrap: "wrap" }}>
              <Typography sx={{ flexGrow: 1 }} id={`qv-label-${i}`}>
                {label}
              </Typography>
              <Stack direction="row" spacing={1} sx={{ alignItems: "center" }} role="group" aria-labelledby={`qv-label-${i}`}>
                <IconButton aria-label={`One vote less for ${label}`} disabled={v === 0} onClick={() => set(i, v - 1)} size="small">
                  −
                </IconButton>
                <Typography sx={{ minWidth: 90, textAlign: "center" }} aria-live="polite">
                  {v} vote{v === 1 ? "" : "s"} ({v * v} cr)
                </Typography>
                <IconButton aria-label={`One vote more for ${label} (costs ${nextCost} more)`} disabled={nextCost > left} onClick={() => set(i, v + 1)} size="small">
                  +
                </IconButton>
              </Stack>
            </ListItem>
          );
        })}
      </List>
    </Box>
  );
}
