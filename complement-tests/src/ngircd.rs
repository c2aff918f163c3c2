//! A real IRC server for bridge tests: Debian's `ngircd`, installed on first use, started in
//! the foreground on a free loopback port with a generated minimal config in a temporary
//! directory, and killed on drop.
//!
//! ```no_run
//! # async fn f() {
//! let irc = paracord_complement::ngircd::Ngircd::start().await;
//! let (host, port) = ("127.0.0.1", irc.port());
//! # }
//! ```

use std::{
    fs::{File, OpenOptions},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::server::free_port;

/// How long ngircd gets to accept connections after being spawned.
const STARTUP_DEADLINE: Duration = Duration::from_secs(15);

/// Where Debian installs the daemon (it is not on a normal user's `PATH`).
const DEBIAN_PATH: &str = "/usr/sbin/ngircd";

/// The `ngircd` binary: `NGIRCD_BIN`, `/usr/sbin/ngircd`, or `ngircd` on the `PATH`;
/// installed with apt (as root, or through `sudo -n`) when none is found.
pub fn ensure_installed() -> PathBuf {
    if let Some(bin) = find() {
        return bin;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let apt = |args: &[&str]| {
        let mut cmd = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.args(["-n", "apt-get"]);
            c
        };
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd.output()
    };
    let mut install = apt(&["install", "-y", "--no-install-recommends", "ngircd"]);
    if !install.as_ref().is_ok_and(|o| o.status.success()) {
        // The package lists may be missing or stale on a fresh machine.
        let _ = apt(&["update"]);
        install = apt(&["install", "-y", "--no-install-recommends", "ngircd"]);
    }
    match (install, find()) {
        (_, Some(bin)) => bin,
        (Ok(out), None) => panic!(
            "expected `apt-get install ngircd` to install ngircd (root or passwordless sudo \
             needed; or set NGIRCD_BIN): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        (Err(e), None) => panic!("expected to run apt-get to install ngircd: {e}"),
    }
}

fn find() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("NGIRCD_BIN") {
        return Some(PathBuf::from(bin));
    }
    if Path::new(DEBIAN_PATH).exists() {
        return Some(PathBuf::from(DEBIAN_PATH));
    }
    Command::new("ngircd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()
        .filter(|s| s.success())
        .map(|_| PathBuf::from("ngircd"))
}

/// One ngircd process on `127.0.0.1:<port>` (and, from [`Ngircd::start_tls`], a TLS port
/// too). The ports stay the same across [`Ngircd::restart`], so clients can reconnect.
pub struct Ngircd {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    tls_port: Option<u16>,
    child: Option<Child>,
}

impl Ngircd {
    /// The IRC server's name (`irc.paracord.test`): the prefix of its numerics and notices.
    pub const SERVER_NAME: &'static str = "irc.paracord.test";

    /// Installs ngircd if needed and starts it on a free loopback port.
    pub async fn start() -> Ngircd {
        Self::start_inner(false).await
    }

    /// Like [`Ngircd::start`], with a second port that speaks TLS, its certificate
    /// self-signed for `127.0.0.1` and `localhost` ([`Ngircd::tls_cert_path`]).
    pub async fn start_tls() -> Ngircd {
        Self::start_inner(true).await
    }

    async fn start_inner(tls: bool) -> Ngircd {
        let bin = ensure_installed();
        let dir = tempfile::Builder::new()
            .prefix("paracord-ngircd-")
            .tempdir()
            .unwrap_or_else(|e| panic!("expected a temporary directory: {e}"));
        if tls {
            let cert =
                rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
                    .unwrap_or_else(|e| panic!("expected a self-signed certificate: {e}"));
            for (name, pem) in [
                ("tls.crt", cert.cert.pem()),
                ("tls.key", cert.signing_key.serialize_pem()),
            ] {
                std::fs::write(dir.path().join(name), pem)
                    .unwrap_or_else(|e| panic!("expected to write {name}: {e}"));
            }
        }
        let mut irc = Ngircd {
            dir,
            bin,
            port: 0,
            tls_port: None,
            child: None,
        };
        // The port was free when chosen; another process may take it first: try again.
        for _ in 0..5 {
            irc.port = free_port();
            irc.tls_port = tls.then(free_port);
            irc.write_config();
            if irc.spawn().await {
                return irc;
            }
        }
        panic!(
            "expected ngircd to listen on a free port in 5 tries; log:\n{}",
            irc.log()
        );
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The loopback port that speaks TLS (from [`Ngircd::start_tls`]).
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// The TLS port's self-signed certificate (PEM): the CA a client must trust.
    pub fn tls_cert_path(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    /// The generated configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("ngircd.conf")
    }

    /// ngircd's stdout and stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ngircd.log")).unwrap_or_default()
    }

    /// A minimal config: loopback only; no PAM, ident or DNS lookups (nothing outside the
    /// machine is asked); no per-address connection limit and no flood penalties (a bridge
    /// opens one connection per Matrix user, all from 127.0.0.1); nicks up to 30 characters.
    fn write_config(&self) {
        let dir = self.dir.path().display();
        let config = format!(
            "[Global]\n\
             \tName = {name}\n\
             \tInfo = Paracord test IRC server\n\
             \tAdminInfo1 = Paracord tests\n\
             \tAdminInfo2 = loopback\n\
             \tAdminEMail = nobody@invalid\n\
             \tListen = 127.0.0.1\n\
             \tPorts = {port}\n\
             \tMotdPhrase = \"Paracord test server\"\n\
             \tPidFile = {dir}/ngircd.pid\n\
             [Limits]\n\
             \tMaxConnectionsIP = 0\n\
             \tMaxJoins = 0\n\
             \tMaxNickLength = 30\n\
             \tMaxPenaltyTime = 0\n\
             \tPingTimeout = 120\n\
             \tPongTimeout = 20\n\
             [Options]\n\
             \tPAM = no\n\
             \tIdent = no\n\
             \tDNS = no\n",
            name = Self::SERVER_NAME,
            port = self.port,
        );
        let mut config = config;
        if let Some(tls_port) = self.tls_port {
            config.push_str(&format!(
                "[SSL]\n\
                 \tCertFile = {dir}/tls.crt\n\
                 \tKeyFile = {dir}/tls.key\n\
                 \tPorts = {tls_port}\n"
            ));
        }
        std::fs::write(self.config_path(), config)
            .unwrap_or_else(|e| panic!("expected to write the ngircd config: {e}"));
    }

    /// Spawns ngircd in the foreground and waits until the port accepts connections;
    /// `false` if it exited first (the port was taken).
    async fn spawn(&mut self) -> bool {
        let log: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("ngircd.log"))
            .unwrap_or_else(|e| panic!("expected to open the ngircd log: {e}"));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("expected to clone the log handle: {e}"));
        let child = Command::new(&self.bin)
            .arg("--nodaemon")
            .arg("--config")
            .arg(self.config_path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("expected to spawn {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            let listening = |port| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            if listening(self.port) && self.tls_port.is_none_or(listening) {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "expected ngircd to listen on 127.0.0.1:{} within {STARTUP_DEADLINE:?}; log:\n{}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Kills the process (every client is disconnected).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process and starts it again on the same port (a network outage for its
    /// clients).
    pub async fn restart(&mut self) {
        self.stop();
        // The old listening socket is closed with the process; retry briefly if the kernel
        // has not released the port yet.
        let deadline = Instant::now() + STARTUP_DEADLINE;
        while !self.spawn().await {
            assert!(
                Instant::now() < deadline,
                "expected ngircd to start again on port {}; log:\n{}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Ngircd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- ngircd log ----\n{}\n---- end ----", self.log());
        }
        self.stop();
    }
}
