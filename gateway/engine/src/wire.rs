//! The framed stream between the `sluice` CLI and the gateway, after the HTTP upgrade.
//!
//! Each message is `kind: u8, length: u32 (big-endian), body`. Bodies are at most
//! [`MAX_BODY`] bytes; anything else is a protocol error that ends the session with a clear
//! message, never a panic or an unbounded allocation.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const MAX_BODY: usize = 1 << 20;
/// The value of the `Upgrade` header.
pub const PROTOCOL: &str = "sluice-session/1";

/// The exit status a client shows for a session the gateway refused (as a shell does for a
/// command it cannot run), so scripts can tell a refusal from the program's own failure;
/// any other early end is 1.
pub const EXIT_REFUSED: u8 = 126;
pub const EXIT_ENDED: u8 = 1;

/// The exit status for a session that ended with `Message::Error(text)`.
pub fn error_status(text: &str) -> u8 {
    if text.starts_with("refused") {
        EXIT_REFUSED
    } else {
        EXIT_ENDED
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Client to gateway: input bytes (keystrokes, or a script's text).
    Input(Vec<u8>),
    /// Client to gateway: the input is complete (one-shot `exec`).
    InputEnd,
    /// Client to gateway: the terminal's size changed.
    Resize { rows: u16, cols: u16 },
    /// Gateway to client: output bytes.
    Output(Vec<u8>),
    /// Gateway to client: a message from the gateway itself (a denied line, a hold).
    Notice(String),
    /// Gateway to client: the remote process ended with this status; the session is over.
    Exit(i32),
    /// Gateway to client: the session ended with an error.
    Error(String),
    /// Agent to gateway: the program's terminal now shows (or hides) what is typed.
    Echo(bool),
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Message {
    /// What the message is, without its content (for errors and logs).
    pub fn name(&self) -> &'static str {
        match self {
            Message::Input(_) => "input",
            Message::InputEnd => "input end",
            Message::Resize { .. } => "a resize",
            Message::Output(_) => "output",
            Message::Notice(_) => "a notice",
            Message::Exit(_) => "an exit status",
            Message::Error(_) => "an error",
            Message::Echo(_) => "an echo mode",
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Message::Input(_) => 1,
            Message::InputEnd => 2,
            Message::Resize { .. } => 3,
            Message::Output(_) => 10,
            Message::Notice(_) => 11,
            Message::Exit(_) => 12,
            Message::Error(_) => 13,
            Message::Echo(_) => 14,
        }
    }

    fn body(&self) -> Vec<u8> {
        match self {
            Message::Input(b) | Message::Output(b) => b.clone(),
            Message::InputEnd => vec![],
            Message::Resize { rows, cols } => [rows.to_be_bytes(), cols.to_be_bytes()].concat(),
            Message::Notice(s) | Message::Error(s) => s.as_bytes().to_vec(),
            Message::Exit(code) => code.to_be_bytes().to_vec(),
            Message::Echo(on) => vec![u8::from(*on)],
        }
    }

    fn parse(kind: u8, body: Vec<u8>) -> Result<Message, WireError> {
        let text = |b: Vec<u8>| {
            String::from_utf8(b).map_err(|_| WireError::Malformed("text is not UTF-8".into()))
        };
        let fixed = |b: &[u8], n: usize| {
            (b.len() == n)
                .then_some(())
                .ok_or_else(|| WireError::Malformed(format!("kind {kind} needs {n} bytes")))
        };
        Ok(match kind {
            1 => Message::Input(body),
            2 => Message::InputEnd,
            3 => {
                fixed(&body, 4)?;
                Message::Resize {
                    rows: u16::from_be_bytes([body[0], body[1]]),
                    cols: u16::from_be_bytes([body[2], body[3]]),
                }
            }
            10 => Message::Output(body),
            11 => Message::Notice(text(body)?),
            12 => {
                fixed(&body, 4)?;
                Message::Exit(i32::from_be_bytes([body[0], body[1], body[2], body[3]]))
            }
            13 => Message::Error(text(body)?),
            14 => {
                fixed(&body, 1)?;
                Message::Echo(body[0] != 0)
            }
            other => {
                return Err(WireError::Malformed(format!(
                    "unknown message kind {other}"
                )));
            }
        })
    }
}

pub async fn write(io: &mut (impl AsyncWrite + Unpin), message: &Message) -> Result<(), WireError> {
    let body = message.body();
    let mut buf = Vec::with_capacity(5 + body.len());
    buf.push(message.kind());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    io.write_all(&buf).await?;
    io.flush().await?;
    Ok(())
}

/// Reads one message; `Closed` at a clean end of stream between messages.
pub async fn read(io: &mut (impl AsyncRead + Unpin)) -> Result<Message, WireError> {
    let mut header = [0u8; 5];
    match io.read_exact(&mut header[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) => return Err(e.into()),
    }
    io.read_exact(&mut header[1..])
        .await
        .map_err(|_| WireError::Malformed("the stream ended inside a message header".into()))?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_BODY {
        return Err(WireError::Malformed(format!(
            "a message of {len} bytes exceeds the limit of {MAX_BODY}"
        )));
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body)
        .await
        .map_err(|_| WireError::Malformed("the stream ended inside a message".into()))?;
    Message::parse(header[0], body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip() {
        let all = [
            Message::Input(b"ls\r".to_vec()),
            Message::InputEnd,
            Message::Resize { rows: 24, cols: 80 },
            Message::Output(vec![0, 255]),
            Message::Notice("held".into()),
            Message::Exit(-3),
            Message::Error("no".into()),
            Message::Echo(false),
        ];
        let mut buf = Vec::new();
        for m in &all {
            write(&mut buf, m).await.unwrap();
        }
        let mut r = buf.as_slice();
        for m in &all {
            assert_eq!(&read(&mut r).await.unwrap(), m);
        }
        assert!(matches!(read(&mut r).await, Err(WireError::Closed)));
    }

    #[tokio::test]
    async fn malformed_input_is_an_error() {
        let mut oversized: &[u8] = &[1, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read(&mut oversized).await,
            Err(WireError::Malformed(_))
        ));
        let mut unknown: &[u8] = &[99, 0, 0, 0, 0];
        assert!(matches!(
            read(&mut unknown).await,
            Err(WireError::Malformed(_))
        ));
        let mut cut: &[u8] = &[1, 0, 0, 0, 9, 1, 2];
        assert!(matches!(read(&mut cut).await, Err(WireError::Malformed(_))));
        let mut bad_resize: &[u8] = &[3, 0, 0, 0, 1, 7];
        assert!(matches!(
            read(&mut bad_resize).await,
            Err(WireError::Malformed(_))
        ));
    }
}
