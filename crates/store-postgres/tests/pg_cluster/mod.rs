//! A throwaway PostgreSQL 15 cluster for tests: `initdb` into a fresh temporary directory, served
//! on a unix socket in that directory only (no TCP port, so no port races), stopped and removed
//! when the guard drops. [`Cluster::start_tls`] also serves TLS on a loopback port, with a
//! certificate from a test CA made by the `openssl` command, and accepts TCP logins over TLS only.
//!
//! PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user, which
//! owns the directory. Missing binaries make the test fail with instructions, never skip it.
#![allow(
    dead_code,
    reason = "shared by the store's, the server's and the command line's tests, which use different parts"
)]

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Where Debian's `postgresql-15` package puts the server binaries.
pub(crate) const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running cluster; stopped (immediately) and deleted on drop.
pub(crate) struct Cluster {
    dir: tempfile::TempDir,
    as_postgres: bool,
    running: bool,
    /// `fsync` on (benchmarks); tests run without it.
    durable: bool,
    /// The port, which also names the unix socket.
    port: u16,
    tls: Option<Tls>,
}

/// What a TLS cluster serves on TCP.
struct Tls {
    /// The CA that signed the server's certificate (for `localhost` and 127.0.0.1).
    ca: PathBuf,
    /// The password of the `postgres` user, which TCP logins need.
    password: String,
}

/// The password of the `postgres` user in a TLS cluster.
pub(crate) const TLS_PASSWORD: &str = "tls-login-Pa55word";
/// The port PostgreSQL names its socket after unless told otherwise.
const DEFAULT_PORT: u16 = 5432;
/// Tries at a free loopback port: another process may take the one found before the server
/// binds it.
const PORT_TRIES: usize = 5;

