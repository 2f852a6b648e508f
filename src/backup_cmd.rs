//! `canopy backup` and `canopy restore` (the work is `canopy_node::backup`'s).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use canopy_node::backup::{BackupSource, Backupper, RestoreTarget, restore, run_schedule};
use canopy_node::backup_repo::{Protection, Repository, Unlock};
use clap::Args;

use crate::config::StoreFlags;

#[derive(Args)]
pub struct BackupArgs {
    /// The node's data directory and store (as `canopy up` is configured).
    #[command(flatten)]
    store: StoreFlags,
    /// Where backups go: a folder, or s3://bucket/prefix (credentials, region and endpoint
    /// from the AWS_* variables).
    #[arg(long)]
    to: String,
    /// Seal for this age recipient (age1…; repeatable): the machine taking backups holds
    /// no secret, the identity restores. Without one, a passphrase seals.
    #[arg(long = "recipient")]
    recipients: Vec<String>,
    /// The passphrase's file (its first line), if no recipient is given; else the
    /// CANOPY_BACKUP_PASSPHRASE variable.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// A full backup (a new chain) even when the repository's latest chain could be
    /// continued.
    #[arg(long)]
    full: bool,
    /// Continue the latest chain with an incremental backup (needs its key: --identity
    /// or the passphrase).
    #[arg(long, conflicts_with = "full")]
    incremental: bool,
    /// The identity file opening the latest chain for --incremental.
    #[arg(long)]
    identity: Option<PathBuf>,
    /// Keep running, taking a backup this often (e.g. 30s, 5m, 1h): the first full, then
    /// incremental ones, a new full one every --full-every.
    #[arg(long, value_parser = parse_interval)]
    backup_every: Option<Duration>,
    /// With --backup-every: serve /metrics (the backups' durations, bytes, failures and the
    /// last success's time) and /healthz here, e.g. 127.0.0.1:9465.
    #[arg(long, requires = "backup_every")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Backups per chain before a new full one.
    #[arg(long, default_value_t = 24)]
    full_every: u32,
    /// scrypt's work factor (log2 N) for a passphrase; age's default targets one second.
    #[arg(long, hide = true)]
    scrypt_work_factor: Option<u8>,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// Where to restore: an absent or empty data directory, and for a PostgreSQL store an
    /// empty database (--database-url).
    #[command(flatten)]
    store: StoreFlags,
    /// The backups' folder or s3://bucket/prefix.
    #[arg(long)]
    from: String,
    /// Which backup (an id from --list); the latest finished one if absent.
    #[arg(long)]
    backup: Option<String>,
    /// List the finished backups and stop.
    #[arg(long)]
    list: bool,
    /// The age identity file (AGE-SECRET-KEY-1…) for backups sealed to recipients.
    #[arg(long)]
    identity: Option<PathBuf>,
    /// The passphrase's file, for backups sealed with one; else CANOPY_BACKUP_PASSPHRASE.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct KeygenArgs {
    /// Where the identity (the secret that restores) is written, readable by its user
    /// only; it must not exist yet. Keep it away from the machines taking backups.
    #[arg(long)]
    output: PathBuf,
}

/// Writes a new age identity and prints its recipient (for `canopy backup --recipient`).
pub fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    println!(
        "{}",
        canopy_node::backup_repo::write_new_identity(&args.output)?
    );
    Ok(())
}

