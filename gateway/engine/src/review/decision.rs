//! A review's decision, as a state machine with no I/O: who may vote, what a vote does, when
//! it is settled, and the sentence each refusal gives. The queue (`mod.rs`) takes one change
//! at a time through here, then records it before anyone sees it.
//!
//! ```text
//! pending --approve (distinct reviewers reach `required`)--> approved
//!    |----reject (with a reason)---------------------------> rejected
//!    |----deadline passed----------------------------------> expired
//!    +----held frame's session gone------------------------> session-ended
//! ```

use serde::{Deserialize, Serialize};

use sluice_core::frame::Identity;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A statement or command a gate plugin held.
    Frame,
    /// A request to open sessions on a connection (just-in-time access).
    Access,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Pending,
    Approved,
    Rejected,
    Expired,
    SessionEnded,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::Expired => "expired",
            Status::SessionEnded => "session-ended",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Vote {
    pub by: String,
    pub reason: Option<String>,
    pub at_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Review {
    pub id: String,
    pub kind: Kind,
    pub status: Status,
    pub requester: String,
    pub requester_name: Option<String>,
    pub connection: String,
    /// The session a held frame belongs to.
    pub session: Option<String>,
    /// The held frame's text as recorded (after masking); for access, what is asked.
    pub text: String,
    /// Why it needs review: the gate's reason, or the requester's for access.
    pub reason: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// Distinct approvals needed.
    pub required: u32,
    pub reviewer_groups: Vec<String>,
    pub approvals: Vec<Vote>,
    pub rejection: Option<Vote>,
    /// Access: how long a granted access lasts, and until when it was granted.
    pub grant_ms: Option<u64>,
    pub granted_until_ms: Option<u64>,
    /// The chain entry that recorded this state: the stored row is trusted only when that
    /// entry says the same (a row edited in the store grants nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<u64>,
    /// On a shared record, the node that made it: an access request is decided there while
    /// that node runs, so two reviewers on two nodes cannot both win.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Review {
    /// The state as its chain entry records it: without the text (the entry's payload, which
    /// retention may purge) and without the entry's own index.
    pub(super) fn chained_state(&self) -> serde_json::Value {
        let mut state = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = state.as_object_mut() {
            map.remove("text");
            map.remove("entry");
        }
        state
    }
}

impl Review {
    /// Why the frame or access is refused, for the requester.
    pub fn refusal(&self) -> String {
        match self.status {
            Status::Rejected => {
                let vote = self.rejection.as_ref();
                format!(
                    "review {} rejected by {}: {}",
                    self.id,
                    vote.map_or("?", |v| v.by.as_str()),
                    vote.and_then(|v| v.reason.as_deref())
                        .unwrap_or("no reason given")
                )
            }
            Status::Expired => {
                let ms = self.expires_ms.saturating_sub(self.created_ms);
                let wait = if ms < 1000 {
                    format!("{ms} ms")
                } else {
                    format!("{} s", ms / 1000)
                };
                format!("review {} expired: no decision within {wait}", self.id)
            }
            Status::SessionEnded => format!("review {}: the session ended", self.id),
            Status::Pending | Status::Approved => {
                format!("review {} is {}", self.id, self.status.as_str())
            }
        }
    }

    /// The review after `identity` approves or rejects it at `now_ms`, with the name of the
    /// change for the record (`approval`, `approved`, `rejected`); or why that vote is refused.
    pub fn decide(
        &self,
        identity: &Identity,
        approve: bool,
        reason: Option<String>,
        now_ms: u64,
    ) -> Result<(Review, &'static str), Refused> {
        let id = &self.id;
        if self.requester == identity.subject {
            return Err(refused(
                403,
                format!(
                    "{} requested review {id} and cannot decide it",
                    identity.subject
                ),
            ));
        }
        if self.status != Status::Pending {
            return Err(refused(
                409,
                format!("review {id} is already {}", self.status.as_str()),
            ));
        }
        if now_ms >= self.expires_ms {
            return Err(refused(409, format!("review {id} has expired")));
        }
        if !approve && reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
            return Err(refused(400, "a rejection needs a reason (--reason)".into()));
        }
        let mut review = self.clone();
        let vote = Vote {
            by: identity.subject.clone(),
            reason,
            at_ms: now_ms,
        };
        if !approve {
            review.status = Status::Rejected;
            review.rejection = Some(vote);
            return Ok((review, "rejected"));
        }
        if review.approvals.iter().any(|v| v.by == vote.by) {
            return Err(refused(
                409,
                format!(
                    "{} already approved review {id}; it needs {} approvals from distinct reviewers",
                    vote.by, review.required
                ),
            ));
        }
        review.approvals.push(vote);
        if (review.approvals.len() as u32) < review.required {
            return Ok((review, "approval"));
        }
        review.status = Status::Approved;
        if let Some(grant) = review.grant_ms {
            review.granted_until_ms = Some(now_ms + grant);
        }
        Ok((review, "approved"))
    }

    pub(super) fn may_decide(&self, identity: &Identity) -> bool {
        identity
            .groups
            .iter()
            .any(|g| self.reviewer_groups.contains(g))
    }
}

