//! The DHT wire protocol: the messages nodes exchange, and their bounded ETF codec.
//!
//! Nodes talk over QUIC, one bidirectional stream per request; the transport moves opaque frames
//! and this module gives them meaning. A frame is exactly one versioned ETF term (first byte 131)
//! of at most [`MAX_FRAME_BYTES`]: a map with atom keys carrying `v => 2` (the protocol version)
//! and `type => Atom`, in the shapes of the contract's DHT message table. `docs/protocol.md` has
//! every shape with byte-level examples.
//!
//! The encoder writes what `erlang:term_to_binary(T, [{minor_version, 2}])` writes on OTP 25, so a
//! BEAM node reads our frames with `binary_to_term(B, [safe])`. The decoder takes untrusted bytes:
//! it walks them with the bounded, iterative reader of [`crate::etf`] (every length checked
//! against the bytes left, nesting and work capped), matches atoms against fixed tables of known
//! names (an unknown atom is an error or an ignored key, never a new name), checks every count
//! against its cap before allocating, and keeps providers as validated raw term bytes.

mod decode;
mod encode;

use std::net::SocketAddr;

use crate::etf::EtfError;
use crate::id::NodeId;
use crate::provider::ProviderError;
use crate::seal::{Removal, Seal};

/// The protocol version every message carries as `v`. Version 2 carries publisher seals on
/// every provider record and removal; a frame of another version is refused with
/// `unsupported_version`, never read as this one.
pub const PROTOCOL_VERSION: u8 = 2;

/// Largest frame (request or reply), in bytes, version byte included.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// Most node infos in one reply.
pub const MAX_NODES: usize = 64;

/// Most providers in one `find_value_reply`.
pub const MAX_PROVIDERS: usize = 1024;

/// Longest DHT key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Longest `node_id` of a `remove` request (the provider's id, as in
/// [`crate::provider::MAX_NODE_ID_BYTES`]).
pub const MAX_NODE_ID_BYTES: usize = crate::provider::MAX_NODE_ID_BYTES;

/// Longest `address` binary of a node info (`"[v6 address]:port"` needs at most 53).
pub const MAX_ADDRESS_BYTES: usize = 64;

/// A request, sent by the node that opens the stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Request {
    /// `#{v => 2, type => ping}`.
    Ping,
    /// `#{v => 2, type => find_node, target => <<32 bytes>>}`.
    FindNode {
        /// The id whose closest known nodes are asked for.
        target: NodeId,
    },
    /// `#{v => 2, type => find_value, key => Key}`.
    FindValue {
        /// The DHT key whose providers are asked for, at most [`MAX_KEY_BYTES`] bytes.
        key: Vec<u8>,
    },
    /// `#{v => 2, type => store, key => Key, value => Provider, publisher => <<32 bytes>>,
    /// seq => Seq, ttl => Secs, sig => <<64 bytes>>}`: a provider record and its publisher's
    /// seal. The seal is read, not checked, here: the node checks it.
    Store {
        /// The DHT key to store the provider under, at most [`MAX_KEY_BYTES`] bytes.
        key: Vec<u8>,
        /// The provider and its seal.
        record: SealedRecord,
    },
    /// `#{v => 2, type => remove, key => Key, node_id => NodeId, publisher => <<32 bytes>>,
    /// seq => Seq, sig => <<64 bytes>>}`: the publisher withdraws its provider `node_id` under
    /// `key`.
    Remove {
        /// The DHT key the record is stored under, at most [`MAX_KEY_BYTES`] bytes.
        key: Vec<u8>,
        /// The `node_id` binary of the withdrawn provider, as in its record: at most
        /// [`MAX_NODE_ID_BYTES`] bytes, not necessarily a 32-byte [`NodeId`].
        node_id: Vec<u8>,
        /// The publisher's signed removal.
        removal: Removal,
    },
}

/// A provider record as it crosses the wire: the provider map and its publisher's seal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SealedRecord {
    /// The provider's term bytes, without version byte; decoded ones passed
    /// [`crate::ProviderRecord::parse`], and ones to encode must be such bytes too (they are
    /// written as they are).
    pub term: Vec<u8>,
    /// The publisher's seal over the record's key and term.
    pub seal: Seal,
}

