//! Every message SARK nodes exchange, in one place, with the protocol version.
//!
//! A node speaks [`PROTOCOL_VERSION`] and accepts peers one version older or newer, so a
//! rolling upgrade can run old and new nodes side by side. Payloads are JSON inside
//! ractor_cluster frames. Decoding never panics: a payload that is oversized or does not
//! parse becomes [`Frame::Malformed`], which the receiver logs and ignores. Fields added in
//! a later version must be optional (`#[serde(default)]`), and unknown fields are ignored,
//! which is what lets adjacent versions read each other.

use std::collections::BTreeMap;

use ractor::BytesConvertable;
use ractor::RpcReplyPort;
use ractor_cluster::RactorClusterMessage;
use sark_actors::limiter::RateDecision;
use serde::{Deserialize, Serialize};

/// The version of the protocol this build speaks.
pub const PROTOCOL_VERSION: u32 = 4;

/// The first version with [`SessionOp::Describe`]: not sent to older nodes, nor by a node
/// that speaks an older version.
pub const DESCRIBE_SINCE: u32 = 3;

/// The first version whose session answers carry the outcome (a result or a domain
/// refusal, [`SessionOutcome`]) instead of the HTTP status and body of the owner's front
/// door. An owner answers in the older form a caller that speaks an older version, or when
/// it speaks one itself; a caller reads both ([`SessionAnswer::into_result`]).
pub const OUTCOME_SINCE: u32 = 4;

/// Largest payload accepted in one of our messages.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// Largest ractor_cluster frame accepted on the cluster port (process-group syncs included).
pub const MAX_FRAME_BYTES: u64 = 1024 * 1024;

/// The process group every node's Peer actor joins.
pub const PEER_GROUP: &str = "sark.cluster.peers";

/// Whether a peer speaking `version` can be talked to: the same version or an adjacent one.
pub fn compatible(version: u32) -> bool {
    version.abs_diff(PROTOCOL_VERSION) <= 1
}

/// What a node tells its peers about itself with every heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// The node's id.
    pub node_id: String,
    /// Its cluster address (where peers dial it).
    pub addr: String,
    /// Session actors running on it.
    #[serde(default)]
    pub sessions: u64,
    /// The policy version each bundle has loaded on it.
    #[serde(default)]
    pub policy_versions: BTreeMap<String, i64>,
    /// Cluster addresses of the members it knows, so every node learns every member and
    /// dials it from its own address.
    #[serde(default)]
    pub members: Vec<String>,
    /// For each node that broadcast, the sequence number of its latest broadcast this
    /// node applied (its own: the latest it sent). A peer that learns of a later one than
    /// it applied missed a notice and catches up from the store before it trusts its
    /// memory again (since version 2).
    #[serde(default)]
    pub broadcasts: BTreeMap<String, u64>,
    /// A number drawn when the node's process started: a restarted node is a new
    /// incarnation, heard at once even if its previous one just left (since version 2).
    #[serde(default)]
    pub incarnation: u64,
    /// Whether the node is still starting (its store or its front door is not up yet): it
    /// is a member, but no session is placed on it yet (since version 3; older nodes never
    /// say so).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub starting: bool,
}

/// A heartbeat or its answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's protocol version.
    pub version: u32,
    /// The sender.
    pub node: NodeSummary,
}

/// Something every member must apply before a write is acknowledged to its caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    /// Sessions and API keys revoked in the store: refuse them from now on.
    Revoked {
        /// Session ids.
        #[serde(default)]
        sessions: Vec<String>,
        /// API key ids.
        #[serde(default)]
        api_keys: Vec<String>,
    },
    /// A policy version was activated in the store: load it before answering.
    PolicyActivated {
        /// The bundle.
        bundle: String,
        /// Its new active version.
        version: i64,
    },
    /// The sender is shutting down: drop it from the membership (and from lease majorities)
    /// now rather than after its lease.
    Leaving,
    /// `from` is leaving: each receiver activates those of `sessions` it will own once
    /// `from` is gone (since version 2).
    Handover {
        /// The leaving node.
        from: String,
        /// Sessions whose actors ran there.
        sessions: Vec<String>,
    },
}

