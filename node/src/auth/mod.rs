//! Who may do what through the client API: capability tokens (biscuit) and
//! TLS.
//!
//! - [`token`]: making keys and tokens, attenuating them offline, reading
//!   their ids: what `woof token ...` does (no node involved).
//! - [`Authority`] (here): what a node started with `--require-token`
//!   checks on every request: the token's signature against the root public
//!   key, its expiry, that no id of it is revoked, and that it grants the
//!   operation on the topic the request touches. Verified tokens and
//!   decisions are cached (bounded), so the common case is a hash lookup.
//! - [`revocation`]: the replicated list of revoked token ids (the system
//!   topic `_woof/revoked`) and the task that keeps each node's copy
//!   current.
//! - [`tls`]: the node's server certificate, the CA a client (or a node
//!   forwarding a request) trusts, and `woof cluster certs`.
//!
//! The token language (ADR 0018): the authority block holds
//! `right(PATTERN, OP)` facts and an expiry check; each attenuation adds
//! checks on `topic_match`, `operation` and `time`. A request is allowed by
//! `allow if operation($op), topic_match($p), right($p, $op)`, where the node
//! asserts `topic_match(P)` for every pattern P that covers the topic: the
//! topic itself, `T/**` for the topic and each ancestor T, and `**`.

pub mod revocation;
pub mod tls;
pub mod token;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use biscuit_auth::builder::{Fact, date, fact, string};
use biscuit_auth::error::{FailedCheck, Logic, Token as TokenError};
use biscuit_auth::{AuthorizerBuilder, AuthorizerLimits, Biscuit, PublicKey};
use tonic::Status;
use tonic::metadata::MetadataMap;

pub use revocation::Revoked;

/// The largest token a node reads (its base64 text): a burst of oversized
/// headers costs a length check each.
pub const TOKEN_BYTES_MAX: usize = 4096;
/// Verified tokens kept; past this, the oldest half is dropped.
const TOKENS_CACHED_MAX: usize = 4096;
/// Tokens that failed to verify, kept so that the same bad token sent again
/// costs a lookup, not a signature check.
const REFUSED_CACHED_MAX: usize = 1024;
/// Decisions kept per token (operation and topic).
const DECISIONS_PER_TOKEN_MAX: usize = 256;
/// How long a decision is reused: expiry is honoured within this.
pub const DECISION_TTL: Duration = Duration::from_secs(1);
/// The Datalog run limits of one decision. Our own tokens need a handful
/// of facts; a token crafted to be expensive stops here.
const RUN_LIMITS: AuthorizerLimits = AuthorizerLimits {
    max_facts: 1000,
    max_iterations: 100,
    max_time: Duration::from_millis(20),
};

/// What a request does, as tokens grant it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Read,
    Append,
    Subscribe,
    Admin,
    Deploy,
}

impl Op {
    pub const ALL: [Op; 5] = [Op::Read, Op::Append, Op::Subscribe, Op::Admin, Op::Deploy];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Append => "append",
            Op::Subscribe => "subscribe",
            Op::Admin => "admin",
            Op::Deploy => "deploy",
        }
    }

    pub fn parse(text: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == text)
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which topics a request touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// One topic.
    Topic(&'a str),
    /// Whatever topics the token covers: a listing (topics, cluster
    /// status), whose answer is then cut to the topics the token may read.
    /// Any right of the operation, on any pattern, lets it through.
    Listing,
    /// The whole cluster (devices, revocation): needs the operation on `**`.
    Cluster,
}

impl std::fmt::Display for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Topic(t) => write!(f, "topic {t}"),
            Scope::Listing => f.write_str("any topic"),
            Scope::Cluster => f.write_str("the whole cluster (**)"),
        }
    }
}

/// Checks a topic pattern as tokens take it: `**`, a topic name, or a
/// topic name followed by `/**` (it and everything under it).
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    let name = match pattern {
        "**" => return Ok(()),
        p => p.strip_suffix("/**").unwrap_or(p),
    };
    woof_consensus::topic::TopicName::new(name)
        .map_err(|e| format!("{pattern:?} is not a topic pattern (a name, NAME/**, or **): {e}"))?;
    Ok(())
}

/// The patterns that cover `topic`: itself, `T/**` for it and each
/// ancestor T, and `**`.
pub fn covering_patterns(topic: &str) -> Vec<String> {
    let mut patterns = vec![topic.to_string(), format!("{topic}/**")];
    let mut rest = topic;
    while let Some((parent, _)) = rest.rsplit_once('/') {
        patterns.push(format!("{parent}/**"));
        rest = parent;
    }
    patterns.push("**".into());
    patterns
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or one that is malformed, not signed by the root key,
    /// expired or revoked: UNAUTHENTICATED.
    Unauthenticated(String),
    /// A good token that does not grant this: PERMISSION_DENIED.
    Denied(String),
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Status {
        match r {
            Refusal::Unauthenticated(why) => Status::unauthenticated(why),
            Refusal::Denied(why) => Status::permission_denied(why),
        }
    }
}

