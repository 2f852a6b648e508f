//! `canopy-bench analytics`: typical analyst queries in SQL over a lake of generated votes,
//! each against a hand-written single-threaded computation of the same answer from the same
//! Parquet files in the same run; both must agree.
//!
//! The votes are generated as a vote log would hold them: in time order, offsets dense per
//! partition, written to the lake a range at a time as `canopy lake sync` does. They are
//! never all in memory: a partition's range goes to the lake once it is full.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{
    Array, Date32Array, FixedSizeBinaryArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, TimeUnit};
use canopy_analytics::{
    AnalyticsError, DecisionLake, LakeConfig, LakeQuery, LakeSql, SqlLimits, TableLayout, VoteLake,
    Votes,
};
use canopy_ingest::{LogRecord, Position, partition_for};
use canopy_schemas::{
    Component, ComponentWeights, Decision, DecisionId, Method, Vote, VoteId, VoterCommitment,
    VoterId, Weight,
};
use foldhash::quality::FixedState;
use futures_util::StreamExt;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::{BENCH_SALT, round3};

#[derive(clap::Args)]
pub struct AnalyticsArgs {
    /// Votes in the lake.
    #[arg(long, default_value_t = 50_000_000)]
    votes: u64,
    #[arg(long, default_value_t = 2_000)]
    decisions: usize,
    #[arg(long, default_value_t = 17)]
    regions: usize,
    /// Days the votes are cast over: one date folder each.
    #[arg(long, default_value_t = 90)]
    days: u32,
    /// Vote-log partitions (a decision's votes share one).
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Records per range written to the lake, per partition.
    #[arg(long, default_value_t = 1_000_000)]
    chunk: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Runs of each query (SQL and baseline alike); the fastest counts.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Where the lake goes (default: a temporary directory, removed at the end). A lake
    /// given here is kept, and a later run with the same parameters queries it again
    /// without generating it.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Memory one query may take for its joins, aggregations and sorts.
    #[arg(long, default_value_t = 8 << 30)]
    memory_bytes: usize,
    /// Before timing a query, run it once as EXPLAIN ANALYZE and print the plan with its
    /// metrics (rows, files and row groups pruned, time per operator) on stderr.
    #[arg(long)]
    explain: bool,
    /// Skip the DuckDB baseline (it needs Python 3 with venv, and PyPI once per machine).
    #[arg(long)]
    no_duckdb: bool,
    /// A Python with the duckdb package, instead of the venv the bench makes in
    /// ~/.cache/canopy.
    #[arg(long)]
    duckdb_python: Option<PathBuf>,
}

/// The DuckDB the second baseline runs: a virtualenv made once per machine from PyPI.
const DUCKDB_VERSION: &str = "2.0.1";
const DUCKDB_SCRIPT: &str = include_str!("../duckdb_baseline.py");

const MICROS_PER_DAY: i64 = 86_400_000_000;
/// 2026-03-01T00:00:00Z, the first day votes are cast.
const START_MICROS: i64 = 20_513 * MICROS_PER_DAY;
/// Names the parameters of a lake this benchmark finished writing; without it a folder's
/// votes may be a run's interrupted half.
const MARKER: &str = "canopy-bench-lake.json";
const PROGRESS_EVERY: u64 = 5_000_000;

