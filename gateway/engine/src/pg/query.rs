//! One SQL text run through a PostgreSQL connection's own front door, in-process: the
//! client side of the simple query protocol, for the MCP `query` tool.
//!
//! The door is not bypassed: the text arrives as a client's would (signing in with the
//! caller's token), so the statement crosses `pg/session.rs` (gates, masking, the record,
//! reviews) exactly as one typed in `psql` does.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;
use tokio::io::{AsyncWriteExt, DuplexStream};

use super::Front;
use super::message::{self, Message};

/// Rows kept per result; the rest are counted, not returned.
pub const MAX_ROWS: usize = 1000;

/// What the server answered, statement by statement.
#[derive(Debug, Default, Serialize)]
pub struct Answer {
    pub results: Vec<Table>,
    /// The server's (or the gateway's) error that ended the text, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
}

/// One statement's result: its columns and rows (text, `null` for NULL), and the command tag.
#[derive(Debug, Default, Serialize)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    /// Rows beyond `MAX_ROWS`, not returned.
    #[serde(skip_serializing_if = "is_zero")]
    pub rows_left_out: usize,
    pub command: String,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Runs `sql` on `front`'s connection as the holder of `token`, in a session of id
/// `session`. `Err` is why no answer came: the door refused the caller, or the session ended
/// before the server answered.
pub async fn run(
    front: Arc<Front>,
    token: &str,
    peer: SocketAddr,
    reason: Option<String>,
    session: String,
    sql: &str,
) -> Result<Answer, String> {
    let (mut ours, theirs) = tokio::io::duplex(64 * 1024);
    let door = tokio::spawn(async move {
        front
            .client(Box::new(theirs), peer, true, reason, Some(session))
            .await
    });
    let answer = converse(&mut ours, token, sql).await;
    let _ = message::write(&mut ours, &[Message::new(b'X', Vec::new())]).await;
    let _ = ours.shutdown().await;
    drop(ours);
    match answer {
        Ok(answer) => Ok(answer),
        // The door's own reason when it turned the caller away.
        Err(e) => match door.await {
            Ok(Err(why)) => Err(why),
            _ => Err(e),
        },
    }
}

async fn converse(io: &mut DuplexStream, token: &str, sql: &str) -> Result<Answer, String> {
    let broken = |e: message::Error| format!("the session ended: {e}");
    io.write_all(&message::startup(&[("user", "sluice-mcp")]))
        .await
        .map_err(|e| e.to_string())?;
    // Signing in: the door asks for the token as a password, then says it is ready.
    loop {
        let m = message::read(io).await.map_err(broken)?;
        match m.tag {
            b'R' if matches!(m.reader().i32(), Ok(3)) => {
                let mut body = Vec::new();
                message::put_cstr(&mut body, token);
                message::write(io, &[Message::new(b'p', body)])
                    .await
                    .map_err(broken)?;
            }
            b'E' => return Err(super::upstream::error_text(&m)),
            b'Z' => break,
            _ => {} // authentication ok, parameters, key data
        }
    }
    message::write(io, &[message::query(sql)])
        .await
        .map_err(broken)?;
    let mut answer = Answer::default();
    let mut table = Table::default();
    loop {
        let m = message::read(io).await.map_err(broken)?;
        match m.tag {
            b'T' => {
                let columns = message::row_description(&m).map_err(broken)?;
                table.columns = columns.into_iter().map(|c| c.name).collect();
            }
            b'D' if table.rows.len() < MAX_ROWS => {
                let cells = message::data_row_cells(&m).map_err(broken)?;
                table.rows.push(
                    cells
                        .into_iter()
                        .map(|c| c.map(|c| String::from_utf8_lossy(&c).into_owned()))
                        .collect(),
                );
            }
            b'D' => table.rows_left_out += 1,
            b'C' => {
                table.command = m.reader().cstr().unwrap_or_default();
                answer.results.push(std::mem::take(&mut table));
            }
            b'E' => answer.error = Some(super::upstream::error_text(&m)),
            b'N' => answer.notices.push(super::upstream::error_text(&m)),
            b'Z' => return Ok(answer),
            _ => {} // empty query, parameter status
        }
    }
}
