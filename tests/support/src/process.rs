//! Running child processes in tests without leaking credentials.
//!
//! Credentials reach children through stdin, files or the environment, never argv (where `ps`
//! shows them). `{:?}` of a [`Command`] prints the environment variables set on it, so failure
//! messages describe a command with [`describe`] (program and arguments only) instead.

use crate::Secret;
use std::io::Write;
use std::process::{Command, Output, Stdio};

/// `PROGRAM ARG...` of `cmd`, for messages: never the environment, which may carry a secret.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion; panics (naming the command with [`describe`]) if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", describe(cmd)))
}

/// Runs `cmd` with `input` on its stdin (for credentials: a curl config, a password).
pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", describe(cmd)));
    // a child that exits without reading its stdin is not an error here: its status says more
    let _ = child.stdin.take().expect("piped stdin").write_all(input);
    child.wait_with_output().unwrap_or_else(|e| panic!("cannot wait for {}: {e}", describe(cmd)))
}

/// Runs `cmd`; panics with its described command line, stdout and stderr unless it succeeds.
/// Returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    check_ok(cmd, out)
}

/// Panics with `cmd`'s described command line, stdout and stderr unless `out` is a success;
/// returns stdout.
pub fn check_ok(cmd: &Command, out: Output) -> String {
    assert!(
        out.status.success(),
        "{} failed ({}): {}{}",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `curl -K - ARGS`, with `config` (curl config lines such as `user = "U:P"` or
/// `header = "Authorization: Bearer T"`) on stdin, so credentials never appear in curl's argv.
/// `-s --max-time 10` are always set.
pub fn curl(config: Option<&Secret>, args: &[&str]) -> Output {
    let mut cmd = Command::new("curl");
    cmd.args(["-K", "-", "-s", "--max-time", "10"]).args(args);
    // (Secret drops a trailing newline; curl wants each config line ended)
    run_with_stdin(&mut cmd, format!("{}\n", config.map_or("", |c| c.expose())).as_bytes())
}

/// The HTTP status code curl got for `args` (with `config` as in [`curl`]), e.g. `"401"`;
/// `"000"` when there was no HTTP answer.
pub fn curl_code(config: Option<&Secret>, args: &[&str]) -> String {
    let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    all.extend_from_slice(args);
    String::from_utf8_lossy(&curl(config, &all).stdout).into_owned()
}

/// A curl config line sending `user:password` as HTTP basic credentials.
pub fn curl_basic_auth(user: &str, password: &Secret) -> Secret {
    Secret::new(format!("user = \"{user}:{}\"", password.expose()))
}

/// A curl config line sending `token` as a Bearer token.
pub fn curl_bearer(token: &Secret) -> Secret {
    Secret::new(format!("header = \"Authorization: Bearer {}\"", token.expose()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_never_prints_the_environment() {
        let mut c = Command::new("git");
        c.args(["clone", "URL"]).env("PRPOD_GIT_SECRET", "hunter2-hunter2");
        assert!(format!("{c:?}").contains("hunter2"), "std prints env: why describe exists");
        assert_eq!(describe(&c), "git clone URL");
    }

    #[test]
    fn curl_config_lines_are_secrets() {
        let s = Secret::new("p4ssw0rd-p4ssw0rd");
        assert_eq!(format!("{:?}", curl_basic_auth("u", &s)), "<redacted>");
        assert_eq!(curl_bearer(&s).expose(), "header = \"Authorization: Bearer p4ssw0rd-p4ssw0rd\"");
    }
}