/// A notice with its sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The sender's protocol version.
    pub version: u32,
    /// The sender's node id.
    pub from: String,
    /// The sender's sequence number of this broadcast (since version 2).
    #[serde(default)]
    pub seq: u64,
    /// What to apply.
    pub notice: Notice,
}

/// The answer to an [`Announcement`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The member answering.
    pub node_id: String,
    /// Whether it applied the notice (if not, the sender waits its lease out).
    pub applied: bool,
    /// For each member it knows, milliseconds since it last heard from it: a member that did
    /// not answer the sender may still have been heard (and its lease renewed) by others.
    #[serde(default)]
    pub heard_ms_ago: BTreeMap<String, u64>,
}

/// A rate-limit check forwarded to the key's owner node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateQuery {
    /// The sender's protocol version.
    pub version: u32,
    /// The bucket.
    pub key: String,
    /// Requests per minute allowed.
    pub limit: u32,
}

/// A payload as received: the message, or why it could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame<T> {
    /// A readable message.
    Ok(T),
    /// A payload that was oversized or did not parse.
    Malformed(String),
}

impl<T: Serialize + serde::de::DeserializeOwned> BytesConvertable for Frame<T> {
    fn into_bytes(self) -> Vec<u8> {
        match self {
            Frame::Ok(message) => serde_json::to_vec(&message).unwrap_or_default(),
            Frame::Malformed(_) => Vec::new(),
        }
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return Frame::Malformed(format!(
                "{} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit",
                bytes.len()
            ));
        }
        serde_json::from_slice(&bytes)
            .map(Frame::Ok)
            .unwrap_or_else(|e| Frame::Malformed(e.to_string()))
    }
}

/// A session operation forwarded to the node that owns the session's actor (by rendezvous
/// hashing of the session's or challenge's id over the live members).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCall {
    /// The sender's protocol version.
    pub version: u32,
    /// What to do.
    pub op: SessionOp,
    /// The client's address, for the audit log.
    #[serde(default)]
    pub ip: Option<String>,
}

/// The session operations that run on the owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SessionOp {
    /// Rotate a refresh token.
    Refresh {
        /// The presented refresh token.
        refresh_token: String,
    },
    /// Revoke a session (the sender checked the caller's access token).
    Logout {
        /// The session.
        session_id: String,
        /// Who asked, for the audit log.
        actor: String,
    },
    /// Answer an MFA challenge.
    VerifyMfa {
        /// The challenge.
        challenge_id: String,
        /// The TOTP or recovery code.
        code: String,
    },
    /// Describe sessions of one user that this node owns, as their actors hold them (since
    /// version 3; an older owner refuses it and the sender reads the store instead).
    Describe {
        /// The sessions' user.
        user_id: String,
        /// The sessions.
        session_ids: Vec<String>,
    },
}

/// The owner's answer to a [`SessionCall`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionAnswer {
    /// The outcome (since version 4; absent in an older answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<SessionOutcome>,
    /// Before version 4: the HTTP status the owner's front door would have given.
    #[serde(default)]
    pub status: u16,
    /// Before version 4: its `Retry-After` seconds.
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// Before version 4: its JSON body.
    #[serde(default)]
    pub body: String,
}

/// What a session operation came to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum SessionOutcome {
    /// It was done; its answer.
    Done {
        /// The answer, as JSON.
        value: serde_json::Value,
    },
    /// It was refused or failed.
    Refused(Refusal),
}

/// Why a session operation was refused, in the owner's domain terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// What the caller can do about it, as a snake_case name (`invalid`,
    /// `unauthenticated`, `unavailable`, …); a name the reader does not know is a failure
    /// of the server.
    pub kind: String,
    /// The stable error code.
    pub code: String,
    /// The message for people.
    pub message: String,
    /// Seconds the client is asked to wait before a retry.
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// Whether the client's bearer token is the problem.
    #[serde(default)]
    pub bearer_challenge: bool,
}

