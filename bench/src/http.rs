//! `canopy-bench http`: the voting API over real HTTP, loaded from outside the server's
//! process. The server is `canopy-bench http-server`, a process of its own started by the
//! bench (a node with its accounts and a decision, the lake on). The peak rates come from
//! wrk (Debian's package) when it is installed, from this process's own closed-loop client
//! otherwise; fixed rates come from this process's open-loop client, whose latencies count
//! from each request's intended send time, so a stalled server is charged for the queue it
//! causes (no coordinated omission). Then the server is stopped and started again on the
//! same data, and the same open loop measures the first minute after the restart.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use canopy_node::lake::LakeSettings;
use canopy_node::{Node, NodeConfig};
use canopy_serving::api::create_user;
use canopy_serving::auth::Role;
use canopy_serving::limits::Rate;
use canopy_serving::state::ApiConfig;
use clap::Args;
use serde_json::{Value, json};

use crate::api_setup::create_decision;
use crate::round3;

#[derive(Args)]
pub struct HttpArgs {
    /// Authenticated voters casting.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Concurrent connections in the closed-loop (peak) phases.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Seconds per peak phase.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// The `/healthz` and cast phases, run one after the other this many times: the
    /// figures are the pair with the median ratio, and every pair's ratio is listed (this
    /// machine's speed drifts within minutes, so only a pair compares).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pairs: u32,
    /// The open-loop rate, votes per second.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Seconds the open loop is held, and again after the restart.
    #[arg(long, default_value_t = 60.0)]
    open_seconds: f64,
    /// Dataflow worker threads of the server.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Run the server without its analytics lake (which otherwise flushes every 10 s).
    #[arg(long)]
    no_lake: bool,
    /// Skip the phase after a restart.
    #[arg(long)]
    no_restart: bool,
    /// wrk, for the peak phases; without it the bench's own client measures them.
    #[arg(long, default_value = "wrk")]
    wrk: PathBuf,
}

/// The server side, started by `http` (hidden from the list of benchmarks).
#[derive(Args)]
pub struct HttpServerArgs {
    #[arg(long)]
    users: usize,
    #[arg(long)]
    workers: usize,
    /// The node's data; a second start on the same folder finds its accounts and decision.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    no_lake: bool,
}

const OWNER: &str = "bench-owner";
const DECISION_TITLE: &str = "Benchmark decision";

/// What the server tells the bench once it listens: one JSON line on its stdout.
struct Target {
    client: reqwest::Client,
    base: String,
    tokens: Vec<String>,
    decision: String,
}

impl Target {
    fn of(line: &str) -> anyhow::Result<Self> {
        let said: Value = serde_json::from_str(line).context("the server's first line")?;
        let text = |key: &str| {
            said[key]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("no {key} in {line}"))
        };
        let tokens = said["tokens"]
            .as_array()
            .context("no tokens")?
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect();
        Ok(Self {
            client: canopy_testkit::http_client_builder()
                .pool_max_idle_per_host(1024)
                .build()?,
            base: text("base")?,
            tokens,
            decision: text("decision")?,
        })
    }

    fn results_path(&self) -> String {
        format!("/api/v1/voting/decision/{}/results", self.decision)
    }

    async fn cast(&self, n: u64) -> bool {
        let token = &self.tokens[n as usize % self.tokens.len()];
        let body = json!({ "decision_id": self.decision, "option": n % 3 });
        let sent = self
            .client
            .post(format!("{}/api/v1/voting/cast-vote", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await;
        ok_with(sent, reqwest::StatusCode::CREATED).await
    }

    async fn health(&self) -> bool {
        let sent = self
            .client
            .get(format!("{}/healthz", self.base))
            .send()
            .await;
        ok_with(sent, reqwest::StatusCode::OK).await
    }

    async fn results(&self, n: u64) -> bool {
        let token = &self.tokens[n as usize % self.tokens.len()];
        let sent = self
            .client
            .get(format!("{}{}", self.base, self.results_path()))
            .bearer_auth(token)
            .send()
            .await;
        ok_with(sent, reqwest::StatusCode::OK).await
    }
}

/// True if the response came with `status` and its whole body.
async fn ok_with(
    sent: Result<reqwest::Response, reqwest::Error>,
    status: reqwest::StatusCode,
) -> bool {
    match sent {
        Ok(response) if response.status() == status => response.bytes().await.is_ok(),
        _ => false,
    }
}

pub(crate) fn percentile(latencies: &mut [f64], p: f64) -> f64 {
    if latencies.is_empty() {
        return f64::NAN;
    }
    latencies.sort_unstable_by(f64::total_cmp);
    latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)]
}

