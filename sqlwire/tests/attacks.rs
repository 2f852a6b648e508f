//! The port under attack: TLS required, no cleartext password, a guess is one failure, and
//! random or malformed bytes never crash or hang the server (proptest).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use canopy_analytics::{LakeSql, SqlLimits};
use canopy_sqlwire::scram::{Candidates, ScramVerifier};
use canopy_sqlwire::{Admission, Credentials, Pending, PgServer, PortOptions, Session, SignIn};
use proptest::prelude::*;

const TOKEN: &str = "Xk2v9Qm4rT7yW1zA8cE5gJ0lN3pS6uB2";

/// The analyst by a verifier of [`TOKEN`]; counts failures and statements.
#[derive(Default)]
struct Counting {
    failures: AtomicUsize,
    statements: AtomicUsize,
}

#[async_trait::async_trait]
impl Credentials for Counting {
    async fn admit(&self, attempt: &SignIn) -> Admission {
        let secret = if attempt.user == "analyst" {
            TOKEN
        } else {
            "-"
        };
        let verifier = ScramVerifier::derive(secret, b"salt-of-sixteen!", 4096);
        Admission::Verify {
            candidates: Candidates {
                salt: verifier.salt,
                iterations: 4096,
                verifiers: vec![("t1".to_owned(), verifier.stored_key, verifier.server_key)],
            },
            pending: Box::new(()),
        }
    }

    async fn settle(&self, _: &SignIn, _: Pending, token: Option<&str>) -> Option<String> {
        if token.is_none() {
            self.failures.fetch_add(1, Ordering::SeqCst);
        }
        token.map(|_| "analyst".to_owned())
    }

    async fn statement(&self, _: &Session, _: &str) {
        self.statements.fetch_add(1, Ordering::SeqCst);
    }
}

/// A TLS configuration for localhost: a self-signed certificate made with the openssl
/// command, offering PostgreSQL's ALPN as a node's does.
fn certificate(dir: &Path) -> Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("these tests need the openssl command");
    assert!(status.success());
    let chain = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Arc::new(config)
}

struct Port {
    _dir: tempfile::TempDir,
    server: PgServer,
    credentials: Arc<Counting>,
}

async fn port(tls: bool) -> Port {
    let dir = tempfile::tempdir().unwrap();
    let lake = LakeSql::new(dir.path().join("lake"), SqlLimits::default());
    let credentials = Arc::new(Counting::default());
    let options = PortOptions {
        tls: tls.then(|| certificate(dir.path())),
        startup_timeout: Duration::from_secs(2),
        ..PortOptions::default()
    };
    let server = PgServer::start(
        "127.0.0.1:0".parse().unwrap(),
        lake,
        Arc::clone(&credentials) as Arc<dyn Credentials>,
        options,
    )
    .await
    .unwrap();
    Port {
        _dir: dir,
        server,
        credentials,
    }
}

async fn psql(addr: SocketAddr, sslmode: &str, password: &str, sql: &str) -> Output {
    let mut command = std::process::Command::new("psql");
    command
        .args(["-X", "-At", "-c", sql])
        .arg(format!(
            "host=127.0.0.1 port={} user=analyst dbname=canopy sslmode={sslmode}",
            addr.port()
        ))
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10");
    tokio::task::spawn_blocking(move || command.output().expect("running psql"))
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_signs_in_over_tls_with_scram_and_plaintext_is_refused() {
    let port = port(true).await;
    let addr = port.server.local_addr();
    let output = psql(addr, "require", TOKEN, "SELECT 41 + 1").await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "42\n");
    assert_eq!(port.credentials.statements.load(Ordering::SeqCst), 1);

    let output = psql(addr, "disable", TOKEN, "SELECT 1").await;
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("TLS is required"),
        "{}",
        text(&output.stderr)
    );

    let output = psql(addr, "require", "wrong-token", "SELECT 1").await;
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("password authentication failed for user \"analyst\""),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(port.credentials.failures.load(Ordering::SeqCst), 1);
}

/// A startup message for `user`.
fn startup(user: &str) -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for part in ["user", user, "database", "canopy", ""] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    let mut message = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    message.extend(body);
    message
}

