//! One configuration for `up`, `worker` and `serve`: defaults, the file, the environment
//! (`CANOPY_<SECTION>__<KEY>`) and flags, in that order; `canopy config show` names where
//! each value came from; unknown keys are refused by name; secrets are never printed.

use std::path::Path;
use std::process::{Command, Output, Stdio};

mod common;

use common::*;

/// Runs `canopy` with `env` added to a clean slate of configuration variables, keeping the
/// unrelated `CANOPY_*` ones the test setup exports (they must not disturb anything).
fn canopy(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_canopy"));
    for (name, _) in std::env::vars() {
        if name.starts_with("CANOPY_") && !name.starts_with("CANOPY_TEST_") {
            command.env_remove(&name);
        }
    }
    command
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env("CANOPY_TEST_KAFKA", "127.0.0.1:1")
        .env(
            "CANOPY_TEST_POSTGRES_URL",
            "postgres://nobody@127.0.0.1:1/none",
        )
        .env("CANOPY_TANSU", "tansu")
        .env("CANOPY_ANVIL", "anvil")
        .env("CANOPY_BLESS", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn refused(output: &Output) -> String {
    assert!(!output.status.success(), "expected a refusal");
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// The line of `config show` that sets `key` in `[section]` (`""`: top level), split into
/// its TOML and its source.
fn shown(show: &str, section: &str, key: &str) -> (String, String) {
    let mut current = String::new();
    for line in show.lines() {
        if let Some(header) = line.strip_prefix('[') {
            current = header.trim_end_matches(']').to_string();
            continue;
        }
        let setting = line.trim_start_matches("# ");
        if current == section
            && (setting.starts_with(&format!("{key} ="))
                || setting.starts_with(&format!("{key} (")))
        {
            let (value, source) = line.rsplit_once(" # ").unwrap();
            return (value.trim().to_string(), source.trim().to_string());
        }
    }
    panic!("no {section}.{key} in:\n{show}");
}

fn write_cluster_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("canopy.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = {data:?}\n\
             [api]\nlisten = \"127.0.0.1:1111\"\nuser_rate = 5.0\n\
             [database]\nurl = \"postgres://canopy@db.example/canopy\"\n\
             [kafka]\nbrokers = \"k1:9092,k2:9092\"\ntopic = \"from-file\"\npartitions = 4\n\
             [redis]\nurl = \"redis://cache.example:6379/\"\n\
             [workers]\nhosts = [\"w1:2101\", \"w2:2101\"]\nthreads = 3\n\
             [sensors.alert_thresholds]\npm25 = 35.0\n",
            data = dir.join("data"),
        ),
    )
    .unwrap();
    path
}

#[test]
fn one_file_configures_up_worker_and_serve_under_env_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_cluster_file(dir.path());
    let file = file.to_str().unwrap();
    let file_source = format!("file {file}");
    let env = [("CANOPY_KAFKA__TOPIC", "from-env")];

    // Each command's own line, with `config show` in place of the command.
    for (command, flag, section, key, value) in [
        (
            "up",
            "--listen=127.0.0.1:2222",
            "api",
            "listen",
            "\"127.0.0.1:2222\"",
        ),
        (
            "serve",
            "--listen=127.0.0.1:3333",
            "api",
            "listen",
            "\"127.0.0.1:3333\"",
        ),
        ("worker", "--threads=5", "workers", "threads", "5"),
    ] {
        let show = stdout(&canopy(&["config", "show", "--config", file, flag], &env));
        let flag_name = flag.split('=').next().unwrap();
        assert_eq!(
            shown(&show, section, key),
            (format!("{key} = {value}"), format!("flag {flag_name}")),
            "{command}"
        );
        assert_eq!(
            shown(&show, "kafka", "topic"),
            (
                "topic = \"from-env\"".into(),
                "env CANOPY_KAFKA__TOPIC".into()
            ),
            "{command}"
        );
        for (section, key, value) in [
            ("kafka", "brokers", "\"k1:9092,k2:9092\""),
            ("kafka", "partitions", "4"),
            ("api", "user_rate", "5.0"),
            ("workers", "hosts", "[\"w1:2101\", \"w2:2101\"]"),
            ("sensors.alert_thresholds", "pm25", "35.0"),
        ] {
            assert_eq!(
                shown(&show, section, key),
                (format!("{key} = {value}"), file_source.clone()),
                "{command}"
            );
        }
        assert_eq!(
            shown(&show, "kafka", "replication"),
            ("replication = 1".into(), "default".into())
        );
        assert_eq!(
            shown(&show, "evm", "rpc"),
            ("# rpc (not set)".into(), "default".into())
        );
        // What it prints is itself a configuration.
        let again = dir.path().join(format!("shown-{command}.toml"));
        std::fs::write(&again, &show).unwrap();
        let reread = stdout(&canopy(
            &["config", "show", "--config", again.to_str().unwrap()],
            &[],
        ));
        assert_eq!(shown(&reread, section, key).0, format!("{key} = {value}"));
    }

    // Flags beat the environment, which beats the file.
    let show = stdout(&canopy(
        &[
            "config",
            "show",
            "--config",
            file,
            "--kafka-topic",
            "from-flag",
        ],
        &env,
    ));
    assert_eq!(
        shown(&show, "kafka", "topic"),
        ("topic = \"from-flag\"".into(), "flag --kafka-topic".into())
    );

    // The worker reads the same file: its hosts name two processes, so index 2 is refused
    // before anything is contacted.
    let error = refused(&canopy(
        &["worker", "--config", file, "--process", "2"],
        &env,
    ));
    assert!(
        error.contains("--process 2 is not below the number of processes (2"),
        "{error}"
    );
    // And a file without Redis cannot configure a worker or a replica, whatever the flags.
    let bare = dir.path().join("bare.toml");
    std::fs::write(
        &bare,
        "[database]\nurl = \"postgres://canopy@db.example/canopy\"\n\
         [kafka]\nbrokers = \"k1:9092\"\n",
    )
    .unwrap();
    for command in ["worker", "serve"] {
        let error = refused(&canopy(
            &[
                command,
                "--config",
                bare.to_str().unwrap(),
                "--listen=127.0.0.1:1",
            ],
            &[],
        ));
        assert!(error.contains("redis.url is not set"), "{command}: {error}");
    }
}

