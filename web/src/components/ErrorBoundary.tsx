import { Component, type ReactNode } from "react";
import { Alert, Button } from "@mui/material";

/** A page that throws shows what happened instead of a blank screen. */
export class ErrorBoundary extends Component<{ children: ReactNode; resetKey: string }, { error: Error | null; key: string }> {
  state = { error: null as Error | null, key: this.props.resetKey };

  static getDerivedStateFromError(error: Error) {
    return { error };
  }

  static getDerivedStateFromProps(props: { resetKey: string }, state: { error: Error | null; key: string }) {
    return props.resetKey !== state.key ? { error: null, key: props.resetKey } : null;
  }

  render() {
    if (!this.state.error) return this.props.children;
    return (
      <Alert severity="error" role="alert" action={<Button onClick={() => window.location.reload()}>Reload</Button>}>
        This page failed: {this.state.error.message}
      </Alert>
    );
  }
}