/// Reads one backend message: its type byte and body.
fn read_message(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head)?;
    let length = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; length.saturating_sub(4)];
    stream.read_exact(&mut body)?;
    Ok((head[0], body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleartext_password_is_never_asked_for_nor_taken() {
    let port = port(false).await;
    let addr = port.server.local_addr();
    let credentials = Arc::clone(&port.credentials);
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(&startup("analyst")).unwrap();
        let (kind, body) = read_message(&mut stream).unwrap();
        // AuthenticationSASL (10) offering SCRAM-SHA-256 only: never 3 (cleartext) or 5 (MD5).
        assert_eq!(kind, b'R');
        assert_eq!(i32::from_be_bytes(body[..4].try_into().unwrap()), 10);
        assert_eq!(&body[4..], b"SCRAM-SHA-256\0\0");
        // The right token in clear, as a cleartext PasswordMessage, is refused.
        let mut password = TOKEN.as_bytes().to_vec();
        password.push(0);
        let mut message = vec![b'p'];
        message.extend(((password.len() + 4) as i32).to_be_bytes());
        message.extend(password);
        stream.write_all(&message).unwrap();
        let (kind, body) = read_message(&mut stream).unwrap();
        assert_eq!(kind, b'E');
        assert!(text(&body).contains("28P01"), "{}", text(&body));
        assert_eq!(credentials.failures.load(Ordering::SeqCst), 1);
    })
    .await
    .unwrap();
}

/// Writes `bytes`, then reads until the server closes or answers; true if it did either
/// within the startup timeout (plus slack).
fn answers_or_closes(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(6)))
        .unwrap();
    // The server may close while the bytes are still going out.
    let _ = stream.write_all(bytes);
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

fn frontend_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Anything at all.
        proptest::collection::vec(any::<u8>(), 0..2048),
        // A valid startup, then random messages.
        proptest::collection::vec(any::<u8>(), 0..1024).prop_map(|tail| {
            let mut bytes = startup("analyst");
            bytes.extend(tail);
            bytes
        }),
        // A startup, then a typed message with a random length field and body.
        (
            prop::sample::select(vec![b'p', b'Q', b'P', b'B', b'E', b'D', b'S', b'X']),
            any::<i32>(),
            proptest::collection::vec(any::<u8>(), 0..512)
        )
            .prop_map(|(kind, length, body)| {
                let mut bytes = startup("analyst");
                bytes.push(kind);
                bytes.extend(length.to_be_bytes());
                bytes.extend(body);
                bytes
            }),
        // A startup, then a password-family message whose length is right and body short
        // (pgwire's own SASLInitialResponse decoder panicked on these).
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(|body| {
            let mut bytes = startup("analyst");
            bytes.push(b'p');
            bytes.extend(((body.len() + 4) as i32).to_be_bytes());
            bytes.extend(body);
            bytes
        }),
        // An SSLRequest or cancel-shaped header with junk after it.
        (
            prop::sample::select(vec![80_877_103i32, 80_877_104, 80_877_102, 196_608]),
            proptest::collection::vec(any::<u8>(), 0..256)
        )
            .prop_map(|(code, tail)| {
                let mut bytes = 8i32.to_be_bytes().to_vec();
                bytes.extend(code.to_be_bytes());
                bytes.extend(tail);
                bytes
            }),
    ]
}

/// The message reader as this crate runs it, fed random and malformed bytes: every
/// connection is answered or closed within the startup timeout, and the server still
/// serves a real client afterwards (a panic in a connection task would not show otherwise).
#[test]
fn random_bytes_are_answered_or_closed_never_hang_or_crash() {
    // A connection task that panics is dropped quietly (its socket closes): count panics.
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    std::panic::set_hook(Box::new(|info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        eprintln!("{info}");
    }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let port = runtime.block_on(port(false));
    let addr = port.server.local_addr();
    let config = ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(bytes in frontend_bytes())| {
        prop_assert!(answers_or_closes(addr, &bytes));
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0);
    });
    let output = runtime.block_on(psql(addr, "disable", TOKEN, "SELECT 7"));
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "7\n");
}
