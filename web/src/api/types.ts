// The node's JSON shapes, as the OpenAPI document (node/tests/data/openapi.json) and the
// handlers answer them.

export interface TokenPair {
  access_token: string;
  refresh_token: string;
  expires_in: number;
  token_type?: string;
}

export type Role = "citizen" | "expert" | "stakeholder" | "analyst" | "operator" | "auditor" | "admin";
export type Method = "single_choice" | "approval" | "ranked_choice" | "quadratic";
export type Status = "scheduled" | "open" | "closed" | "final" | "cancelled";

export interface Position {
  partition: number;
  offset: number;
}

export interface Decision {
  id: string;
  title: string;
  description: string;
  region: string;
  options: string[];
  opens_at: number;
  closes_at: number;
  weights: number[];
  quorum: number;
  method: Method;
  credits: number;
  electorate?: { roles?: string[]; regions?: string[]; roll?: string } | null;
  status?: Status;
  close?: { position: Position; kind: string; at: number } | null;
  result?: FinalResult | null;
  owner?: string;
}

export interface Outcome {
  kind: "winner" | "tie" | "no_votes" | string;
  option?: number;
  options?: number[];
}

export interface FinalResult {
  result: { outcome: Outcome; tally?: unknown; tree_size?: number; root?: string; rounds?: Round[] } & Record<string, unknown>;
  statement: string;
  tree_size?: number;
  root?: string;
  position?: Position;
  finalized_at?: number;
}

export interface Round {
  continuing: number[];
  composite: number[];
  exhausted: number;
  eliminated: number | null;
  tie_broken?: boolean;
}

export interface Results {
  decision_id: string;
  title?: string;
  method?: Method;
  /** null until the decision's first vote is counted */
  as_of: Position | null;
  options: { option: number; label?: string; composite: number }[];
  turnout: number;
  quorum?: number;
  quorum_met: boolean;
  leading: Outcome;
  rounds?: Round[];
  /** the consensus model's forecast; only the socket's counts carry it */
  prediction?: Prediction | null;
}

export interface BreakdownCell {
  option: number;
  component: string;
  count: number;
  share: number;
  weighted?: number;
}

export interface Breakdown {
  decision_id: string;
  as_of: Position | null;
  cells: BreakdownCell[];
  turnout_by_component: number[] | null;
  component_weights?: number[];
}

export interface Ballot {
  option?: number;
  approve?: number[];
  ranking?: number[];
  allocation?: [number, number][];
}

export interface Receipt {
  vote_id: string;
  decision_id: string;
  position: Position | null;
  leaf_hash: string;
  leaf: string;
}

export interface MyVote {
  decision_id: string;
  title: string;
  option: number | null;
  ballot: Ballot;
  cast_at: number;
  receipt: Receipt;
  proof: {
    status: "pending" | "checkpointed" | "anchored";
    index?: number;
    checkpoint_size?: number;
    links: { proof: string; checkpoints: string; anchor?: string };
  };
}

export interface Page<T> {
  page: number;
  per_page: number;
  total: number;
  next_page: number | null;
  votes?: T[];
  decisions?: T[];
}

export interface Verification {
  role: Role;
  weight: number;
  verified: boolean;
  field?: string;
  regions?: string[];
  verified_by?: string;
  verified_at?: number;
}

export interface Sensor {
  sensor_id: string;
  region: string;
  latitude: number;
  longitude: number;
  metrics: string[];
}

export interface Window {
  start: number;
  end: number;
  count: number;
  mean: number;
  min: number;
  max: number;
  last: number;
  last_at?: number;
  std_dev?: number;
  variance?: number;
}

export interface Anomaly {
  sensor_id: string;
  window_start: number;
  z_flagged: boolean;
  z_max: number | null;
  model_flagged: boolean;
  p_fault: number | null;
}

export interface RegionMetrics {
  region: string;
  as_of: Position;
  metrics: { metric: string; unit: string; short_window: Window | null; long_window: Window | null; anomalies: Anomaly[] }[];
  model?: { available: boolean; reason?: string };
  too_late_readings?: number;
}

export interface Trend {
  metric: string;
  region?: string;
  sensor_id?: string | null;
  bucket: string;
  unit?: string;
  points: Window[];
}

export interface SensorAlert {
  region: string;
  metric: string;
  kind: "threshold_exceeded" | "threshold_cleared" | string;
  threshold: number;
  value: number;
  window_start_ms: number;
  as_of?: Position;
}

/** The consensus model's forecast: P(option wins at close), pushed with results. */
export interface Prediction {
  model_version: string;
  probabilities: number[];
  /** the fraction of the voting window gone when it was made */
  elapsed: number;
  /** the option the tally leads with now (the naive forecast) */
  current_leader: number | null;
}

export interface AgentAssessment {
  agent: string;
  version: string;
  scores: { option: number; score: number; low: number; high: number }[];
  recommended: number;
  findings: { option: number | null; code: string; message: string }[];
  missing: string[];
}

/** The analysis agents' reading of a decision's impact statement, and the forecast. */
export interface Analysis {
  decision_id: string;
  region: string;
  assessments: AgentAssessment[];
  consensus: { mean_scores: number[]; recommended: number; agreeing: number };
  prediction: Prediction | null;
  prediction_unavailable: string | null;
  versions: string[];
  evidence_read_at: number;
}