fn bin(name: &str) -> PathBuf {
    Path::new(PG_BIN).join(name)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn checked(what: &str, out: std::io::Result<Output>) -> Output {
    let out = out.unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn openssl(what: &str, dir: &Path, args: &[&str]) {
    checked(
        what,
        Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .stdin(Stdio::null())
            .output(),
    );
}

/// Makes a test CA in `dir` (`NAME.pem`, `NAME.key`); returns the certificate's path.
pub(crate) fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
    openssl(
        "openssl req (CA)",
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=selene-kms test CA {name}"),
            "-keyout",
            &key,
            "-out",
            &cert,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    dir.join(cert)
}

/// Makes a server certificate for `localhost` and 127.0.0.1 in `dir` (`server.crt`,
/// `server.key`), signed by the CA `ca_name` made there by [`make_ca`]. It is `CA:FALSE`:
/// webpki refuses a CA certificate as a server's.
fn make_server_cert(dir: &Path, ca_name: &str) {
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("write the certificate's extensions");
    openssl(
        "openssl req (server)",
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    openssl(
        "openssl x509 (server)",
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca_name}.pem"),
            "-CAkey",
            &format!("{ca_name}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    );
}

/// A loopback port that nothing listened on a moment ago.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// Whether the PostgreSQL 15 server binaries are installed.
pub(crate) fn binaries_present() -> bool {
    bin("initdb").exists() && bin("pg_ctl").exists()
}

impl Cluster {
    /// Initialises and starts a new cluster without `fsync` (for tests). Panics (failing the
    /// test) with instructions if the PostgreSQL 15 server binaries are missing.
    pub(crate) fn start() -> Self {
        Self::launch(false)
    }

    /// Like [`Cluster::start`], with `fsync` on: every commit is flushed (for benchmarks).
    pub(crate) fn start_durable() -> Self {
        Self::launch(true)
    }

    /// Like [`Cluster::start`], also serving TLS on a free loopback port: the server's
    /// certificate comes from a test CA ([`Cluster::tls_ca`]), TCP logins need TLS (`hostssl`
    /// only) and the password [`TLS_PASSWORD`]; the unix socket still trusts every login.
    pub(crate) fn start_tls() -> Self {
        let mut cluster = Self::init(false);
        let certs = cluster.dir.path().join("tls");
        std::fs::create_dir(&certs).expect("certificate directory");
        let ca = make_ca(&certs, "ca");
        make_server_cert(&certs, "ca");
        let key = certs.join("server.key");
        if cluster.as_postgres {
            // The server refuses a key that its own user does not own, or that others can read.
            checked(
                "chown",
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&key)
                    .output(),
            );
        }
        checked("chmod", Command::new("chmod").arg("600").arg(&key).output());
        std::fs::write(
            cluster.data_dir().join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .expect("write pg_hba.conf");
        cluster.tls = Some(Tls {
            ca,
            password: TLS_PASSWORD.to_owned(),
        });
        for tries in 1.. {
            cluster.port = free_port();
            match cluster.try_pg_ctl_start() {
                Ok(()) => break,
                // Most likely the port was taken in between: another one.
                Err(_) if tries < PORT_TRIES => {}
                Err(e) => panic!("{e}"),
            }
        }
        cluster.psql(&format!("ALTER ROLE postgres PASSWORD '{TLS_PASSWORD}'"));
        cluster
    }

    fn launch(durable: bool) -> Self {
        let mut cluster = Self::init(durable);
        cluster.pg_ctl_start();
        cluster
    }

    /// A new, stopped cluster.
    fn init(durable: bool) -> Self {
        assert!(
            binaries_present(),
            "PostgreSQL 15 server binaries are missing from {PG_BIN}: install them \
             (`apt-get install -y postgresql-15`, as .ci/run does) to run the PostgreSQL tests"
        );
        // Short, so that the socket path stays well under the 108-byte limit.
        let dir = tempfile::Builder::new()
            .prefix("skpg")
            .tempdir_in("/tmp")
            .expect("temporary directory");
        let as_postgres = is_root();
        if as_postgres {
            checked(
                "chown",
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(dir.path())
                    .output(),
            );
        }
        let cluster = Self {
            dir,
            as_postgres,
            running: false,
            durable,
            port: DEFAULT_PORT,
            tls: None,
        };
        let data = cluster.data_dir();
        checked(
            "initdb",
            cluster
                .server_command("initdb")
                .args(["--auth=trust", "--username=postgres", "--encoding=UTF8"])
                .args(["--locale=C", "--no-sync", "-D"])
                .arg(&data)
                .output(),
        );
        cluster
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory holding the server's unix socket.
    pub(crate) fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    fn server_command(&self, name: &str) -> Command {
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin(name));
            c
        } else {
            Command::new(bin(name))
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    fn pg_ctl_start(&mut self) {
        if let Err(e) = self.try_pg_ctl_start() {
            panic!("{e}");
        }
    }

    fn try_pg_ctl_start(&mut self) -> Result<(), String> {
        let flush = if self.durable {
            "-c fsync=on -c synchronous_commit=on -c shared_buffers=128MB"
        } else {
            "-c fsync=off -c shared_buffers=16MB"
        };
        let listen = match &self.tls {
            None => "-c listen_addresses=''".to_owned(),
            Some(_) => {
                let certs = self.dir.path().join("tls");
                format!(
                    "-c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file='{}' \
                     -c ssl_key_file='{}'",
                    certs.join("server.crt").display(),
                    certs.join("server.key").display()
                )
            }
        };
        let options = format!(
            "{listen} -c port={} -c unix_socket_directories='{}' {flush} -c max_connections=120",
            self.port,
            self.socket_dir().display()
        );
        let out = self
            .server_command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-o", &options, "start"])
            .stdout(Stdio::null())
            .output()
            .map_err(|e| format!("pg_ctl start: cannot run: {e}"))?;
        if !out.status.success() {
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            return Err(format!(
                "pg_ctl start failed ({}):\n{}\n{log}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        self.running = true;
        Ok(())
    }

    /// Stops the server at once (as a crash would), keeping its files.
    pub(crate) fn stop(&mut self) {
        if self.running {
            let _ = self
                .server_command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            self.running = false;
        }
    }

    /// Starts a stopped server again on its files.
    pub(crate) fn restart(&mut self) {
        assert!(!self.running, "the server is running");
        self.pg_ctl_start();
    }

    /// Creates a database; returns its connection string.
    pub(crate) fn create_database(&self, name: &str) -> String {
        checked("createdb", self.client("createdb").arg(name).output());
        self.url(name)
    }

    /// A PostgreSQL client program, connecting over the socket as user `postgres`.
    fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new(bin(program));
        cmd.arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-U", "postgres"]);
        cmd
    }

    /// Runs `statement` in database `name` with `psql`, as whoever can write the database
    /// would; returns its unaligned output.
    pub(crate) fn sql(&self, name: &str, statement: &str) -> String {
        let out = checked(
            "psql",
            self.client("psql")
                .args([
                    "-d",
                    name,
                    "-X",
                    "-At",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-c",
                    statement,
                ])
                .output(),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The connection string of database `name` (as user `postgres`, over the socket).
    pub(crate) fn url(&self, name: &str) -> String {
        format!(
            "postgres://postgres@/{name}?host={}&port={}",
            self.socket_dir().display(),
            self.port
        )
    }

    /// The connection string of database `name` over TCP to `host` (`localhost` or
    /// `127.0.0.1`), as user `postgres` with its password, `query` appended (`sslmode=…`).
    /// Panics unless the cluster was started with [`Cluster::start_tls`].
    pub(crate) fn tcp_url(&self, host: &str, name: &str, query: &str) -> String {
        let tls = self.tls.as_ref().expect("a cluster started with TLS");
        format!(
            "postgres://postgres:{}@{host}:{}/{name}?{query}",
            tls.password, self.port
        )
    }

    /// The CA that signed the server's certificate (a PEM file), for `sslrootcert`.
    pub(crate) fn tls_ca(&self) -> &Path {
        &self.tls.as_ref().expect("a cluster started with TLS").ca
    }

    /// Runs one SQL statement as `postgres` over the socket.
    fn psql(&self, sql: &str) {
        checked(
            sql,
            Command::new(bin("psql"))
                .arg("-h")
                .arg(self.socket_dir())
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                ])
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
                .stdin(Stdio::null())
                .output(),
        );
    }

    /// Writes every dirty page out to the data files (`CHECKPOINT`), so that a scan of
    /// [`Cluster::data_files`] sees all that was committed, not only the write-ahead log.
    pub(crate) fn checkpoint(&self) {
        self.psql("CHECKPOINT");
    }

    /// Every file of the cluster's data directory.
    pub(crate) fn data_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.data_dir(), &mut out);
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}
