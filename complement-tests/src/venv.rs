//! Python virtualenvs under `$HOME/.cache/paracord/`, for the real peers the tests run
//! (Synapse, heisenbridge, a mautrix appservice…).
//!
//! A missing venv is installed once (`python3 -m venv` + `pip install`, minutes): it is built
//! under a temporary name next to its place and renamed into place, so concurrent test
//! processes never see half an install, and only `bin/python -m …` is used afterwards (a
//! renamed venv keeps working that way). A venv whose probe import fails (an interrupted
//! install, a changed pin) is replaced.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// Serialises installs within this process; across processes the rename decides.
static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One virtualenv: where it lives, what `pip` installs into it, and a Python statement that
/// succeeds only when the install is complete and the one wanted.
pub struct Venv<'a> {
    pub dir: PathBuf,
    pub packages: &'a [&'a str],
    pub probe: &'a str,
}

/// `$HOME/.cache/paracord/<name>`.
pub fn cache_dir(name: &str) -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| panic!("expected HOME to be set"));
    PathBuf::from(home).join(".cache/paracord").join(name)
}

/// The venv's Python.
pub fn python(venv: &Path) -> PathBuf {
    venv.join("bin").join("python")
}

fn probe_ok(venv: &Path, probe: &str) -> bool {
    Command::new(python(venv))
        .args(["-c", probe])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("expected to run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed with {}:\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Venv<'_> {
    /// Installs the packages unless the probe already passes; returns the venv's Python.
    pub fn ensure(&self) -> PathBuf {
        let venv = &self.dir;
        let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
        if probe_ok(venv, self.probe) {
            return python(venv);
        }
        let parent = venv
            .parent()
            .unwrap_or_else(|| panic!("expected {} to have a parent", venv.display()));
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("expected to create {}: {e}", parent.display()));
        let name = venv
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "venv".into());
        let staging = tempfile::Builder::new()
            .prefix(&format!("{name}.partial-"))
            .tempdir_in(parent)
            .unwrap_or_else(|e| {
                panic!("expected a staging directory in {}: {e}", parent.display())
            });
        eprintln!(
            "installing {} into {} (once; can take minutes)",
            self.packages.join(" "),
            venv.display()
        );
        run(
            Command::new("python3")
                .arg("-m")
                .arg("venv")
                .arg(staging.path()),
            "python3 -m venv (Debian: apt-get install python3-venv)",
        );
        run(
            Command::new(python(staging.path()))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(self.packages),
            &format!("pip install {}", self.packages.join(" ")),
        );
        if venv.exists() && !probe_ok(venv, self.probe) {
            std::fs::remove_dir_all(venv)
                .unwrap_or_else(|e| panic!("expected to remove {}: {e}", venv.display()));
        }
        let staged = staging.keep();
        if std::fs::rename(&staged, venv).is_err() {
            // Another process finished first; use its install.
            let _ = std::fs::remove_dir_all(&staged);
        }
        assert!(
            probe_ok(venv, self.probe),
            "expected `{}` to pass in {} after installing {}",
            self.probe,
            venv.display(),
            self.packages.join(" ")
        );
        python(venv)
    }
}