/// A reply, sent back on the request's stream.
///
/// `find_node` is answered by [`Nodes`](Self::Nodes) (`find_node_reply`); `find_value` by
/// [`Value`](Self::Value) on a hit or [`NoValue`](Self::NoValue) on a miss (both
/// `find_value_reply`), so the two reply types stay distinct.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Response {
    /// `#{v => 2, type => pong}`.
    Pong,
    /// `#{v => 2, type => find_node_reply, nodes => [NodeInfo]}`.
    Nodes {
        /// The replier's known nodes closest to the target; the decoder accepts at most
        /// [`MAX_NODES`].
        nodes: Vec<NodeInfo>,
    },
    /// `#{v => 2, type => find_value_reply, result => value, value => [Sealed],
    /// nodes => [NodeInfo]}`, each `Sealed` being `#{value => Provider, publisher => ..., seq =>
    /// ..., ttl => ..., sig => ...}` (see [`Request::Store`]); `nodes` may be empty (and may be
    /// absent on the wire).
    Value {
        /// The sealed providers held under the key, each term checked by
        /// [`ProviderRecord::parse`](crate::ProviderRecord::parse) when decoded (the seals are
        /// checked by the node); at most [`MAX_PROVIDERS`].
        providers: Vec<SealedRecord>,
        /// The replier's known nodes closest to the key, at most [`MAX_NODES`]; may be empty.
        nodes: Vec<NodeInfo>,
    },
    /// `#{v => 2, type => find_value_reply, result => nodes, nodes => [NodeInfo]}`: a miss.
    NoValue {
        /// The replier's known nodes closest to the key, to ask next; at most [`MAX_NODES`].
        nodes: Vec<NodeInfo>,
    },
    /// `#{v => 2, type => store_reply, result => ok}`.
    Stored,
    /// `#{v => 2, type => remove_reply, result => ok}`.
    Removed,
    /// `#{v => 2, type => error, reason => Reason}`.
    Error {
        /// Why the request was not answered.
        reason: ErrorReason,
    },
}

/// A node's contact: `#{node_id => <<32 bytes>>, address => <<"ip:port">>}` on the wire, the
/// address being `"a.b.c.d:port"` or `"[v6]:port"`. IPv6 flow info and scope id are not carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    /// The node's 32-byte id.
    pub id: NodeId,
    /// The UDP address the node is reached at over QUIC.
    pub addr: SocketAddr,
}

/// The fixed set of reasons an `error` reply may give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorReason {
    /// The request's `type` is not one this node knows.
    UnknownMessage,
    /// The request's `v` is not [`PROTOCOL_VERSION`].
    UnsupportedVersion,
    /// The request is not a well-formed message.
    Malformed,
    /// The request frame exceeds [`MAX_FRAME_BYTES`].
    TooLarge,
    /// The provider of a `store` is not a valid provider map.
    InvalidProvider,
    /// A cap was hit (key length, a store limit, ...).
    Limit,
    /// The node failed to handle a valid request.
    Internal,
    /// A `store` or `remove` whose signature does not verify under its publisher's key.
    Forged,
    /// A `store` or `remove` of a provider whose `node_id` is another node's id.
    WrongPublisher,
    /// A `store` or `remove` whose sequence is not newer than what the slot holds.
    Stale,
    /// A `store` of a record its publisher removed later (a replay).
    Removed,
    /// A `store` past the share of the node's store its publisher may take.
    OverQuota,
    /// A `store` past the rate one peer may send them at.
    RateLimited,
}

/// Why a frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame is longer than [`MAX_FRAME_BYTES`]; carries its length. Checked before any
    /// byte is read.
    #[error("frame of {0} bytes exceeds {MAX_FRAME_BYTES}")]
    TooLarge(usize),
    /// The frame, or a term inside it, is not well-formed bounded ETF (also: bytes after the
    /// message); carries the reader's reason.
    #[error("malformed ETF: {0}")]
    Etf(#[from] EtfError),
    /// The message's `v` is an integer other than [`PROTOCOL_VERSION`]; carries it.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u32),
    /// The `type` atom names no request (when decoding a request) or no reply (when decoding a
    /// reply).
    #[error("unknown message type")]
    UnknownType,
    /// The frame is well-formed ETF but not a valid message: a field is missing, duplicated or of
    /// the wrong shape. Carries what is wrong: a field name (`"key"`, `"address"`, ...) or a
    /// short description (`"duplicate key"`, `"not a map"`).
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// A binary or list is longer than its cap.
    #[error("{what} exceeds the limit of {max}")]
    Limit {
        /// The field: `"key"`, `"node_id"`, `"address"`, `"value"` or `"nodes"`.
        what: &'static str,
        /// The cap: bytes for a binary, elements for a list.
        max: usize,
    },
    /// A provider, in a `store` or a `find_value_reply`, is not a valid provider map.
    #[error("invalid provider: {0}")]
    InvalidProvider(#[from] ProviderError),
}

impl Request {
    /// The frame for this request. Caps are not enforced here: a request holding more than the
    /// decoder accepts (a key over [`MAX_KEY_BYTES`], ...) encodes, and the peer refuses it.
    pub fn encode(&self) -> Vec<u8> {
        encode::request(self)
    }

    /// Parses a request frame from an untrusted peer.
    pub fn decode(frame: &[u8]) -> Result<Request, WireError> {
        decode::request(frame)
    }

    /// The message type's name on the wire (`find_node`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::FindNode { .. } => "find_node",
            Request::FindValue { .. } => "find_value",
            Request::Store { .. } => "store",
            Request::Remove { .. } => "remove",
        }
    }
}