impl SessionAnswer {
    /// An answer in the current form.
    pub fn outcome(outcome: SessionOutcome) -> Self {
        Self {
            outcome: Some(outcome),
            status: 0,
            retry_after: None,
            body: String::new(),
        }
    }

    /// The outcome, read from either form: the answer, or the refusal. An answer from
    /// before version 4 is read back from its HTTP status and the `error` object of its
    /// body.
    pub fn into_result(self) -> Result<serde_json::Value, Refusal> {
        match self.outcome {
            Some(SessionOutcome::Done { value }) => return Ok(value),
            Some(SessionOutcome::Refused(refusal)) => return Err(refusal),
            None => {}
        }
        let body: serde_json::Value = serde_json::from_str(&self.body).unwrap_or_default();
        if self.status == 200 {
            return Ok(body);
        }
        let kind = match self.status {
            400 => "invalid",
            401 => "unauthenticated",
            403 => "forbidden",
            404 => "not_found",
            409 => "conflict",
            423 => "locked",
            429 => "rate_limited",
            503 => "unavailable",
            _ => "internal",
        };
        let text = |field: &str, otherwise: &str| {
            body["error"][field]
                .as_str()
                .unwrap_or(otherwise)
                .to_owned()
        };
        Err(Refusal {
            kind: kind.to_owned(),
            code: text("code", "internal_error"),
            message: text("message", "the session's owner failed to answer"),
            retry_after: self.retry_after,
            bearer_challenge: false,
        })
    }
}