/// `30s`, `5m`, `1h` or plain seconds.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((text, "s"), |at| text.split_at(at));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not an interval like 30s, 5m or 1h"))?;
    let seconds = match unit {
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: the unit is s, m or h")),
    };
    if !(seconds >= 1.0 && seconds.is_finite()) {
        return Err(format!("{text:?}: at least one second"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn passphrase(file: Option<&PathBuf>) -> anyhow::Result<Option<String>> {
    let text = match file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the passphrase file {}", path.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        ),
        None => std::env::var("CANOPY_BACKUP_PASSPHRASE").ok(),
    };
    match text {
        Some(text) if text.is_empty() => anyhow::bail!("the passphrase is empty"),
        other => Ok(other),
    }
}

fn unlock(identity: Option<&PathBuf>, passphrase_file: Option<&PathBuf>) -> anyhow::Result<Unlock> {
    if let Some(path) = identity {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the identity file {}", path.display()))?;
        return Ok(Unlock::identity_file(&text)?);
    }
    match passphrase(passphrase_file)? {
        Some(text) => Ok(Unlock::Passphrase(text.into())),
        None => anyhow::bail!(
            "the backup's key is needed: --identity FILE, --passphrase-file FILE or CANOPY_BACKUP_PASSPHRASE"
        ),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let config = args.store.load()?.config;
    let protection = if args.recipients.is_empty() {
        match passphrase(args.passphrase_file.as_ref())? {
            Some(text) => Protection::Passphrase {
                passphrase: text.into(),
                work_factor: args.scrypt_work_factor,
            },
            None => anyhow::bail!(
                "a backup is sealed: --recipient age1… (scheduled backups), or a passphrase \
                 (--passphrase-file FILE or CANOPY_BACKUP_PASSPHRASE)"
            ),
        }
    } else {
        Protection::recipients(&args.recipients)?
    };
    let source = BackupSource {
        data_dir: config.data_dir.clone(),
        database_url: config.database.url.clone(),
        outside_files: [
            &config.api.jwt_key,
            &config.api.audit_key,
            &config.api.secrets_key,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect(),
    };
    let repo = Repository::open(&args.to)?;
    runtime()?.block_on(async move {
        let mut backupper = Backupper::new(repo, protection);
        backupper.full_every = args.full_every;
        if args.incremental {
            let unlock = unlock(args.identity.as_ref(), args.passphrase_file.as_ref())?;
            backupper.continue_latest(&unlock).await?;
        }
        if let Some(every) = args.backup_every {
            eprintln!(
                "canopy: a backup of {} to {} every {:?}; Ctrl-C stops",
                source.data_dir.display(),
                backupper.repository(),
                every
            );
            let (stop, stopped) = tokio::sync::watch::channel(false);
            if let Some(listen) = args.metrics_listen {
                canopy_serving::metrics::install();
                canopy_node::backup::describe_metrics();
                let (addr, _) = canopy_node::serve_metrics(listen, stopped.clone()).await?;
                eprintln!("canopy: metrics on http://{addr}/metrics");
            }
            let schedule = tokio::spawn(run_schedule(backupper, source, every, stopped));
            crate::up::wait_for_stop_signal().await;
            let _ = stop.send(true);
            schedule.await?;
            return Ok(());
        }
        let progress = |line: &str| eprintln!("canopy: {line}");
        let summary = backupper.take(&source, args.full, &progress).await?;
        eprintln!(
            "canopy: backup {} ({}) of {} files, {} MiB, {} MiB written, in {:.1} s",
            summary.id,
            summary.kind,
            summary.files,
            summary.bytes >> 20,
            summary.written_bytes >> 20,
            (summary.finished_at_ms - summary.started_at_ms) as f64 / 1000.0
        );
        println!("{}", serde_json::to_string(&summary)?);
        Ok(())
    })
}

pub fn restore_cmd(args: RestoreArgs) -> anyhow::Result<()> {
    let config = args.store.load()?.config;
    let repo = Repository::open(&args.from)?;
    runtime()?.block_on(async move {
        if args.list {
            for summary in repo.backups().await? {
                println!("{}", serde_json::to_string(&summary)?);
            }
            return Ok(());
        }
        let unlock = unlock(args.identity.as_ref(), args.passphrase_file.as_ref())?;
        let target = RestoreTarget {
            data_dir: config.data_dir.clone(),
            database_url: config.database.url.clone(),
        };
        let progress = |line: &str| eprintln!("canopy: {line}");
        let summary = restore(&repo, args.backup.as_deref(), &unlock, &target, &progress).await?;
        eprintln!(
            "canopy: restored backup {} (taken from {} ms) into {}: {} files, {} MiB in {:.1} s; start the node to replay its log",
            summary.backup.id,
            summary.backup.started_at_ms,
            target.data_dir.display(),
            summary.files,
            summary.bytes >> 20,
            summary.seconds
        );
        println!("{}", serde_json::to_string(&summary)?);
        Ok(())
    })
}