pub fn run(args: AnalyticsArgs) -> anyhow::Result<()> {
    ensure!(
        args.votes > 0
            && args.decisions > 0
            && args.regions > 0
            && args.days > 0
            && args.partitions > 0
            && args.chunk > 0
            && args.repeat > 0,
        "every count must be positive"
    );
    let scratch = args
        .dir
        .is_none()
        .then(tempfile::tempdir)
        .transpose()
        .context("creating a temporary directory")?;
    let root = match (&args.dir, &scratch) {
        (Some(dir), _) => dir.clone(),
        (None, scratch) => scratch
            .as_ref()
            .expect("made without --dir")
            .path()
            .to_path_buf(),
    };
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;

    let write = prepare_lake(&args, &root)?;
    eprintln!(
        "lake at {}: {:.2} GB on disk",
        root.display(),
        dir_bytes(&root)? as f64 / 1e9
    );

    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let sql = LakeSql::new(
        &root,
        SqlLimits {
            timeout: Duration::from_secs(3600),
            memory_bytes: args.memory_bytes,
            target_partitions: threads,
        },
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let day = middle_date(&root)?;
    let decision = decision_regions(&root)?
        .into_keys()
        .min()
        .context("the lake has no decisions")?;
    let queries = queries(&root, &day, &decision);
    let mut figures = Vec::new();
    for query in &queries {
        figures.push(measure(query, &sql, &runtime, &args)?);
    }
    let duckdb = if args.no_duckdb {
        None
    } else {
        Some(duckdb_baseline(&root, &queries, &figures, threads, &args)?)
    };

    let rows = args.votes as f64;
    let figures_json: Vec<_> = figures
        .iter()
        .enumerate()
        .map(|(index, f)| {
            let secs = f.sql.as_secs_f64();
            let mut figure = json!({
                "name": f.name,
                "ms": round3(secs * 1e3),
                "planning_ms": round3(f.planning.as_secs_f64() * 1e3),
                "rows_per_s": (rows / secs).round(),
                "result_rows": f.answer.len(),
                "baseline_ms": round3(f.baseline.as_secs_f64() * 1e3),
                "ratio": round3(f.baseline.as_secs_f64() / secs),
            });
            if let Some(duckdb) = &duckdb {
                let duckdb_ms = duckdb.fastest_ms[index];
                figure["duckdb_ms"] = json!(round3(duckdb_ms));
                // Above 1: faster than DuckDB on the same files.
                figure["vs_duckdb"] = json!(round3(duckdb_ms / (secs * 1e3)));
            }
            figure
        })
        .collect();
    let mut write_json = json!({
        "ms": round3(write.busy_ms),
        "rows_per_s": (rows / (write.busy_ms / 1e3)).round(),
        "wall_ms": round3(write.wall_ms),
    });
    if write.reused {
        write_json["reused"] = json!(true);
    }
    drop(scratch);
    println!(
        "{}",
        json!({
            "bench": "analytics",
            "rows": args.votes,
            "write": write_json,
            "duckdb": duckdb.as_ref().map(|d| d.version.clone()),
            "queries": figures_json,
        })
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The lake

struct WriteFigures {
    /// Time spent inside the lake's writes (building, sorting, compressing, syncing files).
    busy_ms: f64,
    /// The whole phase, generation included (it runs beside the writes).
    wall_ms: f64,
    reused: bool,
}

/// Generates the lake into `root`, or finds it there from an earlier run with the same
/// parameters.
fn prepare_lake(args: &AnalyticsArgs, root: &Path) -> anyhow::Result<WriteFigures> {
    let parameters = json!({
        // A lake of an earlier layout of the votes table is not this run's lake.
        "votes_layout": <Votes as TableLayout>::LAYOUT,
        "votes": args.votes,
        "decisions": args.decisions,
        "regions": args.regions,
        "days": args.days,
        "partitions": args.partitions,
        "chunk": args.chunk,
        "seed": args.seed,
    });
    let marker = root.join(MARKER);
    if marker.exists() {
        let found: serde_json::Value = serde_json::from_slice(&std::fs::read(&marker)?)
            .with_context(|| format!("reading {}", marker.display()))?;
        if found["parameters"] != parameters {
            bail!(
                "{} holds a lake generated with {}, not {parameters}: pick another --dir or remove it",
                root.display(),
                found["parameters"]
            );
        }
        eprintln!(
            "{} already holds this lake ({} votes): skipping generation",
            root.display(),
            args.votes
        );
        let figure = |name: &str| found[name].as_f64().unwrap_or(f64::NAN);
        return Ok(WriteFigures {
            busy_ms: figure("write_ms"),
            wall_ms: figure("wall_ms"),
            reused: true,
        });
    }
    if root.join("votes").exists() || root.join("decisions").exists() {
        bail!(
            "{} holds a lake without {MARKER} (an interrupted run?): remove it or pick another --dir",
            root.display()
        );
    }

    let figures = generate_lake(args, root)?;
    let record = json!({
        "parameters": parameters,
        "write_ms": figures.busy_ms,
        "wall_ms": figures.wall_ms,
    });
    std::fs::write(&marker, record.to_string())
        .with_context(|| format!("writing {}", marker.display()))?;
    Ok(figures)
}

fn generate_lake(args: &AnalyticsArgs, root: &Path) -> anyhow::Result<WriteFigures> {
    eprintln!(
        "generating {} votes over {} decisions, {} regions, {} days into {} partitions ...",
        args.votes, args.decisions, args.regions, args.days, args.partitions
    );
    let config = LakeConfig::new(root);
    let mut generator = VoteGenerator::new(args);
    let started = Instant::now();
    DecisionLake::open(config.clone())?.write_snapshot(&generator.decisions)?;
    let decisions_busy = started.elapsed();

    // Generation (SHA-256 commitments, random draws) runs on this thread while another
    // writes the ranges already full: the two cores each do one.
    let lake = VoteLake::open(config)?;
    let (ranges, full_ranges) = mpsc::sync_channel::<(u32, Vec<LogRecord>)>(2);
    let total = args.votes;
    let writer = std::thread::spawn(move || -> anyhow::Result<(Duration, u64)> {
        let (mut busy, mut written, mut files) = (Duration::ZERO, 0u64, 0u64);
        let mut next_report = PROGRESS_EVERY;
        for (partition, records) in full_ranges {
            let started_range = Instant::now();
            files += lake.write_range(partition, &records)?;
            busy += started_range.elapsed();
            written += records.len() as u64;
            if written >= next_report || written == total {
                eprintln!(
                    "  {written} votes written ({files} files), {:.0} votes/s in the writes",
                    written as f64 / busy.as_secs_f64()
                );
                next_report = (written / PROGRESS_EVERY + 1) * PROGRESS_EVERY;
            }
        }
        Ok((busy, files))
    });

    let mut open_ranges: Vec<Vec<LogRecord>> = (0..args.partitions).map(|_| Vec::new()).collect();
    let mut writer_gone = false;
    for record in &mut generator {
        let range = &mut open_ranges[record.position.partition as usize];
        range.push(record);
        if range.len() >= args.chunk {
            let full = std::mem::take(range);
            if ranges.send((record.position.partition, full)).is_err() {
                writer_gone = true;
                break;
            }
        }
    }
    if !writer_gone {
        for (partition, range) in open_ranges.into_iter().enumerate() {
            if !range.is_empty() && ranges.send((partition as u32, range)).is_err() {
                break;
            }
        }
    }
    drop(ranges);
    let (busy, files) = writer
        .join()
        .map_err(|_| anyhow!("the lake writer panicked"))??;
    let wall = started.elapsed();
    let busy = busy + decisions_busy;
    eprintln!(
        "wrote {} votes in {files} files: {:.1} s in the lake's writes ({:.0} votes/s), {:.1} s wall with generation",
        args.votes,
        busy.as_secs_f64(),
        args.votes as f64 / busy.as_secs_f64(),
        wall.as_secs_f64()
    );
    Ok(WriteFigures {
        busy_ms: busy.as_secs_f64() * 1e3,
        wall_ms: wall.as_secs_f64() * 1e3,
        reused: false,
    })
}

/// The share of votes that change an earlier vote: the same voter in the same decision, so
/// the same commitment again.
const REVOTE_SHARE: f64 = 0.12;
/// Earlier votes a change of mind picks from: about the last day or two of a 50M-vote lake.
const RECENT_VOTES: usize = 1 << 20;
/// How much busier midday is than midnight: votes per hour vary by about this factor.
const DAY_NIGHT: f64 = 0.6;

/// A vote log's content in time order, one vote at a time: decisions of Zipf-like
/// popularity across regions, voters who sometimes change their vote in the same decision
/// (the same commitment again), more votes by day than by night.
struct VoteGenerator {
    rng: StdRng,
    decisions: Vec<Decision>,
    /// Zipf(1.1) popularity, cumulative, for picking by inverse CDF.
    popularity: Vec<f64>,
    partitions: u32,
    next_offsets: Vec<u64>,
    /// A ring of recent first votes: (voter, decision index, component, weight).
    recent: Vec<(VoterId, usize, Component, Weight)>,
    recent_next: usize,
    next_voter: u128,
    produced: u64,
    total: u64,
    days: u32,
}

impl VoteGenerator {
    fn new(args: &AnalyticsArgs) -> Self {
        let mut rng = StdRng::seed_from_u64(args.seed);
        let closes_at = START_MICROS + i64::from(args.days) * MICROS_PER_DAY;
        let decisions: Vec<Decision> = (0..args.decisions)
            .map(|i| Decision {
                electorate: Default::default(),
                credits: 0,
                id: DecisionId(rng.random()),
                title: format!("decision {i}"),
                description: String::new(),
                region: format!("region {:02}", i % args.regions),
                options: (0..2 + i % 4).map(|o| format!("option {o}")).collect(),
                opens_at: START_MICROS,
                closes_at,
                weights: ComponentWeights::DEFAULT,
                quorum: 100,
                method: Method::SingleChoice,
            })
            .collect();
        let popularity = (1..=args.decisions)
            .scan(0.0, |sum, rank| {
                *sum += 1.0 / (rank as f64).powf(1.1);
                Some(*sum)
            })
            .collect();
        Self {
            rng,
            decisions,
            popularity,
            partitions: args.partitions,
            next_offsets: vec![0; args.partitions as usize],
            recent: Vec::with_capacity(RECENT_VOTES.min(args.votes as usize)),
            recent_next: 0,
            next_voter: 0,
            produced: 0,
            total: args.votes,
            days: args.days,
        }
    }

    /// The `n`th vote's time: evenly over the days, and within a day warped so that
    /// midday is busier than midnight (the warp is monotonic, so the log stays in order).
    fn cast_at(&self, n: u64) -> i64 {
        use std::f64::consts::TAU;
        let along = (n as f64 + 0.5) / self.total as f64 * f64::from(self.days);
        let day = along.floor();
        let fraction = along - day;
        let time_of_day = fraction + DAY_NIGHT / TAU * (TAU * fraction).sin();
        let micros = (time_of_day * MICROS_PER_DAY as f64) as i64;
        START_MICROS + day as i64 * MICROS_PER_DAY + micros.clamp(0, MICROS_PER_DAY - 1)
    }

    fn first_vote(&mut self) -> (VoterId, usize, Component, Weight) {
        let total = *self.popularity.last().expect("at least one decision");
        let pick = self.rng.random::<f64>() * total;
        let decision = self
            .popularity
            .partition_point(|c| *c < pick)
            .min(self.decisions.len() - 1);
        let (component, weight) = match self.rng.random_range(0..100) {
            0..70 => (Component::Democratic, Weight::ONE),
            70..85 => (
                Component::Expert,
                Weight(self.rng.random_range(500_000..5_000_000)),
            ),
            85..95 => (
                Component::Community,
                Weight(self.rng.random_range(100_000..3_000_000)),
            ),
            _ => (
                Component::EnvironmentalData,
                Weight(self.rng.random_range(100_000..2_000_000)),
            ),
        };
        self.next_voter += 1;
        let vote = (VoterId(self.next_voter), decision, component, weight);
        if self.recent.len() < RECENT_VOTES {
            self.recent.push(vote);
        } else {
            self.recent[self.recent_next] = vote;
            self.recent_next = (self.recent_next + 1) % self.recent.len();
        }
        vote
    }
}

impl Iterator for VoteGenerator {
    type Item = LogRecord;

    fn next(&mut self) -> Option<LogRecord> {
        if self.produced == self.total {
            return None;
        }
        let n = self.produced;
        self.produced += 1;
        let changes_mind = self.rng.random::<f64>() < REVOTE_SHARE && !self.recent.is_empty();
        let (voter_id, decision, component, weight) = if changes_mind {
            self.recent[self.rng.random_range(0..self.recent.len())]
        } else {
            self.first_vote()
        };
        let decision = &self.decisions[decision];
        let vote = Vote {
            vote_id: VoteId(self.rng.random()),
            decision_id: decision.id,
            voter_id,
            ballot: canopy_schemas::synthetic::random_ballot(&mut self.rng, decision),
            component,
            weight,
            cast_at: self.cast_at(n),
        };
        let partition = partition_for(vote.decision_id, self.partitions);
        let offset = &mut self.next_offsets[partition as usize];
        let position = Position {
            partition,
            offset: *offset,
        };
        *offset += 1;
        Some(LogRecord {
            sealed_voter: canopy_schemas::SealedVoter::NONE,
            leaf_version: canopy_schemas::LeafVersion::V2,
            position,
            vote,
            commitment: VoterCommitment::new(&BENCH_SALT, voter_id, vote.decision_id),
        })
    }
}

fn dir_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// The `votes` table's date folders, in date order (`date=YYYY-MM-DD`; the table's
/// `_layout` marker folder is not one).
fn date_folders(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let votes = root.join("votes");
    let mut folders = Vec::new();
    for entry in
        std::fs::read_dir(&votes).with_context(|| format!("listing {}", votes.display()))?
    {
        let path = entry?.path();
        let dated = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("date="));
        if path.is_dir() && dated {
            folders.push(path);
        }
    }
    folders.sort();
    Ok(folders)
}

/// The date (`YYYY-MM-DD`) in the middle of the lake's range: the one-day query's day.
fn middle_date(root: &Path) -> anyhow::Result<String> {
    let folders = date_folders(root)?;
    let middle = folders
        .get(folders.len() / 2)
        .context("the lake has no votes")?;
    let name = middle.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.strip_prefix("date=")
        .map(str::to_owned)
        .with_context(|| format!("{} is not a date folder", middle.display()))
}

/// The Parquet files of the `votes` table; of one date's folder only if `date` is given.
/// The benchmark never compacts, so every file is live.
fn vote_files(root: &Path, date: Option<&str>) -> anyhow::Result<Vec<PathBuf>> {
    let folders = match date {
        Some(date) => vec![root.join("votes").join(format!("date={date}"))],
        None => date_folders(root)?,
    };
    let mut files = Vec::new();
    for folder in folders {
        for entry in
            std::fs::read_dir(&folder).with_context(|| format!("listing {}", folder.display()))?
        {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "parquet") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

// ---------------------------------------------------------------------------------------
// The queries

/// A value of an answer's cell: SQL's and the baseline's answers meet here.
#[derive(Clone, Debug, PartialEq)]
enum Cell {
    Int(i64),
    Float(f64),
    Text(String),
    Null,
}

type Answer = Vec<Vec<Cell>>;

struct Query<'a> {
    name: &'static str,
    sql: String,
    baseline: Box<dyn Fn() -> anyhow::Result<Answer> + 'a>,
}

fn queries<'a>(root: &'a Path, day: &str, decision: &str) -> Vec<Query<'a>> {
    let day_owned = day.to_owned();
    let decision_owned = decision.to_owned();
    vec![
        Query {
            name: "turnout_per_day_per_region",
            sql: "SELECT v.date, d.region, COUNT(DISTINCT v.voter_commitment) AS voters \
                  FROM votes v JOIN decisions d USING (decision_id) \
                  GROUP BY v.date, d.region \
                  ORDER BY v.date, d.region"
                .into(),
            baseline: Box::new(move || turnout_baseline(root)),
        },
        // Votes, not weights: the lake keeps no weight per vote (issue 16).
        Query {
            name: "option_share_over_time",
            sql: "SELECT decision_id, date, option, COUNT(*) AS votes, \
                    CAST(COUNT(*) AS DOUBLE) \
                      / SUM(COUNT(*)) OVER (PARTITION BY decision_id, date) AS share \
                  FROM votes \
                  GROUP BY decision_id, date, option \
                  ORDER BY decision_id, date, option"
                .into(),
            baseline: Box::new(move || option_share_baseline(root)),
        },
        Query {
            name: "top_decisions_by_participation",
            sql: "SELECT decision_id, COUNT(DISTINCT voter_commitment) AS voters \
                  FROM votes \
                  GROUP BY decision_id \
                  ORDER BY voters DESC, decision_id \
                  LIMIT 20"
                .into(),
            baseline: Box::new(move || top_decisions_baseline(root)),
        },
        Query {
            name: "votes_per_hour_one_day",
            sql: format!(
                "SELECT cast_hour AS hour, COUNT(*) AS votes \
                 FROM votes \
                 WHERE date = DATE '{day}' \
                 GROUP BY 1 \
                 ORDER BY 1"
            ),
            baseline: Box::new(move || votes_per_hour_baseline(root, &day_owned)),
        },
        // What a results page asks of the history: one decision's votes per option.
        Query {
            name: "one_decision_votes_per_option",
            sql: format!(
                "SELECT option, COUNT(*) AS votes \
                 FROM votes \
                 WHERE decision_id = '{decision}' \
                 GROUP BY option \
                 ORDER BY option"
            ),
            baseline: Box::new(move || one_decision_baseline(root, &decision_owned)),
        },
    ]
}

struct QueryFigures {
    name: &'static str,
    sql: Duration,
    /// Of `sql`: until the plan was made and the query started (listing and opening the
    /// table's files included).
    planning: Duration,
    baseline: Duration,
    /// SQL's answer, which every baseline's must equal.
    answer: Answer,
}

fn measure(
    query: &Query<'_>,
    sql: &LakeSql,
    runtime: &tokio::runtime::Runtime,
    args: &AnalyticsArgs,
) -> anyhow::Result<QueryFigures> {
    let name = query.name;
    if args.explain {
        let explained = runtime
            .block_on(sql.query(&format!("EXPLAIN ANALYZE {}", query.sql)))
            .with_context(|| format!("explaining {name}"))?;
        for row in answer_of(&explained)? {
            for cell in row {
                if let Cell::Text(text) = cell {
                    eprintln!("{text}");
                }
            }
        }
    }
    let mut fastest_sql = Duration::MAX;
    let mut planning_of_fastest = Duration::ZERO;
    let mut batches = Vec::new();
    for run in 1..=args.repeat {
        let started = Instant::now();
        let (planned, rows) = runtime
            .block_on(planned_and_run(sql, &query.sql))
            .map_err(|e| {
                let hint = if e.code() == "query_memory_exceeded" {
                    " (raise --memory-bytes)"
                } else {
                    ""
                };
                anyhow!("{name} in SQL failed [{}]{hint}: {e}", e.code())
            })?;
        batches = rows;
        let took = started.elapsed();
        let planning = planned.duration_since(started);
        eprintln!(
            "{name}: SQL run {run}: {:.3} s (planned in {:.3} s)",
            took.as_secs_f64(),
            planning.as_secs_f64()
        );
        if took < fastest_sql {
            fastest_sql = took;
            planning_of_fastest = planning;
        }
    }
    let sql_answer = answer_of(&batches).with_context(|| format!("reading {name}'s answer"))?;
    drop(batches);

    let mut fastest_baseline = Duration::MAX;
    let mut baseline_answer = Vec::new();
    for run in 1..=args.repeat {
        let started = Instant::now();
        baseline_answer = (query.baseline)().with_context(|| format!("{name}'s baseline"))?;
        let took = started.elapsed();
        eprintln!("{name}: baseline run {run}: {:.3} s", took.as_secs_f64());
        fastest_baseline = fastest_baseline.min(took);
    }
    same_answer(&sql_answer, &baseline_answer)
        .with_context(|| format!("{name}: SQL and the baseline disagree"))?;
    eprintln!(
        "{name}: SQL {:.3} s, baseline {:.3} s (fastest of {}); {} rows, equal",
        fastest_sql.as_secs_f64(),
        fastest_baseline.as_secs_f64(),
        args.repeat,
        sql_answer.len()
    );
    Ok(QueryFigures {
        name,
        sql: fastest_sql,
        planning: planning_of_fastest,
        baseline: fastest_baseline,
        answer: sql_answer,
    })
}

/// Runs `statement` to its last row; returns when it was planned (and had started) and its
/// rows.
async fn planned_and_run(
    sql: &LakeSql,
    statement: &str,
) -> Result<(Instant, Vec<RecordBatch>), AnalyticsError> {
    let mut stream = sql.execute(statement).await?;
    let planned = Instant::now();
    let mut rows = Vec::new();
    while let Some(batch) = stream.next().await {
        rows.push(batch?);
    }
    Ok((planned, rows))
}

fn answer_of(batches: &[RecordBatch]) -> anyhow::Result<Answer> {
    let mut rows = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            rows.push(
                batch
                    .columns()
                    .iter()
                    .map(|column| cell(column.as_ref(), row))
                    .collect::<anyhow::Result<Vec<_>>>()?,
            );
        }
    }
    Ok(rows)
}