// ---------------------------------------------------------------------------------------
// The server process

pub fn serve(args: HttpServerArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve_async(args))
}

async fn serve_async(args: HttpServerArgs) -> anyhow::Result<()> {
    let unlimited = Rate {
        per_second: 1e9,
        burst: 1e9,
    };
    let mut config = NodeConfig::new(&args.dir);
    config.listen = "127.0.0.1:0".parse()?;
    config.workers = args.workers;
    config.api = ApiConfig {
        per_user: unlimited,
        per_address: unlimited,
        ..ApiConfig::default()
    };
    if !args.no_lake {
        config.lake = Some(LakeSettings::new(args.dir.join("lake")));
    }
    let node = Node::start(config).await.context("starting the server")?;
    let state = Arc::clone(&node.state);
    let store = state.store.as_ref();
    let issue =
        |id, role| -> anyhow::Result<String> { Ok(state.keys.issue(id, role, 1_000_000)?.0) };

    let owner = match store.user_by_username(OWNER).await? {
        Some(found) => found.id,
        None => {
            eprintln!("creating {} voters ...", args.users);
            create_user(
                store,
                OWNER,
                "a long passphrase for the benchmark",
                Role::Operator,
            )
            .await?
        }
    };
    let mut tokens = Vec::with_capacity(args.users);
    for n in 0..args.users {
        let name = format!("voter{n}");
        // Accounts go through the store (argon2 is deliberately slow); tokens are real.
        let id = match store.user_by_username(&name).await? {
            Some(found) => found.id,
            None => {
                let id = create_user(store, &name, "bench-voter-password", Role::Citizen).await?;
                // As `register` does: the node keeps a new voter's secrets, so its first
                // vote reads no store (after a restart the node loads them all).
                state.salts.key(store, id).await?;
                state.salts.salt(store, id).await?;
                id
            }
        };
        tokens.push(issue(id, Role::Citizen)?);
    }
    let base = format!("http://{}", node.addr);
    let decision = match store
        .decisions()
        .await?
        .into_iter()
        .find(|d| d.title == DECISION_TITLE)
    {
        Some(found) => found.id.to_string(),
        None => {
            let client = canopy_testkit::http_client();
            let create = json!({ "title": DECISION_TITLE, "options": ["a", "b", "c"], "closes_at": i64::MAX, "quorum": 1 });
            create_decision(&client, &base, &issue(owner, Role::Operator)?, &create).await?
        }
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "{}",
        json!({ "base": base, "tokens": tokens, "decision": decision })
    )?;
    stdout.flush()?;
    drop(stdout);
    // Serves until the bench closes our stdin.
    tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await??;
    node.shutdown().await?;
    Ok(())
}

