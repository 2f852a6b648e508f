// The client's state: who is signed in, the receipts of votes cast here, live results per
// decision and the notification centre.
import { configureStore, createSlice, type PayloadAction } from "@reduxjs/toolkit";
import { useDispatch, useSelector, type TypedUseSelectorHook } from "react-redux";
import { useTokenStore } from "../api/client";
import type { Breakdown, Receipt, Results, Role, TokenPair } from "../api/types";

const TOKENS_KEY = "canopy.tokens";
const RECEIPTS_KEY = "canopy.receipts";
const TRUSTED_KEY = "canopy.record-key";
const NOTICES_KEY = "canopy.notifications";

export interface Session {
  tokens: TokenPair;
  userId: string;
  role: Role;
  weight: number;
  username?: string;
}

/** The claims the node puts in its access token (RS256 JWT): sub, role, weight (millionths). */
export function sessionFrom(tokens: TokenPair, username?: string): Session | null {
  try {
    const payload = tokens.access_token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(payload.padEnd(Math.ceil(payload.length / 4) * 4, "=")));
    return { tokens, userId: claims.sub, role: claims.role, weight: (claims.weight ?? 1_000_000) / 1_000_000, username };
  } catch {
    return null;
  }
}

function load<T>(key: string, fallback: T): T {
  try {
    const raw = localStorage.getItem(key);
    return raw ? (JSON.parse(raw) as T) : fallback;
  } catch {
    return fallback;
  }
}

const saved = load<{ tokens: TokenPair; username?: string } | null>(TOKENS_KEY, null);

const auth = createSlice({
  name: "auth",
  initialState: { session: saved ? sessionFrom(saved.tokens, saved.username) : null } as { session: Session | null },
  reducers: {
    signedIn(state, action: PayloadAction<{ tokens: TokenPair; username?: string }>) {
      state.session = sessionFrom(action.payload.tokens, action.payload.username ?? state.session?.username);
    },
    signedOut(state) {
      state.session = null;
    },
  },
});

const receipts = createSlice({
  name: "receipts",
  initialState: load<Record<string, Receipt>>(RECEIPTS_KEY, {}),
  reducers: {
    // Keyed by voter and decision: a shared browser keeps each account's receipts apart.
    receiptKept(state, action: PayloadAction<{ userId: string; receipt: Receipt }>) {
      state[`${action.payload.userId}/${action.payload.receipt.decision_id}`] = action.payload.receipt;
    },
  },
});

export type LiveMode = "connecting" | "socket" | "polling";

const live = createSlice({
  name: "live",
  initialState: {
    results: {} as Record<string, Results>,
    breakdown: {} as Record<string, Breakdown>,
    mode: {} as Record<string, LiveMode>,
    status: {} as Record<string, { status: string; at: number }>,
  },
  reducers: {
    resultsReceived(state, action: PayloadAction<Results>) {
      const r = action.payload;
      const old = state.results[r.decision_id];
      const labels = old?.options;
      // The socket's counts carry no labels: keep the ones the results route gave.
      state.results[r.decision_id] = {
        ...old,
        ...r,
        options: r.options.map((o) => ({ ...o, label: o.label ?? labels?.find((l) => l.option === o.option)?.label })),
      };
    },
    breakdownReceived(state, action: PayloadAction<Breakdown>) {
      state.breakdown[action.payload.decision_id] = action.payload;
    },
    modeChanged(state, action: PayloadAction<{ decisionId: string; mode: LiveMode }>) {
      state.mode[action.payload.decisionId] = action.payload.mode;
    },
    statusChanged(state, action: PayloadAction<{ decision_id: string; status: string; at: number }>) {
      state.status[action.payload.decision_id] = { status: action.payload.status, at: action.payload.at };
    },
  },
});

export interface Notice {
  id: string;
  kind: "vote_confirmed" | "decision_completed" | "vote_cast" | "alert" | string;
  title: string;
  body?: string;
  decisionId?: string;
  leafHash?: string;
  at: number;
  read: boolean;
}

const notifications = createSlice({
  name: "notifications",
  initialState: { items: load<Notice[]>(NOTICES_KEY, []), connected: false },
  reducers: {
    noticed(state, action: PayloadAction<Omit<Notice, "id" | "at" | "read"> & { id?: string }>) {
      const id = action.payload.id ?? `${Date.now()}-${Math.random().toString(36).slice(2)}`;
      if (state.items.some((n) => n.id === id)) return;
      state.items.unshift({ ...action.payload, id, at: Date.now(), read: false });
      state.items = state.items.slice(0, 200);
    },
    allRead(state) {
      state.items.forEach((n) => (n.read = true));
    },
    connection(state, action: PayloadAction<boolean>) {
      state.connected = action.payload;
    },
  },
  extraReducers: (builder) => builder.addCase(auth.actions.signedOut, (state) => void (state.items = [])),
});

export const trustedKey = {
  get: () => localStorage.getItem(TRUSTED_KEY) ?? "",
  set: (key: string) => (key ? localStorage.setItem(TRUSTED_KEY, key) : localStorage.removeItem(TRUSTED_KEY)),
};

export const store = configureStore({
  reducer: {
    auth: auth.reducer,
    receipts: receipts.reducer,
    live: live.reducer,
    notifications: notifications.reducer,
  },
});

export const { signedIn, signedOut } = auth.actions;
export const { receiptKept } = receipts.actions;
export const { resultsReceived, breakdownReceived, modeChanged, statusChanged } = live.actions;
export const { noticed, allRead, connection } = notifications.actions;

// Persist the session and the receipts; the API client reads tokens from the store.
store.subscribe(() => {
  const { auth: a, receipts: r, notifications: n } = store.getState();
  try {
    if (a.session) localStorage.setItem(TOKENS_KEY, JSON.stringify({ tokens: a.session.tokens, username: a.session.username }));
    else localStorage.removeItem(TOKENS_KEY);
    localStorage.setItem(RECEIPTS_KEY, JSON.stringify(r));
    localStorage.setItem(NOTICES_KEY, JSON.stringify(n.items));
  } catch {
    /* storage full or disabled: the session lasts as long as the page */
  }
});

useTokenStore({
  get: () => store.getState().auth.session?.tokens ?? null,
  set: (tokens) => store.dispatch(tokens ? signedIn({ tokens }) : signedOut()),
});

export type RootState = ReturnType<typeof store.getState>;
export type AppDispatch = typeof store.dispatch;
export const useAppDispatch: () => AppDispatch = useDispatch;
export const useAppSelector: TypedUseSelectorHook<RootState> = useSelector;

export const can = {
  vote: (role?: Role) => role === "citizen" || role === "expert" || role === "stakeholder",
  create: (role?: Role) => role === "operator" || role === "admin",
  verifyExperts: (role?: Role) => role === "admin",
  adminFeed: (role?: Role) => role === "operator" || role === "admin",
};
