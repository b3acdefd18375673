//! The units of traffic. The types are the plugin contract's own (`wit/plugin.wit`, mirrored
//! in `sluice-plugin-sdk`), so what the gateway handles is exactly what plugins see.
//!
//! Architecture invariant: this module does no I/O.

pub use sluice_plugin_sdk::{
    Action, CellFormat, Cells, Column, Config, Content, ContentKind, Direction, Event, FileChunk,
    Frame, HttpRequest, HttpResponse, Identity, Interest, Prescreen, SessionInfo, SessionKind,
    SinkError, Statement, ToolCall, ToolResult, Verdict,
};

/// A short name for the kind of a frame's content, for logs and error messages.
pub fn kind(content: &Content) -> &'static str {
    content.kind().name()
}

/// Checks that a verdict is one the gateway can carry out for `frame`: a replacement keeps
/// the frame's kind (and a row its number of cells), and only client-to-target frames can be
/// held. Anything else is a malformed verdict.
pub fn check_verdict(frame: &Frame, verdict: &Verdict) -> Result<(), String> {
    if let Action::Hold(_) = verdict.action
        && frame.direction == Direction::TargetToClient
    {
        return Err(
            "hold on a target-to-client frame (only client-to-target frames can be held)".into(),
        );
    }
    let replaced = match &verdict.action {
        Action::Replace(content) => Some(("replace", content)),
        _ => None,
    };
    for (what, content) in replaced
        .into_iter()
        .chain(verdict.record_as.as_ref().map(|c| ("record-as", c)))
    {
        same_shape(&frame.content, content).map_err(|e| format!("{what}: {e}"))?;
    }
    Ok(())
}

fn same_shape(original: &Content, new: &Content) -> Result<(), String> {
    match (original, new) {
        (Content::Row(a), Content::Row(b)) if a.len() != b.len() => Err(format!(
            "a row of {} cells became a row of {} cells",
            a.len(),
            b.len()
        )),
        (Content::Columns(a), Content::Columns(b)) if a.len() != b.len() => Err(format!(
            "{} column descriptions became {}",
            a.len(),
            b.len()
        )),
        (a, b) if kind(a) != kind(b) => Err(format!("a {} frame became a {}", kind(a), kind(b))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(direction: Direction, content: Content) -> Frame {
        Frame::new(direction, content)
    }

    #[test]
    fn replacement_must_keep_the_kind() {
        let f = frame(Direction::ClientToTarget, Content::Line("ls".into()));
        assert!(check_verdict(&f, &Verdict::replace(Content::Line("pwd".into()))).is_ok());
        let err = check_verdict(&f, &Verdict::replace(Content::Bytes(b"ls".to_vec()))).unwrap_err();
        assert_eq!(err, "replace: a line frame became a bytes");
    }

    #[test]
    fn row_replacement_must_keep_the_cell_count() {
        let f = frame(Direction::TargetToClient, Content::Row(vec![None, None]));
        let err = check_verdict(&f, &Verdict::replace(Content::Row(vec![None]))).unwrap_err();
        assert!(err.contains("2 cells became a row of 1"), "{err}");
        let bad_record = Verdict::pass().record_as(Content::Row(vec![None, None, None]));
        assert!(
            check_verdict(&f, &bad_record)
                .unwrap_err()
                .starts_with("record-as:")
        );
    }

    #[test]
    fn only_client_frames_can_be_held() {
        let out = frame(Direction::TargetToClient, Content::Bytes(vec![]));
        assert!(check_verdict(&out, &Verdict::hold("why")).is_err());
        let inp = frame(Direction::ClientToTarget, Content::Bytes(vec![]));
        assert!(check_verdict(&inp, &Verdict::hold("why")).is_ok());
    }
}