/// The server process, and its stdin: closing it stops the server.
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Server {
    fn start(args: &HttpArgs, dir: &Path) -> anyhow::Result<(Self, Target)> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("http-server")
            .args(["--users", &args.users.to_string()])
            .args(["--workers", &args.workers.to_string()])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if args.no_lake {
            command.arg("--no-lake");
        }
        let mut child = command.spawn().context("starting the server process")?;
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("the server's stdout")?).read_line(&mut line)?;
        ensure!(!line.is_empty(), "the server exited before it listened");
        Ok((Self { child, stdin }, Target::of(&line)?))
    }

    /// Stops the server (it finishes what is in flight) and waits for it.
    fn stop(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        ensure!(status.success(), "the server process exited with {status}");
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The load

pub fn run(args: HttpArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

struct Peak {
    client: &'static str,
    floor: f64,
    votes_per_s: f64,
    rejected: u64,
    results_p50_ms: f64,
    results_p99_ms: f64,
    /// The server's CPU per request by thread, under wrk's `/healthz` and its casts.
    floor_cpu: Option<ThreadCpu>,
    cast_cpu: Option<ThreadCpu>,
    /// Every (`/healthz`, cast) pair's ratio, in the order run.
    ratios: Vec<f64>,
}

/// The server's CPU time per request over a wrk run, by thread name (tokio's workers
/// together), in µs: where a cast's cost lies against a `/healthz`.
type ThreadCpu = BTreeMap<String, f64>;

/// Each thread of `pid`, by its name (numbered threads under one name) and id, and its CPU
/// time so far, in clock ticks. Kept per thread id: a pool thread that exits during a run
/// and one started in its place must not be set against each other.
fn thread_ticks(pid: u32) -> BTreeMap<(String, String), u64> {
    let mut ticks = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return ticks;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("stat")),
        ) else {
            continue;
        };
        // The fields after the name's closing parenthesis, from the state (field 3) on:
        // utime and stime are fields 14 and 15.
        let Some((_, after_name)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        let (Some(user), Some(system)) = (field(14), field(15)) else {
            continue;
        };
        let name = comm
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
        let id = task.file_name().to_string_lossy().into_owned();
        ticks.insert((name.to_owned(), id), user + system);
    }
    ticks
}

/// The CPU the threads of each name spent between two [`thread_ticks`], per request, in
/// µs (a thread that exited meanwhile is not counted).
fn cpu_per_request(
    before: &BTreeMap<(String, String), u64>,
    after: &BTreeMap<(String, String), u64>,
    requests: u64,
) -> ThreadCpu {
    // Linux reports thread times in USER_HZ ticks, 100 a second on every architecture's ABI.
    const TICK_US: f64 = 10_000.0;
    let mut spent: BTreeMap<String, u64> = BTreeMap::new();
    for (thread, ticks) in after {
        let since = ticks.saturating_sub(before.get(thread).copied().unwrap_or(0));
        *spent.entry(thread.0.clone()).or_default() += since;
    }
    spent
        .into_iter()
        .filter(|(_, ticks)| *ticks > 0 && requests > 0)
        .map(|(name, ticks)| (name, round3(ticks as f64 * TICK_US / requests as f64)))
        .collect()
}

async fn run_async(args: HttpArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, target) = Server::start(&args, dir.path())?;
    let target = Arc::new(target);

    // The open loop first: after wrk's peak the server would still be writing that burst's
    // checkpoints, record and lake files while the steady rate is measured.
    eprintln!(
        "open loop: cast-vote at {} votes/s for {} s, results read beside it ...",
        args.rate, args.open_seconds
    );
    let steady = open_loop(&target, args.rate, args.open_seconds).await?;
    eprintln!("{}\n{}", steady.summary(), steady.timeline());
    let peak = match wrk_available(&args.wrk) {
        true => peak_with_wrk(&args, &target, server.child.id())?,
        false => {
            eprintln!(
                "no wrk at {} (apt-get install wrk): the peak phases use the bench's own client",
                args.wrk.display()
            );
            peak_with_own_client(&args, &target).await?
        }
    };
    eprintln!(
        "peak {:.0} votes/s, floor {:.0} req/s ({}); results p99 {:.2} ms",
        peak.votes_per_s, peak.floor, peak.client, peak.results_p99_ms
    );
    server.stop()?;

    let after_restart = if args.no_restart {
        None
    } else {
        eprintln!(
            "restart: the server again on the same data, then the open loop at once for {} s ...",
            args.open_seconds
        );
        let (server, target) = Server::start(&args, dir.path())?;
        let figures = open_loop(&Arc::new(target), args.rate, args.open_seconds).await?;
        eprintln!("{}\n{}", figures.summary(), figures.timeline());
        server.stop()?;
        Some(figures)
    };

    let met = |figure: f64, target: f64| figure.is_finite() && figure < target;
    println!(
        "{}",
        json!({
            "bench": "http",
            "client": peak.client,
            "lake": !args.no_lake,
            "votes_per_s": peak.votes_per_s.round(),
            "rejected": peak.rejected,
            "floor_req_per_s": peak.floor.round(),
            "ratio": round3(peak.votes_per_s / peak.floor),
            "pair_ratios": peak.ratios.iter().map(|r| round3(*r)).collect::<Vec<_>>(),
            "results_p50_ms": round3(peak.results_p50_ms),
            "results_p99_ms": round3(peak.results_p99_ms),
            "server_cpu_us_per_request": {
                "healthz": peak.floor_cpu,
                "cast": peak.cast_cpu,
            },
            "open_loop": steady.json(),
            "after_restart": after_restart.as_ref().map(OpenLoop::json),
            "seed_target": {
                "cast_p99_under_100_ms": met(steady.cast_p99_ms, 100.0),
                "results_p99_under_50_ms": met(steady.results_p99_ms, 50.0),
                "at_rate": args.rate,
            },
        })
    );
    Ok(())
}

