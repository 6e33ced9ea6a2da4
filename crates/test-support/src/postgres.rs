//! A real PostgreSQL server for tests: Debian's `postgresql` binaries (installed by scripts/test),
//! a cluster made by `initdb` in a temporary directory, started by `pg_ctl` on a free loopback
//! port with its Unix socket in that directory, trust authentication for the `postgres` user.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the cluster belongs to
//! `nobody` and every server-side command runs through `runuser -u nobody`. The binaries come from
//! `$ENVELOPE_PG_BIN` (a directory), else the newest `/usr/lib/postgresql/<version>/bin`.
//!
//! [`Postgres::start_tls`] serves TLS only (a `hostssl` line and no `host` one), with a server
//! certificate for 127.0.0.1 signed by a test CA ([`Postgres::ca_cert`]), made with openssl.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running PostgreSQL cluster (stopped on drop).
pub struct Postgres {
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    run_as: Option<String>,
    options: String,
    ca: Option<PathBuf>,
    dir: tempfile::TempDir,
}

/// The directory holding `initdb`, `pg_ctl`, `postgres` and `psql`.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("ENVELOPE_PG_BIN") {
        return PathBuf::from(d);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL not found under /usr/lib/postgresql: run scripts/test (it installs postgresql) \
             or set ENVELOPE_PG_BIN to the directory holding initdb and pg_ctl"
        ),
    }
}

impl Postgres {
    /// Creates a cluster and starts it; waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_inner(false)
    }

    /// Like [`Postgres::start`], accepting TCP connections over TLS only.
    pub fn start_tls() -> Self {
        Self::start_inner(true)
    }

    fn start_inner(tls: bool) -> Self {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let run_as = nix::unistd::geteuid().is_root().then(|| "nobody".to_string());
        if let Some(user) = &run_as {
            let u = nix::unistd::User::from_name(user).unwrap().unwrap_or_else(|| panic!("no user {user}"));
            std::os::unix::fs::chown(dir.path(), Some(u.uid.as_raw()), Some(u.gid.as_raw())).unwrap();
        }
        let port = crate::net::free_port();
        let mut options = format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", dir.path().display());
        let mut pg =
            Postgres { port, data: dir.path().join("data"), bin, run_as, options: String::new(), ca: None, dir };
        pg.server_cmd(
            "initdb",
            &["-D", &pg.data_str(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"],
        );
        if tls {
            let certs = pg.dir.path().join("certs");
            std::fs::create_dir(&certs).unwrap();
            let (cert, key, ca, _) = crate::etcd::make_certs(&certs);
            // The server reads its key as the cluster's owner and wants it private.
            for f in [&cert, &key] {
                let to = pg.data.join(f.file_name().unwrap());
                std::fs::copy(f, &to).unwrap();
                std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
                if let Some(user) = &pg.run_as {
                    let u = nix::unistd::User::from_name(user).unwrap().unwrap();
                    std::os::unix::fs::chown(&to, Some(u.uid.as_raw()), Some(u.gid.as_raw())).unwrap();
                }
            }
            std::fs::write(pg.data.join("pg_hba.conf"), "local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
                .unwrap();
            options.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
            pg.ca = Some(ca);
        }
        pg.options = options;
        pg.pg_ctl_start();
        pg
    }

    /// The CA that signed the server's certificate (clusters from [`Postgres::start_tls`]).
    pub fn ca_cert(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// Stops the server (fast shutdown: clients are disconnected) and starts it again.
    pub fn restart(&self) {
        self.stop();
        self.pg_ctl_start();
    }

    /// Stops the server (fast shutdown); [`Postgres::restart`] or [`Postgres::resume`] start it.
    pub fn stop(&self) {
        self.server_cmd("pg_ctl", &["stop", "-D", &self.data_str(), "-m", "fast", "-w"]);
    }

    /// Starts a server stopped by [`Postgres::stop`].
    pub fn resume(&self) {
        self.pg_ctl_start();
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        self.psql(&format!("CREATE DATABASE {name}"));
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    fn pg_ctl_start(&self) {
        let log = self.dir.path().join("server.log").to_string_lossy().into_owned();
        let out =
            self.run("pg_ctl", &["start", "-D", &self.data_str(), "-w", "-t", "60", "-l", &log, "-o", &self.options]);
        if !out.status.success() {
            panic!(
                "pg_ctl start failed: {}{}\nserver log:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The directory of the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `sql` with `psql` over TCP as `postgres`; returns the unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// [`Postgres::psql`] in database `db`.
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim_end().to_string()
    }

    fn data_str(&self) -> String {
        self.data.to_string_lossy().into_owned()
    }

    /// Runs a server-side program (as the cluster's owner).
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(args).current_dir(self.dir.path()).output().unwrap()
    }

    fn server_cmd(&self, program: &str, args: &[&str]) {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["stop", "-D", &self.data_str(), "-m", "immediate", "-w"]);
    }
}
