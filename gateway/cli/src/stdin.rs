//! Standard input for the client's sessions, read on the runtime itself where it can be.
//!
//! Tokio's `stdin()` reads on a blocking thread and hands each read to the runtime: one
//! thread wake-up more per keystroke, which on a virtual machine is a good part of what a
//! keystroke's round trip through the gateway costs. A terminal or a pipe can be polled by the
//! reactor instead; it is opened again (`/proc/self/fd/0`) so that the new open file
//! description, not the one the shell shares, is the one made non-blocking: a client that is
//! killed leaves the shell's terminal as it was. Anything else (a file, `/dev/null`, a socket)
//! goes through Tokio's `stdin()`.

use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::unix::pipe;

pub enum Stdin {
    /// A terminal or a pipe, opened again non-blocking and polled by the reactor.
    Polled(pipe::Receiver),
    /// What the reactor cannot poll, read on Tokio's blocking threads.
    Blocking(tokio::io::Stdin),
}

/// This process's standard input (call inside the runtime: the polled kind registers with it).
pub fn open() -> Stdin {
    polled("/proc/self/fd/0").map_or_else(|| Stdin::Blocking(tokio::io::stdin()), Stdin::Polled)
}

/// `input` (a path to an open descriptor) opened again for the reactor, if it can be polled.
fn polled(input: &str) -> Option<pipe::Receiver> {
    let kind = std::fs::metadata(input).ok()?.file_type();
    if !kind.is_fifo() && !kind.is_char_device() {
        return None; // a file would be read again from its start; a socket cannot be opened
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(input)
        .ok()?;
    // A terminal reads like a pipe's end (`read` on a non-blocking descriptor the reactor
    // polls), hence unchecked. Character devices that are not terminals (`/dev/null`) cannot
    // be polled: the reactor refuses them here.
    pipe::Receiver::from_file_unchecked(file).ok()
}

impl AsyncRead for Stdin {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stdin::Polled(input) => Pin::new(input).poll_read(cx, buf),
            Stdin::Blocking(input) => Pin::new(input).poll_read(cx, buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use tokio::io::AsyncReadExt;

    use super::*;

    /// A pipe is polled through a description of its own: the bytes and the end arrive, and
    /// the description the shell would share stays blocking.
    #[tokio::test]
    async fn a_pipe_is_polled_without_touching_the_shared_description() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let fd = reader.as_raw_fd();
        let mut input = Stdin::Polled(polled(&format!("/proc/self/fd/{fd}")).unwrap());
        writer.write_all(b"typed\n").unwrap();
        let mut first = [0u8; 64];
        let n = input.read(&mut first).await.unwrap();
        assert_eq!(&first[..n], b"typed\n");
        writer.write_all(b"more").unwrap();
        drop(writer);
        let mut rest = Vec::new();
        input.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"more");
        assert_eq!(
            flags(fd) & libc::O_NONBLOCK,
            0,
            "the shared description stays blocking"
        );
    }

    /// The status flags of descriptor `fd`, as the kernel reports them.
    fn flags(fd: i32) -> i32 {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
        let octal = info.lines().find_map(|l| l.strip_prefix("flags:")).unwrap();
        i32::from_str_radix(octal.trim(), 8).unwrap()
    }

    /// What the reactor cannot poll is left to Tokio's blocking reads.
    #[tokio::test]
    async fn files_and_null_are_not_polled() {
        let file = std::env::current_exe().unwrap();
        assert!(polled(file.to_str().unwrap()).is_none());
        assert!(polled("/dev/null").is_none());
        assert!(polled("/nonexistent").is_none());
    }
}