// -- wrk

fn wrk_available(wrk: &Path) -> bool {
    Command::new(wrk)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// What wrk printed that the bench reads, and the server's CPU over the run.
struct WrkFigures {
    requests_per_s: f64,
    non_2xx: u64,
    p50_ms: f64,
    p99_ms: f64,
    server_cpu: ThreadCpu,
}

fn wrk(
    args: &HttpArgs,
    server: u32,
    connections: usize,
    extra: &[&str],
    url: &str,
) -> anyhow::Result<WrkFigures> {
    let ticks_before = thread_ticks(server);
    let output = Command::new(&args.wrk)
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{}s", args.seconds),
            "--latency",
        ])
        .args(extra)
        .arg(url)
        .output()
        .context("running wrk")?;
    let ticks_after = thread_ticks(server);
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |prefix: &str| {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(prefix).map(str::trim))
    };
    let requests_per_s = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let non_2xx = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let latency = |prefix: &str| field(prefix).map_or(f64::NAN, wrk_ms);
    // "  123456 requests in 5.00s, 40.1MB read"
    let requests: u64 = text
        .lines()
        .find(|line| line.contains(" requests in "))
        .and_then(|line| line.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no request count in wrk's output:\n{text}"))?;
    Ok(WrkFigures {
        requests_per_s,
        non_2xx,
        p50_ms: latency("50%"),
        p99_ms: latency("99%"),
        server_cpu: cpu_per_request(&ticks_before, &ticks_after, requests),
    })
}

/// wrk's latency, `812.00us`, `1.20ms` or `2.01s`, in milliseconds.
fn wrk_ms(text: &str) -> f64 {
    let number = |suffix: &str| {
        text.strip_suffix(suffix)
            .and_then(|n| n.parse::<f64>().ok())
    };
    if let Some(us) = number("us") {
        us / 1e3
    } else if let Some(ms) = number("ms") {
        ms
    } else if let Some(s) = number("s") {
        s * 1e3
    } else if let Some(m) = number("m") {
        m * 60e3
    } else {
        f64::NAN
    }
}

