//! The frame path of a plain TCP session (`kind = "tcp"`), for protocols Sluice does not
//! parse yet: byte frames both ways through the chain and the record.
//!
//! ```text
//! sluice connect --port --> [bytes] --> [chain] --> [record] --> target
//!                       <-- [record] <-- [chain] <-- [bytes] <-- target
//! ```
//!
//! A refused frame ends the session (a byte stream has no error message of its own).

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::chain::Outcome;
use crate::config::TcpConnection;
use crate::pg::Io;
use crate::session::{Context, Core, INTERACTIVE_FLUSH, Opening, content_bytes};
use sluice_core::frame::{Content, Direction};

const CHUNK: usize = 64 << 10;

/// A whole session: connect, open, relay, close.
pub async fn session(
    ctx: Arc<Context>,
    opening: Opening,
    mut client: Box<dyn Io>,
    conn: TcpConnection,
) {
    let reach = crate::agent::Reach::of(&ctx.agents, conn.agent.as_ref());
    let target = match reach.dial(&conn.upstream).await {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(error = %e, "cannot reach the target");
            let _ = client.shutdown().await;
            return;
        }
    };
    let Ok((mut core, killed)) = Core::open(ctx, opening)
        .await
        .inspect_err(|e| tracing::info!(error = %e, "session refused"))
    else {
        return;
    };
    let result = tokio::select! {
        result = run(&mut core, client, target) => result,
        Ok(reason) = killed => Err(reason),
    };
    let reason = result.err();
    let _ = core.end(serde_json::json!({"reason": reason})).await;
    tracing::info!(reason = ?reason, "session closed");
}

/// Relays until either side closes; `Err` says why the session ended otherwise.
pub async fn run(
    core: &mut Core,
    mut client: Box<dyn Io>,
    mut target: Box<dyn Io>,
) -> Result<(), String> {
    let mut from_client = vec![0u8; CHUNK];
    let mut from_target = vec![0u8; CHUNK];
    let mut since_flush = false;
    loop {
        tokio::select! {
            n = client.read(&mut from_client) => {
                let n = n.map_err(|e| format!("client: {e}"))?;
                if n == 0 {
                    // What plugins held is released (and recorded) before the session ends;
                    // the client may be gone already, the target still reads.
                    let _ = release(core, &mut client, &mut target).await;
                    return Ok(());
                }
                let out = frame(core, Direction::ClientToTarget, from_client[..n].to_vec()).await?;
                target.write_all(&out).await.map_err(|e| format!("target: {e}"))?;
                since_flush = true;
            }
            n = target.read(&mut from_target) => {
                let n = n.map_err(|e| format!("target: {e}"))?;
                if n == 0 {
                    release(core, &mut client, &mut target).await?;
                    return Ok(());
                }
                let out = frame(core, Direction::TargetToClient, from_target[..n].to_vec()).await?;
                client.write_all(&out).await.map_err(|e| format!("client: {e}"))?;
                since_flush = true;
            }
            () = tokio::time::sleep(INTERACTIVE_FLUSH), if since_flush => {
                release(core, &mut client, &mut target).await?;
                since_flush = false;
            }
        }
    }
}

/// One chunk: filter, record, and what may be forwarded.
async fn frame(core: &mut Core, direction: Direction, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    let decision = core.filter(direction, Content::Bytes(bytes));
    core.record_frame(direction, &decision)
        .await
        .map_err(|e| e.to_string())?;
    match decision.outcome {
        Outcome::Pass => Ok(content_bytes(&decision.forward)),
        Outcome::Deny { plugin, reason } => Err(format!("refused by {plugin}: {reason}")),
        Outcome::Hold { reasons } => Err(format!(
            "held ({}); a byte stream cannot wait",
            reasons.join("; ")
        )),
    }
}

/// What plugins held back, both ways.
async fn release(
    core: &mut Core,
    client: &mut Box<dyn Io>,
    target: &mut Box<dyn Io>,
) -> Result<(), String> {
    // Towards the target first: when the client has gone, that is what still matters.
    for content in core
        .flush(Direction::ClientToTarget)
        .await
        .map_err(|e| e.to_string())?
    {
        target
            .write_all(&content_bytes(&content))
            .await
            .map_err(|e| format!("target: {e}"))?;
    }
    for content in core
        .flush(Direction::TargetToClient)
        .await
        .map_err(|e| e.to_string())?
    {
        client
            .write_all(&content_bytes(&content))
            .await
            .map_err(|e| format!("client: {e}"))?;
    }
    Ok(())
}