fn cell(array: &dyn Array, row: usize) -> anyhow::Result<Cell> {
    if array.is_null(row) {
        return Ok(Cell::Null);
    }
    Ok(match array.data_type() {
        DataType::Int32 => Cell::Int(array.as_primitive::<Int32Type>().value(row).into()),
        DataType::Int64 => Cell::Int(array.as_primitive::<Int64Type>().value(row)),
        DataType::Date32 => Cell::Int(array.as_primitive::<Date32Type>().value(row).into()),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            Cell::Int(array.as_primitive::<TimestampMicrosecondType>().value(row))
        }
        DataType::Float64 => Cell::Float(array.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => Cell::Text(array.as_string::<i32>().value(row).to_owned()),
        DataType::LargeUtf8 => Cell::Text(array.as_string::<i64>().value(row).to_owned()),
        DataType::Utf8View => Cell::Text(array.as_string_view().value(row).to_owned()),
        other => bail!("a column of type {other} in an answer"),
    })
}

/// Equal row for row; shares (floats) may differ in the last bits, as the order of a sum's
/// terms does.
fn same_answer(sql: &Answer, baseline: &Answer) -> anyhow::Result<()> {
    if sql.len() != baseline.len() {
        bail!(
            "{} rows in SQL, {} in the baseline",
            sql.len(),
            baseline.len()
        );
    }
    for (index, (a, b)) in sql.iter().zip(baseline).enumerate() {
        let equal = a.len() == b.len()
            && a.iter().zip(b).all(|pair| match pair {
                (Cell::Float(x), Cell::Float(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
                (x, y) => x == y,
            });
        if !equal {
            bail!("row {index}: SQL {a:?}, baseline {b:?}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The baselines: one thread, the `parquet` crate's arrow reader, only the needed columns,
// hash maps.

type FastMap<K, V> = HashMap<K, V, FixedState>;
type FastSet<K> = HashSet<K, FixedState>;

/// Reads `columns` of every file, a batch at a time.
fn scan(
    files: &[PathBuf],
    columns: &[&str],
    mut each: impl FnMut(&RecordBatch) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for path in files {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .with_context(|| format!("reading {}", path.display()))?;
        let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
        let reader = builder
            .with_projection(mask)
            .with_batch_size(8192)
            .build()?;
        for batch in reader {
            each(&batch.with_context(|| format!("reading {}", path.display()))?)?;
        }
    }
    Ok(())
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> anyhow::Result<&'a dyn Array> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .with_context(|| format!("no column {name}"))
}

fn strings<'a>(batch: &'a RecordBatch, name: &str) -> anyhow::Result<&'a StringArray> {
    column(batch, name)?
        .as_string_opt::<i32>()
        .with_context(|| format!("{name} is not Utf8"))
}

fn dates<'a>(batch: &'a RecordBatch, name: &str) -> anyhow::Result<&'a Date32Array> {
    column(batch, name)?
        .as_primitive_opt::<Date32Type>()
        .with_context(|| format!("{name} is not Date32"))
}

fn commitments(batch: &RecordBatch) -> anyhow::Result<&FixedSizeBinaryArray> {
    column(batch, "voter_commitment")?
        .as_fixed_size_binary_opt()
        .context("voter_commitment is not FixedSizeBinary")
}

fn commitment_at(array: &FixedSizeBinaryArray, row: usize) -> anyhow::Result<[u8; 32]> {
    array
        .value(row)
        .try_into()
        .context("a voter_commitment is not 32 bytes")
}

/// Each decision's region, from the `decisions` table's newest snapshot.
/// The newest snapshot of the `decisions` table.
fn newest_decisions_snapshot(root: &Path) -> anyhow::Result<PathBuf> {
    let folder = root.join("decisions").join("snapshot");
    let mut snapshots: Vec<PathBuf> = std::fs::read_dir(&folder)
        .with_context(|| format!("listing {}", folder.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "parquet"))
        .collect();
    snapshots.sort();
    snapshots.pop().context("no decisions snapshot")
}

fn decision_regions(root: &Path) -> anyhow::Result<FastMap<String, String>> {
    let newest = newest_decisions_snapshot(root)?;
    let mut regions = FastMap::default();
    scan(&[newest], &["decision_id", "region"], |batch| {
        let (ids, region) = (strings(batch, "decision_id")?, strings(batch, "region")?);
        for row in 0..batch.num_rows() {
            regions.insert(ids.value(row).to_owned(), region.value(row).to_owned());
        }
        Ok(())
    })?;
    Ok(regions)
}

/// Distinct voter commitments per (date, region), the region by the vote's decision.
fn turnout_baseline(root: &Path) -> anyhow::Result<Answer> {
    let regions = decision_regions(root)?;
    let mut voters: FastMap<(i32, &str), FastSet<[u8; 32]>> = FastMap::default();
    scan(
        &vote_files(root, None)?,
        &["decision_id", "voter_commitment", "date"],
        |batch| {
            let (decision, commitment, date) = (
                strings(batch, "decision_id")?,
                commitments(batch)?,
                dates(batch, "date")?,
            );
            for row in 0..batch.num_rows() {
                // An inner join: a vote for an unknown decision has no region.
                let Some(region) = regions.get(decision.value(row)) else {
                    continue;
                };
                voters
                    .entry((date.value(row), region.as_str()))
                    .or_default()
                    .insert(commitment_at(commitment, row)?);
            }
            Ok(())
        },
    )?;
    let mut rows: Vec<_> = voters
        .into_iter()
        .map(|(key, set)| (key, set.len()))
        .collect();
    rows.sort_unstable();
    Ok(rows
        .into_iter()
        .map(|((date, region), count)| {
            vec![
                Cell::Int(date.into()),
                Cell::Text(region.to_owned()),
                Cell::Int(count as i64),
            ]
        })
        .collect())
}

/// Votes per (decision, date, option) and their share of the (decision, date) total.
fn option_share_baseline(root: &Path) -> anyhow::Result<Answer> {
    let mut decision_index: FastMap<String, u32> = FastMap::default();
    let mut decision_names: Vec<String> = Vec::new();
    let mut votes: FastMap<(u32, i32, i32), i64> = FastMap::default();
    scan(
        &vote_files(root, None)?,
        &["decision_id", "option", "date"],
        |batch| {
            let (decision, date) = (strings(batch, "decision_id")?, dates(batch, "date")?);
            let option = column(batch, "option")?
                .as_primitive_opt::<Int32Type>()
                .context("option is not Int32")?;
            for row in 0..batch.num_rows() {
                let name = decision.value(row);
                let index = match decision_index.get(name) {
                    Some(&index) => index,
                    None => {
                        let index = decision_names.len() as u32;
                        decision_index.insert(name.to_owned(), index);
                        decision_names.push(name.to_owned());
                        index
                    }
                };
                *votes
                    .entry((index, date.value(row), option.value(row)))
                    .or_default() += 1;
            }
            Ok(())
        },
    )?;
    let mut day_totals: FastMap<(u32, i32), i64> = FastMap::default();
    for (&(decision, date, _), &count) in &votes {
        *day_totals.entry((decision, date)).or_default() += count;
    }
    let mut rows: Vec<_> = votes.into_iter().collect();
    rows.sort_unstable_by(|((a, a_date, a_option), _), ((b, b_date, b_option), _)| {
        (&decision_names[*a as usize], a_date, a_option).cmp(&(
            &decision_names[*b as usize],
            b_date,
            b_option,
        ))
    });
    Ok(rows
        .into_iter()
        .map(|((decision, date, option), count)| {
            let total = day_totals[&(decision, date)];
            vec![
                Cell::Text(decision_names[decision as usize].clone()),
                Cell::Int(date.into()),
                Cell::Int(option.into()),
                Cell::Int(count),
                Cell::Float(count as f64 / total as f64),
            ]
        })
        .collect())
}

/// The 20 decisions with the most distinct voter commitments (ties by decision id).
fn top_decisions_baseline(root: &Path) -> anyhow::Result<Answer> {
    let mut voters: FastMap<String, FastSet<[u8; 32]>> = FastMap::default();
    scan(
        &vote_files(root, None)?,
        &["decision_id", "voter_commitment"],
        |batch| {
            let (decision, commitment) = (strings(batch, "decision_id")?, commitments(batch)?);
            for row in 0..batch.num_rows() {
                let voter = commitment_at(commitment, row)?;
                let name = decision.value(row);
                match voters.get_mut(name) {
                    Some(set) => {
                        set.insert(voter);
                    }
                    None => {
                        let mut set = FastSet::default();
                        set.insert(voter);
                        voters.insert(name.to_owned(), set);
                    }
                }
            }
            Ok(())
        },
    )?;
    let mut counts: Vec<(String, usize)> = voters
        .into_iter()
        .map(|(decision, set)| (decision, set.len()))
        .collect();
    counts.sort_unstable_by(|(a, a_count), (b, b_count)| b_count.cmp(a_count).then(a.cmp(b)));
    counts.truncate(20);
    Ok(counts
        .into_iter()
        .map(|(decision, count)| vec![Cell::Text(decision), Cell::Int(count as i64)])
        .collect())
}

/// Votes per hour of one day: only that day's folder is read, as the date says where the
/// day's files are.
fn votes_per_hour_baseline(root: &Path, day: &str) -> anyhow::Result<Answer> {
    let mut hours: BTreeMap<i64, i64> = BTreeMap::new();
    scan(&vote_files(root, Some(day))?, &["cast_hour"], |batch| {
        let cast_hour: &TimestampMicrosecondArray = column(batch, "cast_hour")?
            .as_primitive_opt::<TimestampMicrosecondType>()
            .context("cast_hour is not a microsecond timestamp")?;
        for &hour in cast_hour.values() {
            *hours.entry(hour).or_default() += 1;
        }
        Ok(())
    })?;
    Ok(hours
        .into_iter()
        .map(|(hour, count)| vec![Cell::Int(hour), Cell::Int(count)])
        .collect())
}

/// One decision's votes per option (a ballot with no single option, null, counts last as
/// SQL orders nulls).
fn one_decision_baseline(root: &Path, decision: &str) -> anyhow::Result<Answer> {
    let mut options: BTreeMap<(bool, i32), i64> = BTreeMap::new();
    scan(
        &vote_files(root, None)?,
        &["decision_id", "option"],
        |batch| {
            let ids = strings(batch, "decision_id")?;
            let option = column(batch, "option")?
                .as_primitive_opt::<Int32Type>()
                .context("option is not Int32")?;
            for row in 0..batch.num_rows() {
                if ids.value(row) == decision {
                    let key = if option.is_null(row) {
                        (true, 0)
                    } else {
                        (false, option.value(row))
                    };
                    *options.entry(key).or_default() += 1;
                }
            }
            Ok(())
        },
    )?;
    Ok(options
        .into_iter()
        .map(|((null, option), count)| {
            let option = if null {
                Cell::Null
            } else {
                Cell::Int(option.into())
            };
            vec![option, Cell::Int(count)]
        })
        .collect())
}

// ---------------------------------------------------------------------------------------
// DuckDB, the second baseline

struct DuckdbFigures {
    version: String,
    /// Per query, in the order measured.
    fastest_ms: Vec<f64>,
}

/// Runs every query in DuckDB over the same files, `repeat` times each, and checks that
/// each answer equals SQL's.
fn duckdb_baseline(
    root: &Path,
    queries: &[Query<'_>],
    figures: &[QueryFigures],
    threads: usize,
    args: &AnalyticsArgs,
) -> anyhow::Result<DuckdbFigures> {
    let python = match &args.duckdb_python {
        Some(python) => python.clone(),
        None => duckdb_venv()?,
    };
    let request = json!({
        "votes": vote_files(root, None)?,
        "decisions": newest_decisions_snapshot(root)?,
        "threads": threads,
        "repeat": args.repeat,
        "queries": queries.iter().map(|q| json!({ "name": q.name, "sql": q.sql })).collect::<Vec<_>>(),
    });
    let script = tempfile::Builder::new().suffix(".py").tempfile()?;
    std::fs::write(script.path(), DUCKDB_SCRIPT)?;
    eprintln!("DuckDB: running the queries over the same files ...");
    let mut child = std::process::Command::new(&python)
        .arg(script.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", python.display()))?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("DuckDB's stdin")?;
        stdin.write_all(request.to_string().as_bytes())?;
    }
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "the DuckDB baseline failed ({}); its errors are above",
        output.status
    );
    let answer: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("reading DuckDB's answers")?;
    let mut fastest_ms = Vec::new();
    for (figure, duckdb) in figures
        .iter()
        .zip(answer["queries"].as_array().into_iter().flatten())
    {
        let rows = duckdb["rows"]
            .as_array()
            .context("DuckDB's rows")?
            .iter()
            .map(|row| {
                row.as_array()
                    .context("a DuckDB row")?
                    .iter()
                    .map(json_cell)
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .collect::<anyhow::Result<Answer>>()?;
        same_answer(&figure.answer, &rows)
            .with_context(|| format!("{}: SQL and DuckDB disagree", figure.name))?;
        let runs = duckdb["runs_ms"].as_array().context("DuckDB's runs")?;
        fastest_ms.push(
            runs.iter()
                .filter_map(serde_json::Value::as_f64)
                .fold(f64::INFINITY, f64::min),
        );
    }
    ensure!(
        fastest_ms.len() == figures.len(),
        "DuckDB answered {} queries of {}",
        fastest_ms.len(),
        figures.len()
    );
    Ok(DuckdbFigures {
        version: answer["version"].as_str().unwrap_or("?").to_owned(),
        fastest_ms,
    })
}

fn json_cell(value: &serde_json::Value) -> anyhow::Result<Cell> {
    Ok(match value {
        serde_json::Value::Null => Cell::Null,
        serde_json::Value::String(text) => Cell::Text(text.clone()),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(int) => Cell::Int(int),
            None => Cell::Float(n.as_f64().context("a number DuckDB gave")?),
        },
        other => bail!("a DuckDB cell {other}"),
    })
}

/// The virtualenv with DuckDB's Python package, made on first use.
fn duckdb_venv() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let venv = PathBuf::from(home)
        .join(".cache/canopy")
        .join(format!("duckdb-{DUCKDB_VERSION}"));
    let python = venv.join("bin/python");
    let ready = |python: &Path| {
        std::process::Command::new(python)
            .args(["-c", "import duckdb"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if python.exists() && ready(&python) {
        return Ok(python);
    }
    eprintln!(
        "installing DuckDB {DUCKDB_VERSION} from PyPI into {} (once per machine; --no-duckdb skips it)",
        venv.display()
    );
    let run = |program: &Path, args: &[&str]| -> anyhow::Result<()> {
        let status = std::process::Command::new(program)
            .args(args)
            .status()
            .with_context(|| format!("starting {}", program.display()))?;
        ensure!(
            status.success(),
            "{} {args:?} failed ({status})",
            program.display()
        );
        Ok(())
    };
    let venv_arg = venv.to_str().context("a cache path that is not UTF-8")?;
    run(Path::new("python3"), &["-m", "venv", venv_arg])?;
    let requirement = format!("duckdb=={DUCKDB_VERSION}");
    run(
        &venv.join("bin/pip"),
        &[
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &requirement,
        ],
    )?;
    ensure!(
        ready(&python),
        "DuckDB did not install into {}",
        venv.display()
    );
    Ok(python)
}