impl Response {
    /// The frame for this reply. Caps are not enforced here (see [`Request::encode`]); build
    /// `find_value` hits with [`Response::value_fitting`] to stay within them.
    pub fn encode(&self) -> Vec<u8> {
        encode::response(self)
    }

    /// Parses a reply frame from an untrusted peer.
    pub fn decode(frame: &[u8]) -> Result<Response, WireError> {
        decode::response(frame)
    }

    /// A [`Value`](Self::Value) reply with the first of `providers`, in order, as many as fit
    /// both [`MAX_PROVIDERS`] and a frame of [`MAX_FRAME_BYTES`]; `nodes` is cut to
    /// [`MAX_NODES`]. Stops at the first provider that does not fit.
    pub fn value_fitting(
        providers: impl IntoIterator<Item = SealedRecord>,
        mut nodes: Vec<NodeInfo>,
    ) -> Response {
        nodes.truncate(MAX_NODES);
        let mut reply = Response::Value {
            providers: Vec::new(),
            nodes,
        };
        // A non-empty list adds its 5-byte header to the empty list's NIL, plus the elements.
        let mut size = reply.encode().len() + 5;
        if let Response::Value {
            providers: kept, ..
        } = &mut reply
        {
            for provider in providers.into_iter().take(MAX_PROVIDERS) {
                size += encode::sealed_len(&provider);
                if size > MAX_FRAME_BYTES {
                    break;
                }
                kept.push(provider);
            }
        }
        reply
    }

    /// The message type's name on the wire (`find_node_reply`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Response::Pong => "pong",
            Response::Nodes { .. } => "find_node_reply",
            Response::Value { .. } | Response::NoValue { .. } => "find_value_reply",
            Response::Stored => "store_reply",
            Response::Removed => "remove_reply",
            Response::Error { .. } => "error",
        }
    }

    /// Whether this is a reply of the right type for `request` (an `error` answers anything).
    pub fn answers(&self, request: &Request) -> bool {
        matches!(
            (request, self),
            (_, Response::Error { .. })
                | (Request::Ping, Response::Pong)
                | (Request::FindNode { .. }, Response::Nodes { .. })
                | (
                    Request::FindValue { .. },
                    Response::Value { .. } | Response::NoValue { .. }
                )
                | (Request::Store { .. }, Response::Stored)
                | (Request::Remove { .. }, Response::Removed)
        )
    }
}

impl From<&WireError> for Response {
    /// The `error` reply to a request that failed to decode with this error.
    fn from(e: &WireError) -> Response {
        Response::Error { reason: e.reason() }
    }
}

impl ErrorReason {
    /// Every reason, in declaration order.
    pub const ALL: [ErrorReason; 13] = [
        ErrorReason::UnknownMessage,
        ErrorReason::UnsupportedVersion,
        ErrorReason::Malformed,
        ErrorReason::TooLarge,
        ErrorReason::InvalidProvider,
        ErrorReason::Limit,
        ErrorReason::Internal,
        ErrorReason::Forged,
        ErrorReason::WrongPublisher,
        ErrorReason::Stale,
        ErrorReason::Removed,
        ErrorReason::OverQuota,
        ErrorReason::RateLimited,
    ];

    /// The atom's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            ErrorReason::UnknownMessage => "unknown_message",
            ErrorReason::UnsupportedVersion => "unsupported_version",
            ErrorReason::Malformed => "malformed",
            ErrorReason::TooLarge => "too_large",
            ErrorReason::InvalidProvider => "invalid_provider",
            ErrorReason::Limit => "limit",
            ErrorReason::Internal => "internal",
            ErrorReason::Forged => "forged_signature",
            ErrorReason::WrongPublisher => "wrong_publisher",
            ErrorReason::Stale => "stale_sequence",
            ErrorReason::Removed => "removed",
            ErrorReason::OverQuota => "over_quota",
            ErrorReason::RateLimited => "rate_limited",
        }
    }

    /// The reason named `name`, if it is one of the fixed set.
    pub fn from_name(name: &[u8]) -> Option<ErrorReason> {
        ErrorReason::ALL
            .into_iter()
            .find(|r| r.name().as_bytes() == name)
    }
}

impl WireError {
    /// The reason to answer a request that failed to decode with this error.
    pub fn reason(&self) -> ErrorReason {
        match self {
            WireError::TooLarge(_) => ErrorReason::TooLarge,
            WireError::UnsupportedVersion(_) => ErrorReason::UnsupportedVersion,
            WireError::UnknownType => ErrorReason::UnknownMessage,
            WireError::Limit { .. } => ErrorReason::Limit,
            WireError::InvalidProvider(_) => ErrorReason::InvalidProvider,
            WireError::Etf(_) | WireError::Malformed(_) => ErrorReason::Malformed,
        }
    }
}
