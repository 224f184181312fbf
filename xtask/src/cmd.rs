//! Running external commands: every command is echoed before it runs, and a
//! failure becomes an error that names the command.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// An external command to run, echoed as `$ VAR=value program args...`.
///
/// A thin wrapper over [`std::process::Command`] that remembers what it
/// will run, so the echo and the error messages show exactly that.
pub struct Cmd {
    /// What the echo shows as the program (e.g. `cargo` even when the real
    /// program is the absolute path cargo gave us in `$CARGO`).
    display: OsString,
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

impl Cmd {
    /// A command running `program`, found on `PATH` unless it is a path.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref().to_owned();
        Cmd {
            display: program.clone(),
            program,
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// A `cargo` command using the same cargo that runs xtask.
    ///
    /// Cargo puts its own path in `$CARGO` for the programs it runs; using it
    /// keeps every step on the toolchain that `cargo xtask` was started with
    /// (e.g. `cargo +nightly xtask ...`) rather than whatever `cargo` on
    /// `PATH` resolves to.
    pub fn cargo() -> Self {
        let mut cmd = Cmd::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.display = "cargo".into();
        cmd
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends several arguments.
    pub fn args<I>(mut self, args: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the command (and shows it in the echo).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Runs the command with inherited stdio; fails unless it exits with 0.
    pub fn run(self) -> Result<()> {
        let status = self.status()?;
        if !status.success() {
            bail!("command `{self}` failed ({status})");
        }
        Ok(())
    }

    /// Runs the command with inherited stdio and returns its exit status,
    /// whatever it is. Fails only if the command cannot be started.
    pub fn status(&self) -> Result<ExitStatus> {
        eprintln!("$ {self}");
        self.command()
            .status()
            .with_context(|| format!("could not start `{self}`"))
    }

    /// Runs the command capturing its stdout and stderr, whatever its exit
    /// status: used for probes such as `dpkg-query`, whose non-zero exit just
    /// means "not installed". Fails only if the command cannot be started.
    pub fn output(&self) -> Result<Output> {
        eprintln!("$ {self}");
        self.command()
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("could not start `{self}`"))
    }

    /// Like [`Cmd::output`], but also fails on a non-zero exit status, and
    /// returns stdout as text.
    pub fn read(&self) -> Result<String> {
        let output = self.output()?;
        if !output.status.success() {
            bail!(
                "command `{self}` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Starts the command in the background with stdin closed and the given
    /// stdout and stderr, for servers and for runs that need a deadline.
    /// The caller owns the child: it must wait for it or kill it.
    pub fn spawn(&self, stdout: Stdio, stderr: Stdio) -> Result<Child> {
        eprintln!("$ {self}");
        self.command()
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("could not start `{self}`"))
    }

    /// Like [`Cmd::output`], but kills the command and fails if it has not
    /// finished within `timeout`.
    pub fn output_within(&self, timeout: Duration) -> Result<Output> {
        let mut child = self.spawn(Stdio::piped(), Stdio::piped())?;
        // Both pipes are drained on threads of their own: a child blocked on
        // a full pipe would otherwise never exit.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_end(&mut bytes);
                }
                bytes
            })
        };
        let stdout = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("command `{self}` did not finish within {timeout:?}; killed it");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Ok(Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        })
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

impl fmt::Display for Cmd {
    /// Shell-like rendering, quoted so that it can be copied and re-run.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, value) in &self.envs {
            write!(
                f,
                "{}={} ",
                key.to_string_lossy(),
                shell_quote(&value.to_string_lossy())
            )?;
        }
        write!(f, "{}", shell_quote(&self.display.to_string_lossy()))?;
        for arg in &self.args {
            write!(f, " {}", shell_quote(&arg.to_string_lossy()))?;
        }
        Ok(())
    }
}

/// Quotes `s` for a POSIX shell when it holds anything but plainly safe
/// characters.
fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_=+./:,@%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_when_needed() {
        let cmd = Cmd::new("dpkg-query")
            .args(["-W", "-f=${Status}", "redis-server"])
            .env("A", "b c");
        assert_eq!(
            cmd.to_string(),
            "A='b c' dpkg-query -W '-f=${Status}' redis-server"
        );
    }

    #[test]
    fn quote_escapes_single_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn cargo_is_displayed_as_cargo() {
        let cmd = Cmd::cargo().args(["fmt", "--all"]);
        assert_eq!(cmd.to_string(), "cargo fmt --all");
    }
}
