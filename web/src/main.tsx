import { StrictMode, type ReactNode } from "react";
import { createRoot } from "react-dom/client";
import { Provider } from "react-redux";
import { BrowserRouter, Navigate, Route, Routes, useLocation } from "react-router-dom";
import { CssBaseline, ThemeProvider, createTheme } from "@mui/material";
import { ErrorBoundary } from "./components/ErrorBoundary";
import { Layout } from "./components/Layout";
import { AdminFeed, CreateDecision, VerifyExpert } from "./pages/Admin";
import { Claim, Register, SignIn } from "./pages/Auth";
import { Dashboard } from "./pages/Dashboard";
import { DecisionPage } from "./pages/DecisionPage";
import { Decisions } from "./pages/Decisions";
import { MyVotes, Notifications, Profile } from "./pages/Me";
import { VerifyVote } from "./pages/VerifyVote";
import { can, store, useAppSelector, type Session } from "./store";
import "./styles.css";

const theme = createTheme({
  palette: {
    primary: { main: "#1b5e20" },
    secondary: { main: "#4e342e" },
    success: { main: "#1b5e20" },
    error: { main: "#b71c1c" },
    text: { secondary: "rgba(0, 0, 0, 0.68)" },
  },
  typography: { button: { textTransform: "none", fontWeight: 600 } },
});

/** Signed-in pages (and, with `allow`, only some roles); others go to sign-in. */
function Guard({ children, allow }: { children: ReactNode; allow?: (role?: Session["role"]) => boolean }) {
  const session = useAppSelector((s) => s.auth.session);
  const location = useLocation();
  if (!session) return <Navigate to="/signin" replace state={{ from: location.pathname + location.search }} />;
  if (allow && !allow(session.role)) return <Navigate to="/" replace />;
  return <>{children}</>;
}

function App() {
  const location = useLocation();
  return (
    <Layout>
      <ErrorBoundary resetKey={location.pathname}>
      <Routes>
        <Route path="/signin" element={<SignIn />} />
        <Route path="/register" element={<Register />} />
        <Route path="/verify/:decisionId/:leaf" element={<VerifyVote />} />
        <Route path="/" element={<Guard><Decisions /></Guard>} />
        <Route path="/decisions/:id" element={<Guard><DecisionPage /></Guard>} />
        <Route path="/claim" element={<Guard><Claim /></Guard>} />
        <Route path="/dashboard" element={<Guard><Dashboard /></Guard>} />
        <Route path="/my-votes" element={<Guard><MyVotes /></Guard>} />
        <Route path="/profile" element={<Guard><Profile /></Guard>} />
        <Route path="/notifications" element={<Guard><Notifications /></Guard>} />
        <Route path="/admin/create" element={<Guard allow={can.create}><CreateDecision /></Guard>} />
        <Route path="/admin/verify" element={<Guard allow={can.verifyExperts}><VerifyExpert /></Guard>} />
        <Route path="/admin/feed" element={<Guard allow={can.adminFeed}><AdminFeed /></Guard>} />
        <Route path="*" element={<Navigate to="/" replace />} />
      </Routes>
      </ErrorBoundary>
    </Layout>
  );
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <Provider store={store}>
      <ThemeProvider theme={theme}>
        <CssBaseline />
        <BrowserRouter>
          <App />
        </BrowserRouter>
      </ThemeProvider>
    </Provider>
  </StrictMode>,
);