#[test]
fn unknown_keys_are_refused_by_name_from_the_file_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("canopy.toml");
    std::fs::write(&file, "[kafka]\nbrokres = \"k1:9092\"\n").unwrap();
    let file = file.to_str().unwrap();
    for command in [
        &["up", "--config", file][..],
        &["worker", "--config", file],
        &["serve", "--config", file],
        &["config", "show", "--config", file],
    ] {
        let error = refused(&canopy(command, &[]));
        assert!(
            error.contains("unknown key `kafka.brokres`") && error.contains(file),
            "{command:?}: {error}"
        );
    }

    for command in [&["up"][..], &["worker"], &["serve"], &["config", "show"]] {
        let error = refused(&canopy(command, &[("CANOPY_KAFKA__NOPE", "1")]));
        assert!(
            error.contains("unknown key `kafka.nope` (env CANOPY_KAFKA__NOPE)"),
            "{command:?}: {error}"
        );
    }

    // The cluster file's old single-underscore form would be silently ignored: refused,
    // with the name that works.
    let error = refused(&canopy(
        &["config", "show"],
        &[("CANOPY_WORKERS_THREADS", "4")],
    ));
    assert!(error.contains("CANOPY_WORKERS__THREADS"), "{error}");
    let error = refused(&canopy(
        &["config", "show"],
        &[("CANOPY_SERVE_USER_RATE", "4")],
    ));
    assert!(error.contains("CANOPY_API__USER_RATE"), "{error}");

    // A value of the wrong type names its key and its variable.
    let error = refused(&canopy(
        &["config", "show"],
        &[("CANOPY_KAFKA__PARTITIONS", "eight")],
    ));
    assert!(
        error.contains("kafka.partitions (env CANOPY_KAFKA__PARTITIONS)"),
        "{error}"
    );
}