/// A decision, and when it was made.
type Decided = (Result<(), Refusal>, Instant);

/// A verified token, with the decisions made for it.
struct Verified {
    token: Biscuit,
    /// Its revocation ids (one per block): any of them revoked refuses it.
    ids: Vec<Vec<u8>>,
    decisions: Mutex<HashMap<(Op, String), Decided>>,
}

/// A request's token, verified: what [`Authority::check`] answers, for
/// further checks of the same request (cutting a listing).
#[derive(Clone)]
pub struct Grant(Arc<Verified>);

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the token: it is a credential.
        f.debug_struct("Grant")
            .field("ids", &self.0.ids.len())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Cache {
    tokens: HashMap<Arc<str>, Arc<Verified>>,
    refused: HashMap<Arc<str>, Refusal>,
}

/// What a node that requires tokens checks them with.
pub struct Authority {
    root: PublicKey,
    revoked: Revoked,
    cache: Mutex<Cache>,
}

impl Authority {
    pub fn new(root: PublicKey, revoked: Revoked) -> Self {
        Self {
            root,
            revoked,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// The revoked ids this authority refuses.
    pub fn revoked(&self) -> &Revoked {
        &self.revoked
    }

    /// Checks the request's token (`authorization: Bearer TOKEN`) grants
    /// `op` on `scope`.
    pub fn check(&self, metadata: &MetadataMap, op: Op, scope: Scope) -> Result<Grant, Status> {
        let grant = self.authenticate(metadata)?;
        self.allowed(&grant, op, scope)?;
        Ok(grant)
    }

    /// Verifies the request's token, for a stream whose messages each name
    /// what they need ([`allowed`](Self::allowed) then checks each).
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Grant, Status> {
        self.verify(bearer(metadata)?)
    }

    /// Whether `grant` allows `op` on `scope` (revocation checked again).
    pub fn allowed(&self, grant: &Grant, op: Op, scope: Scope) -> Result<(), Refusal> {
        let verified = &grant.0;
        if let Some(id) = verified.ids.iter().find(|id| self.revoked.contains(id)) {
            return Err(Refusal::Unauthenticated(format!(
                "the token was revoked (id {})",
                hex(id)
            )));
        }
        let key = (
            op,
            match scope {
                Scope::Topic(t) => t.to_string(),
                // Not a topic name (those have no upper case or spaces).
                Scope::Listing => "LISTING".into(),
                Scope::Cluster => "CLUSTER".into(),
            },
        );
        let now = Instant::now();
        {
            let decisions = verified.decisions.lock().expect("decisions poisoned");
            if let Some((decided, at)) = decisions.get(&key)
                && now.duration_since(*at) < DECISION_TTL
            {
                return decided.clone();
            }
        }
        let decided = decide(&verified.token, op, scope);
        let mut decisions = verified.decisions.lock().expect("decisions poisoned");
        if decisions.len() >= DECISIONS_PER_TOKEN_MAX {
            decisions.clear();
        }
        decisions.insert(key, (decided.clone(), now));
        decided
    }

    /// Verifies a token's signatures against the root key (cached).
    fn verify(&self, text: &str) -> Result<Grant, Status> {
        {
            let cache = self.cache.lock().expect("token cache poisoned");
            if let Some(v) = cache.tokens.get(text) {
                return Ok(Grant(v.clone()));
            }
            if let Some(refusal) = cache.refused.get(text) {
                return Err(refusal.clone().into());
            }
        }
        let key: Arc<str> = Arc::from(text);
        match Biscuit::from_base64(text, self.root) {
            Ok(token) => {
                let verified = Arc::new(Verified {
                    ids: token.revocation_identifiers(),
                    token,
                    decisions: Mutex::new(HashMap::new()),
                });
                let mut cache = self.cache.lock().expect("token cache poisoned");
                if cache.tokens.len() >= TOKENS_CACHED_MAX {
                    evict_half(&mut cache.tokens);
                }
                cache.tokens.insert(key, verified.clone());
                Ok(Grant(verified))
            }
            Err(e) => {
                let refusal = Refusal::Unauthenticated(match e {
                    TokenError::Format(biscuit_auth::error::Format::Signature(_)) => {
                        "the token is not signed by this cluster's root key".into()
                    }
                    TokenError::Format(biscuit_auth::error::Format::UnknownPublicKey) => {
                        "the token is not signed by this cluster's root key".into()
                    }
                    TokenError::Base64(_) => "the token is not base64 text".into(),
                    other => format!("the token is malformed ({other})"),
                });
                let mut cache = self.cache.lock().expect("token cache poisoned");
                if cache.refused.len() >= REFUSED_CACHED_MAX {
                    cache.refused.clear();
                }
                cache.refused.insert(key, refusal.clone());
                Err(refusal.into())
            }
        }
    }
}

/// Drops about half the entries (whichever the map yields first).
fn evict_half<V>(map: &mut HashMap<Arc<str>, V>) {
    let drop: Vec<Arc<str>> = map.keys().take(map.len() / 2 + 1).cloned().collect();
    for k in drop {
        map.remove(&k);
    }
}

/// The token text from `authorization: Bearer TOKEN`.
fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
    let Some(value) = metadata.get("authorization") else {
        return Err(Status::unauthenticated(
            "this node requires a token: send `authorization: Bearer TOKEN` \
             (woof --token or WOOF_TOKEN)",
        ));
    };
    if value.len() > TOKEN_BYTES_MAX + "Bearer ".len() {
        return Err(Status::unauthenticated(format!(
            "the token is {} bytes; at most {TOKEN_BYTES_MAX} are read",
            value.len()
        )));
    }
    let text = value
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .ok_or_else(|| Status::unauthenticated("the authorization header is not `Bearer TOKEN`"))?;
    Ok(token.trim())
}

/// Runs the token's Datalog for one request.
fn decide(token: &Biscuit, op: Op, scope: Scope) -> Result<(), Refusal> {
    let denied = || Refusal::Denied(format!("the token does not grant {op} on {scope}"));
    let mut facts: Vec<Fact> = vec![fact("operation", &[string(op.as_str())])];
    let policy = match scope {
        Scope::Topic(topic) => {
            if woof_consensus::topic::TopicName::new(topic).is_err() {
                return Err(Refusal::Denied(format!(
                    "{topic:?} is not a topic name, so no token grants {op} on it"
                )));
            }
            for p in covering_patterns(topic) {
                facts.push(fact("topic_match", &[string(&p)]));
            }
            "allow if operation($op), topic_match($p), right($p, $op)"
        }
        Scope::Cluster => {
            facts.push(fact("topic_match", &[string("**")]));
            "allow if operation($op), topic_match($p), right($p, $op)"
        }
        Scope::Listing => {
            facts.push(fact("listing", &[biscuit_auth::builder::boolean(true)]));
            "allow if listing(true), operation($op), right($p, $op)"
        }
    };
    let mut builder = AuthorizerBuilder::new().set_limits(RUN_LIMITS);
    builder = builder
        .fact(fact("time", &[date(&SystemTime::now())]))
        .map_err(|e| Refusal::Denied(format!("cannot check the token: {e}")))?;
    for f in facts {
        builder = builder
            .fact(f)
            .map_err(|e| Refusal::Denied(format!("cannot check the token: {e}")))?;
    }
    builder = builder
        .policy(policy)
        .map_err(|e| Refusal::Denied(format!("cannot check the token: {e}")))?;
    let mut authorizer = builder
        .build(token)
        .map_err(|e| Refusal::Denied(format!("cannot check the token: {e}")))?;
    match authorizer.authorize() {
        Ok(_) => Ok(()),
        Err(TokenError::FailedLogic(
            Logic::Unauthorized { checks, .. } | Logic::NoMatchingPolicy { checks },
        )) => {
            let expired = checks.iter().any(|c| match c {
                FailedCheck::Block(b) => b.rule.contains("time("),
                FailedCheck::Authorizer(a) => a.rule.contains("time("),
            });
            if expired {
                Err(Refusal::Unauthenticated("the token has expired".into()))
            } else {
                Err(denied())
            }
        }
        Err(TokenError::RunLimit(e)) => Err(Refusal::Denied(format!(
            "the token is too costly to check ({e})"
        ))),
        Err(e) => Err(Refusal::Denied(format!("{} ({e})", denied_text(op, scope)))),
    }
}

fn denied_text(op: Op, scope: Scope) -> String {
    format!("the token does not grant {op} on {scope}")
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses lower- or upper-case hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_cover_a_topic_and_its_ancestors() {
        assert_eq!(
            covering_patterns("farm/north/x"),
            [
                "farm/north/x",
                "farm/north/x/**",
                "farm/north/**",
                "farm/**",
                "**"
            ]
        );
        assert_eq!(covering_patterns("a"), ["a", "a/**", "**"]);
        for good in ["**", "farm/**", "farm/north/x"] {
            assert!(check_pattern(good).is_ok(), "{good}");
        }
        for bad in ["", "farm/*", "farm/**/x", "Farm", "farm//x", "**/x"] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(
            unhex(&hex(&[0, 1, 0xab, 0xff])),
            Some(vec![0, 1, 0xab, 0xff])
        );
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