/// A wrk script that casts, rotating the voters' tokens and the options. The requests are
/// formatted once, when each wrk thread starts, and then handed out in turn: formatting one
/// per request in Lua takes CPU from the server on the same cores, and wrk's `/healthz` run,
/// the floor the peak is set against, formats none.
fn cast_script(target: &Target) -> String {
    let tokens: Vec<String> = target.tokens.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        r#"local tokens = {{{tokens}}}
local requests = {{}}
local n = 0
init = function(args)
  -- The requests a counter from 1 to 3 x #tokens would make, in its order.
  local count = #tokens * 3
  for i = 1, count do
    local body = '{{"decision_id":"{decision}","option":' .. (i % 3) .. '}}'
    requests[i] = wrk.format("POST", "/api/v1/voting/cast-vote",
      {{ ["Authorization"] = "Bearer " .. tokens[(i % #tokens) + 1], ["Content-Type"] = "application/json" }}, body)
  end
end
request = function()
  n = n % #requests + 1
  return requests[n]
end
"#,
        tokens = tokens.join(","),
        decision = target.decision
    )
}

fn peak_with_wrk(args: &HttpArgs, target: &Target, server: u32) -> anyhow::Result<Peak> {
    let mut script = tempfile::Builder::new().suffix(".lua").tempfile()?;
    script.write_all(cast_script(target).as_bytes())?;
    let script_path = script
        .path()
        .to_str()
        .context("a temporary path that is not UTF-8")?;
    let phase = |pair: u32, what: &str, extra: &[&str], path: &str| {
        eprintln!(
            "{what} ({pair} of {}): wrk {path}, {} connections, {} s ...",
            args.pairs, args.concurrency, args.seconds
        );
        wrk(
            args,
            server,
            args.concurrency,
            extra,
            &format!("{}{path}", target.base),
        )
    };
    let mut pairs = Vec::new();
    for pair in 1..=args.pairs {
        let floor = phase(pair, "floor", &[], "/healthz")?;
        let cast = phase(
            pair,
            "peak",
            &["-s", script_path],
            "/api/v1/voting/cast-vote",
        )?;
        eprintln!(
            "pair {pair}: {:.0} votes/s against {:.0} req/s, ratio {:.3}",
            cast.requests_per_s,
            floor.requests_per_s,
            cast.requests_per_s / floor.requests_per_s
        );
        pairs.push((floor, cast));
    }
    let ((floor, cast), ratios) = median_pair(pairs, |(floor, cast)| {
        cast.requests_per_s / floor.requests_per_s
    });
    eprintln!(
        "results: wrk GET results, 32 connections, {} s ...",
        args.seconds
    );
    let authorization = format!("Authorization: Bearer {}", target.tokens[0]);
    let results = wrk(
        args,
        server,
        32,
        &["-H", &authorization],
        &format!("{}{}", target.base, target.results_path()),
    )?;
    ensure!(
        results.non_2xx == 0,
        "{} results reads were refused",
        results.non_2xx
    );
    Ok(Peak {
        client: "wrk",
        floor: floor.requests_per_s,
        votes_per_s: cast.requests_per_s,
        rejected: cast.non_2xx,
        results_p50_ms: results.p50_ms,
        results_p99_ms: results.p99_ms,
        floor_cpu: Some(floor.server_cpu),
        cast_cpu: Some(cast.server_cpu),
        ratios,
    })
}

/// The (`/healthz`, cast) pair with the median ratio, and every pair's ratio in the order
/// run.
fn median_pair<P>(mut pairs: Vec<P>, ratio: impl Fn(&P) -> f64) -> (P, Vec<f64>) {
    let ratios = pairs.iter().map(&ratio).collect();
    pairs.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
    (pairs.swap_remove(pairs.len() / 2), ratios)
}

// -- the bench's own client

#[derive(Clone, Copy)]
enum Call {
    Cast,
    Health,
    Results,
}

/// Closed loop: `concurrency` callers back to back for `seconds`. Returns (ok per second,
/// latencies in ms).
async fn closed_loop(
    target: &Arc<Target>,
    call: Call,
    concurrency: usize,
    seconds: f64,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let callers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (target, counter) = (Arc::clone(target), Arc::clone(&counter));
            tokio::spawn(async move {
                let (mut ok, mut latencies) = (0u64, Vec::new());
                while Instant::now() < deadline {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let sent = Instant::now();
                    let succeeded = match call {
                        Call::Cast => target.cast(n).await,
                        Call::Health => target.health().await,
                        Call::Results => target.results(n).await,
                    };
                    if succeeded {
                        ok += 1;
                        latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                    }
                }
                (ok, latencies)
            })
        })
        .collect();
    let (mut ok, mut latencies) = (0u64, Vec::new());
    for caller in callers {
        let (n, l) = caller.await?;
        ok += n;
        latencies.extend(l);
    }
    Ok((ok as f64 / started.elapsed().as_secs_f64(), latencies))
}

async fn peak_with_own_client(args: &HttpArgs, target: &Arc<Target>) -> anyhow::Result<Peak> {
    let seconds = args.seconds as f64;
    let mut pairs = Vec::new();
    for _ in 0..args.pairs {
        let (floor, _) = closed_loop(target, Call::Health, args.concurrency, seconds).await?;
        let (votes_per_s, _) = closed_loop(target, Call::Cast, args.concurrency, seconds).await?;
        pairs.push((floor, votes_per_s));
    }
    let ((floor, votes_per_s), ratios) = median_pair(pairs, |(floor, votes)| votes / floor);
    let (_, mut results) = closed_loop(target, Call::Results, 32, seconds).await?;
    Ok(Peak {
        client: "canopy-bench",
        floor,
        votes_per_s,
        rejected: 0,
        results_p50_ms: percentile(&mut results, 0.50),
        results_p99_ms: percentile(&mut results, 0.99),
        // Measured under wrk only, whose runs say how many requests they answered.
        floor_cpu: None,
        cast_cpu: None,
        ratios,
    })
}

/// The figures of an open-loop phase.
struct OpenLoop {
    rate: f64,
    seconds: f64,
    ok: u64,
    failed: u64,
    /// Acknowledged votes per second over the phase (sends until its end, answers after).
    held_per_s: f64,
    cast_p50_ms: f64,
    cast_p99_ms: f64,
    cast_p999_ms: f64,
    cast_max_ms: f64,
    results_p99_ms: f64,
    /// Seconds of the schedule whose casts' p99 passed [`SLOW_SECOND_MS`].
    slow_seconds: usize,
    /// The schedule's worst seconds by p99, worst first.
    worst_seconds: Vec<SecondFigures>,
}

/// A second of the schedule is slow when its casts' p99 passes this.
const SLOW_SECOND_MS: f64 = 10.0;
/// How many of the worst seconds an open loop reports.
const WORST_SECONDS: usize = 5;

/// One second of an open loop's schedule: its casts (by intended send time) and what the
/// machine was waiting on meanwhile, so a tail can be told apart from a busy disk or CPU.
struct SecondFigures {
    second: usize,
    casts: usize,
    p99_ms: f64,
    max_ms: f64,
    /// Share of that second some task waited on I/O, and on a CPU (`/proc/pressure`,
    /// Linux's PSI; absent where the kernel has none).
    io_some_pct: Option<f64>,
    cpu_some_pct: Option<f64>,
}

impl SecondFigures {
    fn json(&self) -> Value {
        json!({
            "second": self.second,
            "casts": self.casts,
            "p99_ms": round3(self.p99_ms),
            "max_ms": round3(self.max_ms),
            "io_some_pct": self.io_some_pct.map(round3),
            "cpu_some_pct": self.cpu_some_pct.map(round3),
        })
    }

    fn summary(&self) -> String {
        let pct = |v: Option<f64>| v.map_or_else(|| "n/a".into(), |v| format!("{v:.0} %"));
        format!(
            "second {}: p99 {:.1} ms, max {:.1} ms over {} casts; I/O pressure {}, CPU pressure {}",
            self.second,
            self.p99_ms,
            self.max_ms,
            self.casts,
            pct(self.io_some_pct),
            pct(self.cpu_some_pct)
        )
    }
}

/// PSI totals (I/O, CPU) in µs at one moment; `None` where the kernel has no such file.
type PressureSample = (Option<u64>, Option<u64>);

/// The `some` line's `total` (µs some task has stalled since boot) of a PSI file.
fn pressure_total_us(resource: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/pressure/{resource}")).ok()?;
    let some = text.lines().find(|line| line.starts_with("some "))?;
    some.split_whitespace()
        .find_map(|field| field.strip_prefix("total="))?
        .parse()
        .ok()
}

/// PSI totals (I/O, CPU) at each whole second from `start`, until the task is aborted.
async fn sample_pressure(start: tokio::time::Instant, samples: Arc<Mutex<Vec<PressureSample>>>) {
    let mut tick = tokio::time::interval_at(start, Duration::from_secs(1));
    loop {
        tick.tick().await;
        let sample = (pressure_total_us("io"), pressure_total_us("cpu"));
        samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(sample);
    }
}

/// Per second of the schedule: its casts' p99 and max, and the pressure between the
/// samples that bound it.
fn seconds_of(
    latencies: &[(u64, f64)],
    rate: f64,
    pressure: &[PressureSample],
) -> Vec<SecondFigures> {
    let mut per_second: Vec<Vec<f64>> = Vec::new();
    for &(n, latency) in latencies {
        let second = (n as f64 / rate) as usize;
        if per_second.len() <= second {
            per_second.resize_with(second + 1, Vec::new);
        }
        per_second[second].push(latency);
    }
    let share =
        |from: Option<u64>, to: Option<u64>| Some((to?.saturating_sub(from?)) as f64 / 1e6 * 100.0);
    per_second
        .into_iter()
        .enumerate()
        .filter(|(_, casts)| !casts.is_empty())
        .map(|(second, mut casts)| {
            let bounds = (pressure.get(second), pressure.get(second + 1));
            let (io_some_pct, cpu_some_pct) = match bounds {
                (Some(from), Some(to)) => (share(from.0, to.0), share(from.1, to.1)),
                _ => (None, None),
            };
            SecondFigures {
                second,
                casts: casts.len(),
                p99_ms: percentile(&mut casts, 0.99),
                max_ms: casts.last().copied().unwrap_or(f64::NAN),
                io_some_pct,
                cpu_some_pct,
            }
        })
        .collect()
}

impl OpenLoop {
    fn json(&self) -> Value {
        json!({
            "rate": self.rate,
            "seconds": self.seconds,
            "held_per_s": self.held_per_s.round(),
            "ok": self.ok,
            "failed": self.failed,
            "p50_ms": round3(self.cast_p50_ms),
            "p99_ms": round3(self.cast_p99_ms),
            "p999_ms": round3(self.cast_p999_ms),
            "max_ms": round3(self.cast_max_ms),
            "results_p99_ms": round3(self.results_p99_ms),
            "slow_seconds": self.slow_seconds,
            "worst_seconds": self.worst_seconds.iter().map(SecondFigures::json).collect::<Vec<_>>(),
        })
    }

    fn summary(&self) -> String {
        format!(
            "{} ok, {} failed, {:.0} votes/s held; cast p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.1} ms; results p99 {:.2} ms",
            self.ok,
            self.failed,
            self.held_per_s,
            self.cast_p50_ms,
            self.cast_p99_ms,
            self.cast_p999_ms,
            self.cast_max_ms,
            self.results_p99_ms
        )
    }

    /// The worst seconds, one line each, after how many seconds were slow.
    fn timeline(&self) -> String {
        let mut text = format!(
            "{} of {:.0} s with a cast p99 over {SLOW_SECOND_MS} ms; the worst:",
            self.slow_seconds, self.seconds
        );
        for second in &self.worst_seconds {
            text.push_str("\n  ");
            text.push_str(&second.summary());
        }
        text
    }
}

/// Open loop: a vote sent every 1/rate s whatever happened to the others, for `seconds`;
/// each latency counts from the vote's intended send time. Beside it, 4 readers ask for the
/// results back to back (the seed's "results at 10 k votes/s").
async fn open_loop(target: &Arc<Target>, rate: f64, seconds: f64) -> anyhow::Result<OpenLoop> {
    let total = (rate * seconds) as u64;
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let failed = Arc::new(AtomicU64::new(0));
    let readers = {
        let target = Arc::clone(target);
        tokio::spawn(async move { closed_loop(&target, Call::Results, 4, seconds).await })
    };
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let pressure = Arc::new(Mutex::new(Vec::new()));
    let sampler = tokio::spawn(sample_pressure(start, Arc::clone(&pressure)));
    let mut sends = tokio::task::JoinSet::new();
    for n in 0..total {
        let intended = start + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(intended).await;
        let (target, latencies, failed) = (
            Arc::clone(target),
            Arc::clone(&latencies),
            Arc::clone(&failed),
        );
        sends.spawn(async move {
            if target.cast(1_000_000_000 + n).await {
                let latency = intended.elapsed().as_secs_f64() * 1e3;
                latencies
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((n, latency));
            } else {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        });
        while sends.try_join_next().is_some() {}
    }
    while let Some(sent) = sends.join_next().await {
        sent?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (_, mut results) = readers.await??;
    // One more sample closes the last second (the sampler ticks on whole seconds).
    tokio::time::sleep_until(start + Duration::from_secs_f64(seconds.ceil() + 0.05)).await;
    sampler.abort();
    let pressure = std::mem::take(&mut *pressure.lock().unwrap_or_else(PoisonError::into_inner));
    let timed = std::mem::take(&mut *latencies.lock().unwrap_or_else(PoisonError::into_inner));
    let mut seconds_figures = seconds_of(&timed, rate, &pressure);
    let slow_seconds = seconds_figures
        .iter()
        .filter(|second| second.p99_ms > SLOW_SECOND_MS)
        .count();
    seconds_figures.sort_by(|a, b| b.p99_ms.total_cmp(&a.p99_ms));
    seconds_figures.truncate(WORST_SECONDS);
    let mut latencies: Vec<f64> = timed.into_iter().map(|(_, latency)| latency).collect();
    let ok = latencies.len() as u64;
    Ok(OpenLoop {
        rate,
        seconds,
        ok,
        failed: failed.load(Ordering::Relaxed),
        held_per_s: ok as f64 / elapsed.max(seconds),
        cast_p50_ms: percentile(&mut latencies, 0.50),
        cast_p99_ms: percentile(&mut latencies, 0.99),
        cast_p999_ms: percentile(&mut latencies, 0.999),
        cast_max_ms: latencies.last().copied().unwrap_or(f64::NAN),
        results_p99_ms: percentile(&mut results, 0.99),
        slow_seconds,
        worst_seconds: seconds_figures,
    })
}

#[cfg(test)]
mod tests {
    use super::seconds_of;

    #[test]
    fn each_second_gets_its_own_casts_tail_and_the_pressure_between_its_samples() {
        // 100 casts a second for 3 s; second 1 has one stalled cast, second 2 none answered.
        let latencies: Vec<(u64, f64)> = (0..200)
            .map(|n| {
                (
                    n,
                    if n == 150 {
                        80.0
                    } else {
                        1.0 + (n % 10) as f64 / 10.0
                    },
                )
            })
            .collect();
        // PSI totals in µs at 0 s, 1 s and 2 s: I/O stalled 0.1 s then 0.5 s; no CPU file.
        let pressure = [
            (Some(1_000), None),
            (Some(101_000), None),
            (Some(601_000), None),
        ];
        let seconds = seconds_of(&latencies, 100.0, &pressure);
        assert_eq!(seconds.len(), 2);
        let (first, second) = (&seconds[0], &seconds[1]);
        assert_eq!((first.second, first.casts), (0, 100));
        assert_eq!((second.second, second.casts), (1, 100));
        assert!((first.max_ms - 1.9).abs() < 1e-9);
        assert_eq!(second.max_ms, 80.0);
        assert_eq!(second.p99_ms, 80.0);
        assert!((first.io_some_pct.unwrap() - 10.0).abs() < 1e-9);
        assert!((second.io_some_pct.unwrap() - 50.0).abs() < 1e-9);
        assert_eq!(first.cpu_some_pct, None);
    }

    #[test]
    fn a_second_without_a_closing_sample_has_no_pressure() {
        let seconds = seconds_of(&[(0, 2.0), (250, 3.0)], 100.0, &[(Some(0), Some(0))]);
        assert_eq!(seconds.iter().map(|s| s.second).collect::<Vec<_>>(), [0, 2]);
        assert!(seconds.iter().all(|s| s.io_some_pct.is_none()));
    }
}
