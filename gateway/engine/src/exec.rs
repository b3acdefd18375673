//! The exec adapter: runs a connection's program, in a terminal (`sluice connect`) or with
//! the script on standard input (`sluice exec`), and exposes its input and output as byte
//! streams for the session's frame path.
//!
//! The environment comes from the connection's configuration, never from the client. Each
//! child gets SIGKILL when the gateway dies (PR_SET_PDEATHSIG), and is killed when its
//! session ends.

use std::os::fd::OwnedFd;
use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::Child;

use crate::config::ExecConnection;

pub type Input = Box<dyn AsyncWrite + Send + Unpin>;
pub type Output = Box<dyn AsyncRead + Send + Unpin>;

pub struct Process {
    pub child: Child,
    pub input: Input,
    pub output: Output,
    /// The terminal's controlling side, for resizing and reading its echo mode.
    terminal: Option<OwnedFd>,
}

impl Process {
    /// Runs the connection's `script` program with stdout and stderr merged into `output`.
    pub fn script(conn: &ExecConnection) -> std::io::Result<Process> {
        let (reader, writer) = std::io::pipe()?;
        // A larger pipe lets a fast program run ahead while a chunk's commit is in flight.
        let _ = rustix::pipe::fcntl_setpipe_size(&reader, 1 << 20);
        let mut cmd = tokio::process::Command::new(&conn.script[0]);
        cmd.args(&conn.script[1..])
            .env_clear()
            .envs(base_env())
            .envs(conn.resolved_env())
            .stdin(Stdio::piped())
            .stdout(writer.try_clone()?)
            .stderr(writer)
            .kill_on_drop(true);
        if let Some(dir) = &conn.cwd {
            cmd.current_dir(dir);
        }
        die_with_parent(cmd.as_std_mut());
        let mut child = cmd.spawn()?;
        let input = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no stdin"))?;
        let output = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;
        Ok(Process {
            child,
            input: Box::new(input),
            output: Box::new(output),
            terminal: None,
        })
    }

    /// Runs the connection's `interactive` program in a new terminal of the given size.
    pub fn interactive(conn: &ExecConnection, rows: u16, cols: u16) -> std::io::Result<Process> {
        let (pty, pts) = pty_process::open().map_err(std::io::Error::other)?;
        pty.resize(pty_process::Size::new(rows.max(1), cols.max(1)))
            .map_err(std::io::Error::other)?;
        let mut cmd = pty_process::Command::new(&conn.interactive[0])
            .args(&conn.interactive[1..])
            .env_clear()
            .envs(base_env())
            .envs(conn.resolved_env())
            .kill_on_drop(true);
        if let Some(dir) = &conn.cwd {
            cmd = cmd.current_dir(dir);
        }
        #[allow(unsafe_code)]
        // SAFETY: the closure only calls prctl (async-signal-safe) between fork and exec.
        let cmd = unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))?;
                Ok(())
            })
        };
        let child = cmd.spawn(pts).map_err(std::io::Error::other)?;
        let terminal = std::os::fd::AsFd::as_fd(&pty).try_clone_to_owned()?;
        let (output, input) = pty.into_split();
        Ok(Process {
            child,
            input: Box::new(input),
            output: Box::new(output),
            terminal: Some(terminal),
        })
    }

    pub fn resize(&self, rows: u16, cols: u16) {
        if let Some(fd) = &self.terminal {
            let size = rustix::termios::Winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            let _ = rustix::termios::tcsetwinsize(fd, size);
        }
    }

    /// Whether typed input is visible: false at a password prompt. A program that reads
    /// passwords turns echo off and keeps line mode (`getpass`, `sudo`, `stty -echo`); a line
    /// editor such as readline turns both off and echoes by itself, so that counts as visible.
    pub fn echoes(&self) -> bool {
        use rustix::termios::LocalModes;
        match &self.terminal {
            Some(fd) => rustix::termios::tcgetattr(fd)
                .map(|t| {
                    t.local_modes.contains(LocalModes::ECHO)
                        || !t.local_modes.contains(LocalModes::ICANON)
                })
                .unwrap_or(true),
            None => true,
        }
    }
}

/// A minimal, predictable environment; the connection adds its own.
fn base_env() -> Vec<(String, String)> {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let home = std::env::var("HOME").unwrap_or_else(|_| "/".into());
    vec![
        ("PATH".into(), path),
        ("HOME".into(), home),
        ("LANG".into(), "C.UTF-8".into()),
    ]
}

fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    #[allow(unsafe_code)]
    // SAFETY: the closure only calls prctl (async-signal-safe) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            Ok(())
        });
    }
}
