//! The binary's behaviour without a server. The end-to-end checks against a homeserver
//! are in complement-tests/matrix-sdk/tests/e2ee.rs and complement-tests/js (this test
//! target also makes `cargo test -p paracord-cli` build the binary they run).

#![allow(clippy::expect_used)]

use std::process::Command;

fn cli() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_paracord-cli"));
    cmd.env_remove("PARACORD_CLI_STORE")
        .env_remove("PARACORD_CLI_PASSWORD");
    cmd
}

#[test]
fn help_lists_every_subcommand() {
    let out = cli().arg("--help").output().expect("paracord-cli runs");
    assert!(out.status.success(), "expected --help to succeed: {out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    for command in [
        "login", "rooms", "join", "send", "tail", "dm", "verify", "backup", "restore", "whoami",
    ] {
        assert!(
            help.contains(command),
            "expected `{command}` in --help, got:\n{help}"
        );
    }
}

#[test]
fn commands_without_a_login_fail_and_say_so() {
    let store = tempfile::tempdir().expect("a temporary directory");
    let out = cli()
        .arg("--store")
        .arg(store.path())
        .args(["send", "!room:example.org", "hello"])
        .output()
        .expect("paracord-cli runs");
    assert!(
        !out.status.success(),
        "expected `send` with an empty store to fail: {out:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no session") && stderr.contains("login"),
        "expected the error to point at `login`, got: {stderr}"
    );
    assert!(out.stdout.is_empty(), "expected nothing on stdout: {out:?}");
}

#[test]
fn login_needs_a_password() {
    let store = tempfile::tempdir().expect("a temporary directory");
    let out = cli()
        .arg("--store")
        .arg(store.path())
        .args([
            "login",
            "--homeserver",
            "http://127.0.0.1:9",
            "--user",
            "@a:b",
        ])
        .output()
        .expect("paracord-cli runs");
    assert!(
        !out.status.success(),
        "expected login without a password to fail"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--password"),
        "expected clap to ask for --password, got: {stderr}"
    );
}