/// Why a decision was refused: an HTTP status and a sentence.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

pub(super) fn refused(status: u16, message: String) -> Refused {
    Refused { status, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(subject: &str) -> Identity {
        Identity {
            subject: subject.into(),
            groups: vec!["dba".into()],
            ..Identity::default()
        }
    }

    fn pending(required: u32, grant_ms: Option<u64>) -> Review {
        Review {
            id: "r-test".into(),
            kind: if grant_ms.is_some() {
                Kind::Access
            } else {
                Kind::Frame
            },
            status: Status::Pending,
            requester: "alice".into(),
            requester_name: None,
            connection: "pg".into(),
            session: None,
            text: "DROP TABLE t".into(),
            reason: "drop".into(),
            created_ms: 1_000,
            expires_ms: 10_000,
            required,
            reviewer_groups: vec!["dba".into()],
            approvals: Vec::new(),
            rejection: None,
            grant_ms,
            granted_until_ms: None,
            entry: None,
            node: None,
        }
    }

    fn refusal(result: Result<(Review, &'static str), Refused>) -> (u16, String) {
        let refused = result.expect_err("the vote must be refused");
        (refused.status, refused.message)
    }

    #[test]
    fn approvals_count_distinct_reviewers_until_the_required_number() {
        let review = pending(2, None);
        let (once, change) = review.decide(&person("bob"), true, None, 2_000).unwrap();
        assert_eq!((once.status, change), (Status::Pending, "approval"));
        let (code, why) = refusal(once.decide(&person("bob"), true, None, 2_001));
        assert_eq!(code, 409);
        assert!(why.contains("distinct reviewers"), "{why}");
        let (twice, change) = once.decide(&person("carol"), true, None, 2_002).unwrap();
        assert_eq!((twice.status, change), (Status::Approved, "approved"));
        assert_eq!(twice.approvals.len(), 2);
    }

    #[test]
    fn an_access_grant_runs_from_the_deciding_approval() {
        let review = pending(1, Some(60_000));
        let (approved, _) = review.decide(&person("bob"), true, None, 5_000).unwrap();
        assert_eq!(approved.granted_until_ms, Some(65_000));
    }

    #[test]
    fn the_requester_never_decides_and_a_rejection_needs_a_reason() {
        let review = pending(1, None);
        let (code, why) = refusal(review.decide(&person("alice"), true, None, 2_000));
        assert_eq!(code, 403);
        assert!(why.contains("cannot decide"), "{why}");
        for reason in [None, Some("  ".to_string())] {
            assert_eq!(
                refusal(review.decide(&person("bob"), false, reason, 2_000)).0,
                400
            );
        }
        let (rejected, change) = review
            .decide(&person("bob"), false, Some("not now".into()), 2_000)
            .unwrap();
        assert_eq!((rejected.status, change), (Status::Rejected, "rejected"));
        assert!(rejected.refusal().contains("rejected by bob: not now"));
    }

    #[test]
    fn a_settled_or_expired_review_takes_no_more_votes() {
        let review = pending(1, None);
        let (approved, _) = review.decide(&person("bob"), true, None, 2_000).unwrap();
        let (code, why) =
            refusal(approved.decide(&person("carol"), false, Some("no".into()), 2_001));
        assert_eq!(code, 409);
        assert!(why.contains("already approved"), "{why}");
        let (code, why) = refusal(review.decide(&person("bob"), true, None, 10_000));
        assert_eq!(code, 409);
        assert!(why.contains("expired"), "{why}");
    }

    #[test]
    fn only_the_reviewer_groups_may_decide() {
        let review = pending(1, None);
        assert!(review.may_decide(&person("bob")));
        let outsider = Identity {
            groups: vec!["developers".into()],
            ..person("eve")
        };
        assert!(!review.may_decide(&outsider));
    }
}