/// Messages between the Peer actors of different nodes.
///
/// Variants are tagged by name on the wire: never rename one; add new ones for new needs.
#[derive(RactorClusterMessage)]
pub enum PeerMessage {
    /// A heartbeat carrying the sender's hello; the answer is the receiver's.
    #[rpc]
    Heartbeat(Frame<Hello>, RpcReplyPort<Frame<Hello>>),
    /// A notice to apply; answered once it is applied.
    #[rpc]
    Announce(Frame<Announcement>, RpcReplyPort<Frame<Ack>>),
    /// Counts a request against a bucket this node owns.
    #[rpc]
    RateCheck(Frame<RateQuery>, RpcReplyPort<Frame<RateDecision>>),
    /// Runs a session operation on this node, which owns the session (since version 2).
    #[rpc]
    Session(Frame<SessionCall>, RpcReplyPort<Frame<SessionAnswer>>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(version: u32) -> Hello {
        Hello {
            version,
            node: NodeSummary {
                node_id: "a".into(),
                addr: "127.0.0.2:7400".into(),
                sessions: 3,
                policy_versions: BTreeMap::from([("authorization".into(), 2)]),
                members: vec!["127.0.0.3:7400".into()],
                broadcasts: BTreeMap::from([("a".into(), 4)]),
                incarnation: 7,
                starting: true,
            },
        }
    }

    #[test]
    fn frames_round_trip() {
        let frame = Frame::Ok(hello(PROTOCOL_VERSION));
        assert_eq!(Frame::from_bytes(frame.clone().into_bytes()), frame);
        let notice = Frame::Ok(Announcement {
            version: PROTOCOL_VERSION,
            from: "a".into(),
            seq: 1,
            notice: Notice::PolicyActivated {
                bundle: "authorization".into(),
                version: 3,
            },
        });
        assert_eq!(Frame::from_bytes(notice.clone().into_bytes()), notice);
    }

    #[test]
    fn garbage_and_oversized_payloads_are_malformed_not_panics() {
        for bytes in [
            b"\xff\x00garbage".to_vec(),
            b"{\"version\":\"one\"}".to_vec(),
            Vec::new(),
            vec![b' '; MAX_PAYLOAD_BYTES + 1],
        ] {
            assert!(matches!(
                Frame::<Hello>::from_bytes(bytes),
                Frame::Malformed(_)
            ));
        }
    }

    #[test]
    fn a_newer_peer_with_extra_fields_is_read_and_adjacent_versions_are_compatible() {
        let newer = format!(
            r#"{{"version":{},"node":{{"node_id":"b","addr":"127.0.0.3:7400","zone":"x"}},"epoch":7}}"#,
            PROTOCOL_VERSION + 1
        );
        let Frame::Ok(read) = Frame::<Hello>::from_bytes(newer.into_bytes()) else {
            panic!("a newer hello must be readable");
        };
        assert_eq!(read.node.node_id, "b");
        assert!(compatible(read.version));
        assert!(compatible(PROTOCOL_VERSION.saturating_sub(1)));
        assert!(!compatible(PROTOCOL_VERSION + 2));
    }

    #[test]
    fn session_answers_of_both_forms_read_as_outcomes() {
        let refused = Refusal {
            kind: "locked".into(),
            code: "account_locked".into(),
            message: "locked".into(),
            retry_after: Some(30),
            bearer_challenge: false,
        };
        let current = Frame::Ok(SessionAnswer::outcome(SessionOutcome::Refused(
            refused.clone(),
        )));
        let Frame::Ok(read) = Frame::<SessionAnswer>::from_bytes(current.into_bytes()) else {
            panic!("a current answer must be readable");
        };
        assert_eq!(read.into_result(), Err(refused.clone()));

        // What a version-3 owner sends.
        let legacy = br#"{"status":423,"retry_after":30,"body":"{\"error\":{\"code\":\"account_locked\",\"message\":\"locked\",\"request_id\":null}}"}"#;
        let Frame::Ok(read) = Frame::<SessionAnswer>::from_bytes(legacy.to_vec()) else {
            panic!("a version-3 answer must be readable");
        };
        assert_eq!(read.into_result(), Err(refused.clone()));
        let done = br#"{"status":200,"body":"{\"revoked\":true}"}"#;
        let Frame::Ok(read) = Frame::<SessionAnswer>::from_bytes(done.to_vec()) else {
            panic!("a version-3 answer must be readable");
        };
        assert_eq!(read.into_result(), Ok(serde_json::json!({"revoked": true})));
    }

    /// Every frame type a peer can send, decoded from `bytes`: none may panic.
    fn decode_all(bytes: &[u8]) {
        let _ = Frame::<Hello>::from_bytes(bytes.to_vec());
        let _ = Frame::<Announcement>::from_bytes(bytes.to_vec());
        let _ = Frame::<Ack>::from_bytes(bytes.to_vec());
        let _ = Frame::<RateQuery>::from_bytes(bytes.to_vec());
        let _ = Frame::<RateDecision>::from_bytes(bytes.to_vec());
        let _ = Frame::<SessionCall>::from_bytes(bytes.to_vec());
        let _ = Frame::<SessionAnswer>::from_bytes(bytes.to_vec());
    }

    #[test]
    fn the_fuzz_corpus_decodes_without_panicking() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/wire");
        for entry in std::fs::read_dir(dir).unwrap() {
            decode_all(&std::fs::read(entry.unwrap().path()).unwrap());
        }
    }

    proptest::proptest! {
        // Cases: PROPTEST_CASES (scripts/test bounds it); a failure is kept next to this
        // file in proptest-regressions/ and replayed first from then on.
        #[test]
        fn fuzz_any_bytes_decode_without_panicking(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            decode_all(&bytes);
        }

        #[test]
        fn fuzz_json_shaped_frames_decode_without_panicking(text in r#"[\[\]{}":,0-9a-zA-Z_ .\-]{0,600}"#) {
            decode_all(text.as_bytes());
            decode_all(format!(r#"{{"Ok":{text}}}"#).as_bytes());
            decode_all(format!(r#"{{"Ok":{{"version":3,"node":{text}}}}}"#).as_bytes());
        }
    }
}
