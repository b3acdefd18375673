//! The exec adapter: runs a connection's program, in a terminal (`sluice connect`) or with
//! the script on standard input (`sluice exec`), and exposes its input and output as byte
//! streams for the session's frame path.
//!
//! The environment comes from the connection's configuration, never from the client. Each
//! child gets SIGKILL when the gateway dies (PR_SET_PDEATHSIG), and is killed when its
//! session ends.

use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::Child;

pub type Input = Box<dyn AsyncWrite + Send + Unpin>;
pub type Output = Box<dyn AsyncRead + Send + Unpin>;

/// What to run: a program, its whole environment (beyond [`base_env`]) and its folder.
#[derive(Clone, Debug)]
pub struct Program {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<std::path::PathBuf>,
}

pub struct Process {
    pub input: Input,
    pub output: Output,
    control: Control,
}

/// What runs the program: a child of this process, or an agent's (over a tunnel stream).
enum Control {
    Local {
        child: Child,
        /// The terminal's controlling side, for resizing and reading its echo mode.
        terminal: Option<OwnedFd>,
    },
    Remote(Remote),
}

/// The gateway's handle on a program an agent runs.
pub struct Remote {
    /// Resizes and the input's end, in order with the input.
    pub control: tokio::sync::mpsc::Sender<crate::wire::Message>,
    /// The terminal's echo mode as the agent last reported it.
    pub echoes: Arc<AtomicBool>,
    /// The exit status, or why none will come.
    pub exit: tokio::sync::oneshot::Receiver<Result<i32, String>>,
    /// The tasks carrying the stream; aborting them drops (resets) it, and the agent kills
    /// the program.
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Remote {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Process {
    /// A program an agent runs: its input, output and handle, from `agent::remote`.
    pub fn remote(input: Input, output: Output, remote: Remote) -> Process {
        Process {
            input,
            output,
            control: Control::Remote(remote),
        }
    }

    /// Runs `program` with stdout and stderr merged into `output` (the script goes to stdin).
    pub fn script(program: &Program) -> std::io::Result<Process> {
        Process::piped(program, true)
    }

    /// Runs `program` speaking a protocol on stdio (an MCP server): `output` is its stdout
    /// alone, which stderr's diagnostics must not corrupt; they are discarded.
    pub fn stdio(program: &Program) -> std::io::Result<Process> {
        Process::piped(program, false)
    }

    fn piped(program: &Program, with_stderr: bool) -> std::io::Result<Process> {
        let (reader, writer) = std::io::pipe()?;
        // A larger pipe lets a fast program run ahead while a chunk's commit is in flight.
        let _ = rustix::pipe::fcntl_setpipe_size(&reader, 1 << 20);
        let argv = checked(program)?;
        let stderr = match with_stderr {
            true => Stdio::from(writer.try_clone()?),
            false => Stdio::null(),
        };
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .envs(base_env())
            .envs(program.env.iter().cloned())
            .stdin(Stdio::piped())
            .stdout(writer)
            .stderr(stderr)
            .kill_on_drop(true);
        if let Some(dir) = &program.cwd {
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
            input: Box::new(input),
            output: Box::new(output),
            control: Control::Local {
                child,
                terminal: None,
            },
        })
    }

    /// Runs `program` in a new terminal of the given size.
    pub fn interactive(program: &Program, rows: u16, cols: u16) -> std::io::Result<Process> {
        let argv = checked(program)?;
        let (pty, pts) = pty_process::open().map_err(std::io::Error::other)?;
        pty.resize(pty_process::Size::new(rows.max(1), cols.max(1)))
            .map_err(std::io::Error::other)?;
        let mut cmd = pty_process::Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .envs(base_env())
            .envs(program.env.iter().cloned())
            .kill_on_drop(true);
        if let Some(dir) = &program.cwd {
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
            input: Box::new(input),
            output: Box::new(output),
            control: Control::Local {
                child,
                terminal: Some(terminal),
            },
        })
    }

    /// Takes the input and output, for a transport that owns them; the process stays here,
    /// to be waited for or killed.
    pub fn take_io(&mut self) -> (Input, Output) {
        (
            std::mem::replace(&mut self.input, Box::new(tokio::io::sink())),
            std::mem::replace(&mut self.output, Box::new(tokio::io::empty())),
        )
    }

    pub fn resize(&self, rows: u16, cols: u16) {
        match &self.control {
            Control::Local {
                terminal: Some(fd), ..
            } => {
                let size = rustix::termios::Winsize {
                    ws_row: rows,
                    ws_col: cols,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                let _ = rustix::termios::tcsetwinsize(fd, size);
            }
            Control::Local { terminal: None, .. } => {}
            Control::Remote(remote) => {
                let _ = remote
                    .control
                    .try_send(crate::wire::Message::Resize { rows, cols });
            }
        }
    }

    /// Whether typed input is visible: false at a password prompt (see [`terminal_echoes`]).
    pub fn echoes(&self) -> bool {
        match &self.control {
            Control::Local { terminal, .. } => terminal.as_ref().is_none_or(terminal_echoes),
            Control::Remote(remote) => remote.echoes.load(Ordering::Acquire),
        }
    }

    /// Ends the program now (its session is over).
    pub fn kill(&mut self) {
        match &mut self.control {
            Control::Local { child, .. } => {
                let _ = child.start_kill();
            }
            Control::Remote(remote) => {
                for task in &remote.tasks {
                    task.abort();
                }
            }
        }
    }

    /// The program's exit status (128 + the signal's number when a signal ended it).
    pub async fn wait(&mut self) -> Result<i32, String> {
        use std::os::unix::process::ExitStatusExt;
        match &mut self.control {
            Control::Local { child, .. } => {
                let status = child.wait().await.map_err(|e| e.to_string())?;
                Ok(status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
            }
            Control::Remote(remote) => (&mut remote.exit)
                .await
                .unwrap_or_else(|_| Err("the agent's stream ended without an exit status".into())),
        }
    }
}

/// Whether a terminal shows what is typed: false at a password prompt. A program that reads
/// passwords turns echo off and keeps line mode (`getpass`, `sudo`, `stty -echo`); a line
/// editor such as readline turns both off and echoes by itself, so that counts as visible.
pub fn terminal_echoes(fd: &OwnedFd) -> bool {
    use rustix::termios::LocalModes;
    rustix::termios::tcgetattr(fd)
        .map(|t| {
            t.local_modes.contains(LocalModes::ECHO) || !t.local_modes.contains(LocalModes::ICANON)
        })
        .unwrap_or(true)
}

/// The program's words, refusing an empty command line with a clear error.
fn checked(program: &Program) -> std::io::Result<&[String]> {
    if program.argv.is_empty() {
        return Err(std::io::Error::other("no program is configured"));
    }
    Ok(&program.argv)
}

/// A minimal, predictable environment; the connection adds its own.
/// What every program the gateway starts gets of its environment (beyond its own `env`).
fn base_env() -> Vec<(String, String)> {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let home = std::env::var("HOME").unwrap_or_else(|_| "/".into());
    vec![
        ("PATH".into(), path),
        ("HOME".into(), home),
        ("LANG".into(), "C.UTF-8".into()),
    ]
}

/// The program dies with the gateway (it is never left running on its own).
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
