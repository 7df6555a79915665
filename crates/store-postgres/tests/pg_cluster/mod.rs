//! A throwaway PostgreSQL 15 cluster for tests: `initdb` into a fresh temporary directory, served
//! on a unix socket in that directory only (no TCP port, so no port races), stopped and removed
//! when the guard drops.
//!
//! PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user, which
//! owns the directory. Missing binaries make the test fail with instructions, never skip it.
#![allow(
    dead_code,
    reason = "shared by the store's, the server's and the command line's tests, which use different parts"
)]

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
}

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

    fn launch(durable: bool) -> Self {
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
        let mut cluster = Self {
            dir,
            as_postgres,
            running: false,
            durable,
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
        cluster.pg_ctl_start();
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
        let flush = if self.durable {
            "-c fsync=on -c synchronous_commit=on -c shared_buffers=128MB"
        } else {
            "-c fsync=off -c shared_buffers=16MB"
        };
        let options = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' {flush} -c max_connections=120",
            self.socket_dir().display()
        );
        checked(
            "pg_ctl start",
            self.server_command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.dir.path().join("server.log"))
                .args(["-w", "-o", &options, "start"])
                .stdout(Stdio::null())
                .output(),
        );
        self.running = true;
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
        checked(
            "createdb",
            Command::new(bin("createdb"))
                .arg("-h")
                .arg(self.socket_dir())
                .args(["-U", "postgres", name])
                .output(),
        );
        self.url(name)
    }

    /// The connection string of database `name` (as user `postgres`, over the socket).
    pub(crate) fn url(&self, name: &str) -> String {
        format!(
            "postgres://postgres@/{name}?host={}",
            self.socket_dir().display()
        )
    }

    /// Writes every dirty page out to the data files (`CHECKPOINT`), so that a scan of
    /// [`Cluster::data_files`] sees all that was committed, not only the write-ahead log.
    pub(crate) fn checkpoint(&self) {
        checked(
            "CHECKPOINT",
            Command::new(bin("psql"))
                .arg("-h")
                .arg(self.socket_dir())
                .args(["-U", "postgres", "-d", "postgres", "-X", "-q"])
                .args(["-v", "ON_ERROR_STOP=1", "-c", "CHECKPOINT"])
                .stdin(Stdio::null())
                .output(),
        );
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
