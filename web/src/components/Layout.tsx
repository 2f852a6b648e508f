import { useEffect, useState, type ReactNode } from "react";
import { Link as RouterLink, useLocation, useNavigate } from "react-router-dom";
import {
  AppBar,
  Badge,
  Box,
  Button,
  Container,
  Divider,
  Drawer,
  List,
  ListItemButton,
  ListItemText,
  Toolbar,
  Typography,
  useMediaQuery,
  useTheme,
} from "@mui/material";
import { api } from "../api/client";
import { closeSockets, watchNotifications } from "../live/live";
import { can, signedOut, useAppDispatch, useAppSelector } from "../store";

interface NavItem {
  to: string;
  label: string;
  show: boolean;
}

export function Layout({ children }: { children: ReactNode }) {
  const session = useAppSelector((s) => s.auth.session);
  const unread = useAppSelector((s) => s.notifications.items.filter((n) => !n.read).length);
  const dispatch = useAppDispatch();
  const navigate = useNavigate();
  const location = useLocation();
  const theme = useTheme();
  const narrow = useMediaQuery(theme.breakpoints.down("md"));
  const [open, setOpen] = useState(false);
  const role = session?.role;

  useEffect(() => {
    if (!session) return;
    return watchNotifications();
  }, [session?.userId]); // eslint-disable-line react-hooks/exhaustive-deps

  useEffect(() => setOpen(false), [location.pathname]);

  const signOut = async () => {
    const refresh = session?.tokens.refresh_token;
    dispatch(signedOut());
    closeSockets();
    if (refresh) api.post("/api/v1/auth/revoke-token", { refresh_token: refresh }, { auth: false }).catch(() => {});
    navigate("/signin");
  };

  const items: NavItem[] = [
    { to: "/", label: "Decisions", show: !!session },
    { to: "/dashboard", label: "Environment", show: !!session },
    { to: "/my-votes", label: "My votes", show: !!session },
    { to: "/profile", label: "Profile", show: !!session },
    { to: "/claim", label: "Claim invitation", show: can.vote(role) },
    { to: "/admin/create", label: "New decision", show: can.create(role) },
    { to: "/admin/verify", label: "Verify expert", show: can.verifyExperts(role) },
    { to: "/admin/feed", label: "Operations feed", show: can.adminFeed(role) },
  ].filter((i) => i.show);

  const isCurrent = (to: string) => (to === "/" ? location.pathname === "/" : location.pathname.startsWith(to));

  const notificationsLink = session && (
    <Button component={RouterLink} to="/notifications" color="inherit" aria-label={`Notifications, ${unread} unread`}>
      <Badge badgeContent={unread} color="error" max={99}>
        <svg aria-hidden="true" width="22" height="22" viewBox="0 0 24 24" fill="currentColor">
          <path d="M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22Zm7-6V11a7 7 0 0 0-5.5-6.84V3a1.5 1.5 0 0 0-3 0v1.16A7 7 0 0 0 5 11v5l-2 2v1h18v-1l-2-2Z" />
        </svg>
      </Badge>
    </Button>
  );

  return (
    <Box sx={{ minHeight: "100vh", display: "flex", flexDirection: "column" }}>
      <a className="skip-link" href="#main">
        Skip to content
      </a>
      <AppBar position="sticky" color="primary" component="header">
        <Toolbar sx={{ gap: 1 }}>
          {narrow && session && (
            <Button color="inherit" onClick={() => setOpen(true)} aria-label="Open menu" aria-expanded={open} aria-controls="nav-drawer" sx={{ minWidth: 40 }}>
              <svg aria-hidden="true" width="24" height="24" viewBox="0 0 24 24" fill="currentColor">
                <path d="M3 6h18v2H3V6Zm0 5h18v2H3v-2Zm0 5h18v2H3v-2Z" />
              </svg>
            </Button>
          )}
          <Typography variant="h6" component={RouterLink} to="/" sx={{ color: "inherit", textDecoration: "none", mr: 2, fontWeight: 700 }}>
            Canopy
          </Typography>
          {!narrow && session && (
            <Box component="nav" aria-label="Main" sx={{ display: "flex", gap: 0.5, flexWrap: "wrap", flexGrow: 1 }}>
              {items.map((i) => (
                <Button
                  key={i.to}
                  component={RouterLink}
                  to={i.to}
                  color="inherit"
                  aria-current={isCurrent(i.to) ? "page" : undefined}
                  sx={{ textDecoration: isCurrent(i.to) ? "underline" : "none", textUnderlineOffset: 6 }}
                >
                  {i.label}
                </Button>
              ))}
            </Box>
          )}
          <Box sx={{ flexGrow: narrow || !session ? 1 : 0 }} />
          {notificationsLink}
          {session ? (
            <Button color="inherit" onClick={signOut}>
              Sign out
            </Button>
          ) : (
            <>
              <Button color="inherit" component={RouterLink} to="/signin">
                Sign in
              </Button>
              <Button color="inherit" component={RouterLink} to="/register">
                Register
              </Button>
            </>
          )}
        </Toolbar>
      </AppBar>
      {narrow && (
        <Drawer id="nav-drawer" open={open} onClose={() => setOpen(false)}>
          <Box component="nav" aria-label="Main" sx={{ width: 260 }}>
            <Typography sx={{ p: 2, fontWeight: 700 }}>Canopy</Typography>
            <Divider />
            <List>
              {items.map((i) => (
                <ListItemButton key={i.to} component={RouterLink} to={i.to} selected={isCurrent(i.to)} aria-current={isCurrent(i.to) ? "page" : undefined}>
                  <ListItemText primary={i.label} />
                </ListItemButton>
              ))}
            </List>
          </Box>
        </Drawer>
      )}
      <Container component="main" id="main" maxWidth="lg" sx={{ py: { xs: 2, sm: 3 }, flexGrow: 1 }}>
        {children}
      </Container>
      <Box component="footer" sx={{ py: 2, textAlign: "center", color: "text.secondary", fontSize: 14 }}>
        {session ? `Signed in as ${session.username ?? session.userId} (${session.role})` : "Canopy: decisions anyone can check"}
      </Box>
    </Box>
  );
}
