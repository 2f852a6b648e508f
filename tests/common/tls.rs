//! A test certificate authority and TLS-only servers started from it.

use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};

/// A CA of the test's own and a server certificate it signed for `localhost` and
/// 127.0.0.1, as PEM files in `dir`.
pub struct TestCa {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn create(dir: &Path) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Canopy test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let mut server =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        server
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let server = server.signed_by(&server_key, &ca).unwrap();
        let paths = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        std::fs::write(&paths.ca, ca.pem()).unwrap();
        std::fs::write(&paths.cert, server.pem()).unwrap();
        std::fs::write(&paths.key, server_key.serialize_pem()).unwrap();
        paths
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a PostgreSQL server program as the `postgres` user when this is root (the server
/// refuses to run as root), else as this user.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn postgres_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Debian's PostgreSQL server is installed (scripts/test installs it)")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    versions.sort();
    versions.pop().expect("initdb and pg_ctl are installed")
}

/// A throwaway PostgreSQL cluster that takes TLS connections only (a plain one is
/// rejected by pg_hba), stopped when dropped.
pub struct TlsPostgres {
    pub port: u16,
    dir: tempfile::TempDir,
}

impl TlsPostgres {
    pub fn start(ca: &TestCa) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("cluster");
        let chown = |path: &Path| {
            if is_root() {
                assert!(
                    Command::new("chown")
                        .args(["-R", "postgres:postgres"])
                        .arg(path)
                        .status()
                        .unwrap()
                        .success()
                );
            }
        };
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(&data).unwrap();
        chown(&data);
        let initdb = as_postgres(&postgres_bin("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            initdb.status.success(),
            "{}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        std::fs::copy(&ca.cert, data.join("server.crt")).unwrap();
        std::fs::copy(&ca.key, data.join("server.key")).unwrap();
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let port = super::free_port();
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        use std::io::Write;
        writeln!(
            conf,
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nfsync = off",
            data.display()
        )
        .unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        chown(&data);
        let started = as_postgres(&postgres_bin("pg_ctl"))
            .args(["-w", "-l"])
            .arg(data.join("server.log"))
            .arg("-D")
            .arg(&data)
            .arg("start")
            .output()
            .unwrap();
        assert!(
            started.status.success(),
            "{} {}",
            String::from_utf8_lossy(&started.stderr),
            std::fs::read_to_string(data.join("server.log")).unwrap_or_default()
        );
        Self { port, dir }
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&postgres_bin("pg_ctl"))
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.path().join("cluster"))
            .arg("stop")
            .output();
    }
}

/// Debian's redis-server listening with TLS only (no plain port), stopped when dropped.
pub struct TlsRedis {
    pub port: u16,
    child: std::process::Child,
}

impl TlsRedis {
    pub fn start(ca: &TestCa) -> Self {
        let port = super::free_port();
        let mut child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&ca.cert)
            .arg("--tls-key-file")
            .arg(&ca.key)
            .arg("--tls-ca-cert-file")
            .arg(&ca.ca)
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--bind", "127.0.0.1"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test installs it)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "redis-server with TLS exited"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server with TLS did not listen"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self { port, child }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TLS terminator in front of a plain TCP server (anvil has no TLS): each connection to
/// `port` is decrypted with the test CA's server certificate and relayed to `upstream`.
/// It runs on a thread of its own for the rest of the test process.
pub struct TlsProxy {
    pub port: u16,
}

impl TlsProxy {
    pub fn start(ca: &TestCa, upstream: u16) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&ca.cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(&ca.key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((socket, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(socket).await else {
                            return;
                        };
                        let Ok(mut plain) =
                            tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                        else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    });
                }
            });
        });
        Self { port }
    }
}

/// A tansu broker of the test's own whose clients reach it only through a [`TlsProxy`]:
/// it listens on a plain port and advertises the proxy's, so every connection a client
/// makes after the bootstrap one is TLS too. With a SCRAM user, it requires SASL (tansu
/// keeps users only in its SQLite storage: the user is made, then the broker restarted).
pub struct TlsKafka {
    pub brokers: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl TlsKafka {
    pub fn start(ca: &TestCa) -> Self {
        Self::start_with(ca, None)
    }

    pub fn start_with(ca: &TestCa, scram_user: Option<(&str, &str)>) -> Self {
        let tansu = std::env::var("CANOPY_TANSU")
            .expect("CANOPY_TANSU must name the tansu binary (scripts/test installs it)");
        let dir = tempfile::tempdir().unwrap();
        let plain = super::free_port();
        let proxy = TlsProxy::start(ca, plain);
        let listen = format!("tcp://127.0.0.1:{plain}");
        let advertised = format!("tcp://localhost:{}", proxy.port);
        let broker = |authentication: bool| {
            let mut command = Command::new(&tansu);
            command
                .current_dir(dir.path())
                .arg("broker")
                .args(authentication.then_some("--authentication"))
                .args(["--storage-engine", "sqlite://tansu.db"])
                .args([
                    "--listener-url",
                    &listen,
                    "--advertised-listener-url",
                    &advertised,
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let child = command.spawn().unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while std::net::TcpStream::connect(("127.0.0.1", plain)).is_err() {
                assert!(std::time::Instant::now() < deadline, "tansu did not listen");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            child
        };
        let mut child = broker(false);
        if let Some((user, password)) = scram_user {
            let created = Command::new(&tansu)
                .args(["user", "create", user, password, "--mechanism", "scram512"])
                .args(["--broker", &listen])
                .output()
                .unwrap();
            assert!(
                created.status.success(),
                "{}",
                String::from_utf8_lossy(&created.stderr)
            );
            let _ = child.kill();
            let _ = child.wait();
            while std::net::TcpStream::connect(("127.0.0.1", plain)).is_ok() {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            child = broker(true);
        }
        Self {
            brokers: format!("localhost:{}", proxy.port),
            child,
            _dir: dir,
        }
    }
}

impl Drop for TlsKafka {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