#[test]
fn secrets_are_masked_in_config_show() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("canopy.toml");
    std::fs::write(
        &file,
        "[database]\nurl = \"postgres://canopy:db-secret@db.example/canopy\"\n\
         [redis]\nurl = \"redis://:redis-secret@cache.example:6379/\"\n\
         [api]\njwt_key = \"/srv/keys/jwt.pem\"\n",
    )
    .unwrap();
    let show = stdout(&canopy(
        &["config", "show", "--config", file.to_str().unwrap()],
        &[
            ("CANOPY_EVM_KEY", "evm-secret-0123456789abcdef"),
            ("CANOPY_EVM__RPC", "http://127.0.0.1:8545"),
        ],
    ));
    for secret in ["db-secret", "redis-secret", "evm-secret"] {
        assert!(!show.contains(secret), "{secret} printed:\n{show}");
    }
    assert_eq!(
        shown(&show, "database", "url").0,
        "url = \"postgres://canopy:****@db.example/canopy\""
    );
    assert_eq!(
        shown(&show, "redis", "url").0,
        "url = \"redis://:****@cache.example:6379/\""
    );
    // The single-underscore name `canopy evm deploy` also reads still works.
    assert_eq!(
        shown(&show, "evm", "key"),
        ("key = \"****\"".into(), "env CANOPY_EVM_KEY".into())
    );
    // A key's path is not a secret.
    assert_eq!(
        shown(&show, "api", "jwt_key").0,
        "jwt_key = \"/srv/keys/jwt.pem\""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_listens_where_the_flag_says_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (file_port, flag_port) = (free_port(), free_port());
    let file = dir.path().join("canopy.toml");
    std::fs::write(
        &file,
        format!(
            "data_dir = {data:?}\n[api]\nlisten = \"127.0.0.1:{file_port}\"\n\
             [lake]\nenabled = false\n[sensors]\nenabled = false\n"
        ),
    )
    .unwrap();
    let mut node = Command::new(env!("CARGO_BIN_EXE_canopy"))
        .args(["up", "--config"])
        .arg(&file)
        .args(["--listen", &format!("127.0.0.1:{flag_port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = canopy_testkit::http_client();
    wait_healthy(&client, &format!("http://127.0.0.1:{flag_port}")).await;
    let health = client
        .get(format!("http://127.0.0.1:{flag_port}/healthz"))
        .send()
        .await
        .unwrap();
    assert!(health.status().is_success());
    assert!(
        client
            .get(format!("http://127.0.0.1:{file_port}/healthz"))
            .send()
            .await
            .is_err(),
        "nothing listens on the file's address"
    );
    assert!(
        data.join("canopy.db").exists(),
        "the file's data_dir is used"
    );
    kill_9(&mut node);
}

/// The offline commands read the same file, environment and flags: the data directory and
/// the lake from the file, the threads from the environment, the lake overridden by a flag.
#[test]
fn offline_commands_read_the_same_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data-from-file");
    let lake = dir.path().join("lake-from-file");
    let file = dir.path().join("canopy.toml");
    std::fs::write(
        &file,
        format!(
            "data_dir = {:?}\n[lake]\nlocation = {:?}\n",
            data.to_str().unwrap(),
            lake.to_str().unwrap()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();

    stdout(&canopy(
        &[
            "loadgen",
            "--config",
            file,
            "--votes",
            "300",
            "--decisions",
            "2",
        ],
        &[],
    ));
    assert!(data.join("votes").is_dir(), "loadgen wrote elsewhere");
    let verified: serde_json::Value =
        serde_json::from_str(&stdout(&canopy(&["log", "verify", "--config", file], &[]))).unwrap();
    assert_eq!(verified["records"], 300, "{verified}");

    let tally = canopy(
        &["tally", "--config", file],
        &[("CANOPY_WORKERS__THREADS", "3")],
    );
    assert_eq!(stdout(&tally).lines().count(), 2);
    let replayed = String::from_utf8_lossy(&tally.stderr);
    assert!(replayed.contains("on 3 worker threads"), "{replayed}");

    // `canopy tally | head -0`: the reader is gone before the first line; the command ends
    // quietly and successfully, as Unix tools do, instead of panicking on the closed pipe.
    let mut piped = Command::new(env!("CARGO_BIN_EXE_canopy"))
        .args(["tally", "--config", file])
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(piped.stdout.take());
    let ended = piped.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert!(ended.status.success(), "{:?}: {stderr}", ended.status);
    assert!(!stderr.contains("panicked"), "{stderr}");

    stdout(&canopy(&["lake", "sync", "--config", file], &[]));
    assert!(lake.join("votes").is_dir(), "lake sync wrote elsewhere");
    let counted = stdout(&canopy(
        &[
            "sql",
            "--config",
            file,
            "--format",
            "csv",
            "SELECT COUNT(*) AS n FROM votes",
        ],
        &[],
    ));
    assert_eq!(counted.lines().nth(1), Some("300"), "{counted}");

    let elsewhere = dir.path().join("no-lake-here");
    let error = refused(&canopy(
        &[
            "sql",
            "--config",
            file,
            "--lake",
            elsewhere.to_str().unwrap(),
            "SELECT 1",
        ],
        &[],
    ));
    assert!(error.contains("no-lake-here"), "{error}");

    let error = refused(&canopy(
        &["tally", "--config", file],
        &[("CANOPY_WORKERS__THREDS", "3")],
    ));
    assert!(error.contains("unknown key `workers.threds`"), "{error}");
}
