//! Placement expressions: where a handler runs (DESIGN.md, "Placement").
//!
//! ```text
//! expr   := term ('|' term)*
//! term   := factor ('&' factor)*
//! factor := '~' factor | '(' expr ')' | call
//! call   := 'leader()' | 'replica()' | 'adaptive()' | 'all(' expr ')'
//!         | 'tier(' WORD ')' | 'capability(' WORD ')' | 'node(' WORD ')'
//!         | 'attr(' WORD '=' WORD ')'
//! ```
//!
//! An expression is a test of a node ([`Expr::matches`]); [`choose`] picks
//! the node a handler runs on among the live ones that pass: the topic's
//! leader if it passes (its elements are there first), else the first by
//! peer id, so every node that looks computes the same answer. A parse
//! error says where (a 1-based column) and what was expected.

use std::fmt;

pub use crate::placement::Candidate;

/// The longest expression accepted, in bytes.
pub const EXPR_BYTES_MAX: usize = 1024;
/// The deepest nesting accepted (a bound on the parser's recursion).
const DEPTH_MAX: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Leader,
    Replica,
    Tier(String),
    Attr(String, String),
    Capability(String),
    Node(String),
    Adaptive,
    All(Box<Expr>),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// Why an expression does not parse: where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based column (in characters).
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

/// What the expression is judged against besides the node.
#[derive(Debug, Clone, Copy)]
pub struct Topic<'a> {
    pub leader: &'a str,
    pub replicas: &'a [String],
}

impl Expr {
    /// Parses `text`; empty text is `leader()`.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        if text.len() > EXPR_BYTES_MAX {
            return Err(ParseError {
                column: 1,
                message: format!(
                    "a placement of {} bytes; at most {EXPR_BYTES_MAX}",
                    text.len()
                ),
            });
        }
        if text.trim().is_empty() {
            return Ok(Self::Leader);
        }
        let mut parser = Parser {
            chars: text.chars().collect(),
            at: 0,
            depth: 0,
        };
        let expr = parser.expr()?;
        parser.skip_space();
        if parser.at < parser.chars.len() {
            return Err(parser.error("`&`, `|` or the end"));
        }
        Ok(expr)
    }

    /// Whether `node` passes, for a topic led and held as `topic` says.
    pub fn matches(&self, node: &Candidate, topic: Topic<'_>) -> bool {
        match self {
            Self::Leader => node.peer.to_string() == topic.leader,
            Self::Replica => {
                let peer = node.peer.to_string();
                topic.replicas.contains(&peer)
            }
            Self::Tier(t) => node.tier.to_string() == *t,
            Self::Attr(k, v) => node.attrs.get(k) == Some(v),
            Self::Capability(c) => node.capabilities.contains(c),
            Self::Node(id) => node.peer.to_string() == *id,
            // Any node may be measured; which runs is decided per invocation.
            Self::Adaptive => true,
            Self::Not(e) => !e.matches(node, topic),
            Self::All(e) => e.matches(node, topic),
            Self::And(a, b) => a.matches(node, topic) && b.matches(node, topic),
            Self::Or(a, b) => a.matches(node, topic) || b.matches(node, topic),
        }
    }

    /// Whether each invocation is placed on its own (`adaptive()`).
    pub fn is_adaptive(&self) -> bool {
        match self {
            Self::Adaptive => true,
            Self::All(e) | Self::Not(e) => e.is_adaptive(),
            Self::And(a, b) | Self::Or(a, b) => a.is_adaptive() || b.is_adaptive(),
            _ => false,
        }
    }

    /// For `all(EXPR)`, EXPR: the handler runs once on every node it
    /// matches, each instance with its own progress.
    pub fn per_node(&self) -> Option<&Expr> {
        match self {
            Self::All(e) => Some(e),
            _ => None,
        }
    }

    /// Why the expression cannot place a handler although it parses:
    /// `all(...)` anywhere but around the whole expression (one instance
    /// per node of a part of an expression means nothing), or around
    /// `adaptive()` (which places each invocation on one node).
    pub fn misplaced(&self) -> Option<&'static str> {
        fn inner(e: &Expr) -> Option<&'static str> {
            match e {
                Expr::All(_) => Some("all(...) must be the whole expression"),
                Expr::Not(e) => inner(e),
                Expr::And(a, b) | Expr::Or(a, b) => inner(a).or_else(|| inner(b)),
                _ => None,
            }
        }
        match self {
            Self::All(e) if e.is_adaptive() => {
                Some("all(...) runs on every node it matches; adaptive() picks one per element")
            }
            Self::All(e) => inner(e),
            e => inner(e),
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Leader => write!(f, "leader()"),
            Self::Replica => write!(f, "replica()"),
            Self::Tier(t) => write!(f, "tier({t})"),
            Self::Attr(k, v) => write!(f, "attr({k}={v})"),
            Self::Capability(c) => write!(f, "capability({c})"),
            Self::Node(n) => write!(f, "node({n})"),
            Self::Adaptive => write!(f, "adaptive()"),
            Self::All(e) => write!(f, "all({e})"),
            Self::Not(e) => write!(f, "~{e}"),
            Self::And(a, b) => write!(f, "({a} & {b})"),
            Self::Or(a, b) => write!(f, "({a} | {b})"),
        }
    }
}

/// The node a handler placed by `expr` runs on, among the live ones of
/// `nodes` (which include the node asking): the leader if it passes, else
/// the first passing node by peer id; `None` if none passes (it waits).
pub fn choose<'a>(expr: &Expr, nodes: &'a [Candidate], topic: Topic<'_>) -> Option<&'a Candidate> {
    let mut passing: Vec<&Candidate> = nodes
        .iter()
        .filter(|c| c.alive && expr.matches(c, topic))
        .collect();
    if let Some(leader) = passing.iter().find(|c| c.peer.to_string() == topic.leader) {
        return Some(leader);
    }
    passing.sort_by_key(|c| c.peer.to_string());
    passing.first().copied()
}

/// The nodes a handler placed by `all(expr)` runs on: every live node of
/// `nodes` that passes `expr`, by peer id, at most
/// [`INSTANCES_MAX`](woof_consensus::topic::handlers::INSTANCES_MAX).
pub fn choose_all<'a>(expr: &Expr, nodes: &'a [Candidate], topic: Topic<'_>) -> Vec<&'a Candidate> {
    let mut passing: Vec<&Candidate> = nodes
        .iter()
        .filter(|c| c.alive && expr.matches(c, topic))
        .collect();
    passing.sort_by_key(|c| c.peer.to_string());
    passing.truncate(woof_consensus::topic::handlers::INSTANCES_MAX);
    passing
}

/// The nodes a handler placed by `expr` runs on now: one (see [`choose`]),
/// or for `all(...)` every match (see [`choose_all`]); none if nothing
/// matches.
pub fn placements<'a>(expr: &Expr, nodes: &'a [Candidate], topic: Topic<'_>) -> Vec<&'a Candidate> {
    match expr.per_node() {
        Some(inner) => choose_all(inner, nodes, topic),
        None => choose(expr, nodes, topic).into_iter().collect(),
    }
}

struct Parser {
    chars: Vec<char>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn error(&self, expected: &str) -> ParseError {
        let found = match self.chars.get(self.at) {
            Some(c) => format!("{c:?}"),
            None => "the end".to_string(),
        };
        ParseError {
            column: self.at + 1,
            message: format!("expected {expected}, found {found}"),
        }
    }

    fn skip_space(&mut self) {
        while self.chars.get(self.at).is_some_and(|c| c.is_whitespace()) {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_space();
        if self.chars.get(self.at) == Some(&c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), ParseError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.error(&format!("`{c}`")))
        }
    }

    fn nested<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, ParseError>,
    ) -> Result<T, ParseError> {
        if self.depth >= DEPTH_MAX {
            return Err(ParseError {
                column: self.at + 1,
                message: format!("nested more than {DEPTH_MAX} deep"),
            });
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.term()?;
        while self.eat('|') {
            left = Expr::Or(Box::new(left), Box::new(self.term()?));
        }
        Ok(left)
    }

    fn term(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.factor()?;
        while self.eat('&') {
            left = Expr::And(Box::new(left), Box::new(self.factor()?));
        }
        Ok(left)
    }

    fn factor(&mut self) -> Result<Expr, ParseError> {
        if self.eat('~') {
            return self.nested(|p| Ok(Expr::Not(Box::new(p.factor()?))));
        }
        if self.eat('(') {
            let e = self.nested(|p| p.expr())?;
            self.expect(')')?;
            return Ok(e);
        }
        self.call()
    }

    /// A run of letters, digits and `_ - . : /` (names, values, peer ids).
    fn word(&mut self) -> Option<String> {
        self.skip_space();
        let start = self.at;
        while self
            .chars
            .get(self.at)
            .is_some_and(|c| c.is_alphanumeric() || "_-.:/".contains(*c))
        {
            self.at += 1;
        }
        (self.at > start).then(|| self.chars[start..self.at].iter().collect())
    }

    fn call(&mut self) -> Result<Expr, ParseError> {
        const FUNCTIONS: &str = "leader(), replica(), tier(T), attr(K=V), capability(C), node(ID), adaptive(), all(EXPR), `~`, or `(`";
        self.skip_space();
        let start = self.at;
        let Some(name) = self.word() else {
            return Err(self.error(FUNCTIONS));
        };
        self.expect('(')?;
        let expr = match name.as_str() {
            "leader" => Expr::Leader,
            "replica" => Expr::Replica,
            "adaptive" => Expr::Adaptive,
            "all" => Expr::All(Box::new(self.nested(|p| p.expr())?)),
            "tier" => {
                let tier = self
                    .word()
                    .ok_or_else(|| self.error("a tier: device, edge or cloud"))?;
                if !["device", "edge", "cloud"].contains(&tier.as_str()) {
                    return Err(ParseError {
                        column: self.at - tier.chars().count() + 1,
                        message: format!("expected a tier: device, edge or cloud, found {tier:?}"),
                    });
                }
                Expr::Tier(tier)
            }
            "capability" => {
                Expr::Capability(self.word().ok_or_else(|| self.error("a capability name"))?)
            }
            "node" => Expr::Node(self.word().ok_or_else(|| self.error("a node's peer id"))?),
            "attr" => {
                let key = self.word().ok_or_else(|| self.error("an attribute key"))?;
                self.expect('=')?;
                let value = self
                    .word()
                    .ok_or_else(|| self.error("an attribute value"))?;
                Expr::Attr(key, value)
            }
            other => {
                return Err(ParseError {
                    column: start + 1,
                    message: format!("expected {FUNCTIONS}, found {other:?}"),
                });
            }
        };
        self.expect(')')?;
        Ok(expr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use woof_overlay::{PeerId, Tier};

    fn node(tier: Tier, attrs: &[(&str, &str)], caps: &[&str]) -> Candidate {
        Candidate {
            peer: PeerId::random(),
            tier,
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
            alive: true,
        }
    }

    #[test]
    fn parses_the_grammar_with_precedence() {
        let e = Expr::parse("tier(edge) & attr(site=north) | ~leader() & capability(gpu)").unwrap();
        assert_eq!(
            e.to_string(),
            "((tier(edge) & attr(site=north)) | (~leader() & capability(gpu)))"
        );
        let e = Expr::parse(" all( tier(cloud) | node(12D3Koo) ) ").unwrap();
        assert_eq!(e.to_string(), "all((tier(cloud) | node(12D3Koo)))");
        assert_eq!(Expr::parse("").unwrap(), Expr::Leader);
        assert_eq!(
            Expr::parse("~(leader() | replica())").unwrap().to_string(),
            "~(leader() | replica())"
        );
    }

    #[test]
    fn errors_say_where_and_what_was_expected() {
        let cases = [
            ("tier(edge", 10, "`)`"),
            ("tier(fog)", 6, "device, edge or cloud"),
            ("leader() &", 11, "leader()"),
            ("leader() leader()", 10, "`&`, `|` or the end"),
            ("lead()", 1, "\"lead\""),
            ("attr(site)", 10, "`=`"),
            ("(leader()", 10, "`)`"),
            ("~", 2, "leader()"),
        ];
        for (text, column, says) in cases {
            let e = Expr::parse(text).unwrap_err();
            assert_eq!(e.column, column, "{text}: {e}");
            assert!(e.message.contains(says), "{text}: {e}");
        }
        let deep = "~".repeat(100) + "leader()";
        assert!(Expr::parse(&deep).unwrap_err().message.contains("nested"));
        let long = "leader() | ".repeat(200) + "leader()";
        assert!(Expr::parse(&long).unwrap_err().message.contains("at most"));
    }

    #[test]
    fn adaptive_is_found_anywhere_in_an_expression() {
        let adaptive = |t: &str| Expr::parse(t).unwrap().is_adaptive();
        assert!(adaptive("adaptive()"));
        assert!(adaptive("tier(edge) & adaptive()"));
        assert!(adaptive("(leader() | adaptive()) & attr(a=b)"));
        assert!(!adaptive("tier(edge) & ~leader()"));
        assert!(!adaptive(""));
    }

    #[test]
    fn matches_and_chooses_the_leader_first_then_by_peer_id() {
        let mut nodes = vec![
            node(Tier::Cloud, &[], &["python"]),
            node(Tier::Edge, &[("site", "north")], &[]),
            node(Tier::Edge, &[("site", "south")], &[]),
            node(Tier::Edge, &[("site", "north")], &[]),
        ];
        nodes[3].alive = false;
        let id = |i: usize| nodes[i].peer.to_string();
        let replicas = [id(0), id(2)];
        let leader = id(2);
        let topic = Topic {
            leader: &leader,
            replicas: &replicas,
        };
        let pick = |text: &str| {
            choose(&Expr::parse(text).unwrap(), &nodes, topic).map(|c| c.peer.to_string())
        };
        assert_eq!(pick("leader()"), Some(id(2)));
        assert_eq!(
            pick("tier(edge)"),
            Some(id(2)),
            "the leader passes: it runs there"
        );
        assert_eq!(
            pick("tier(edge) & ~leader()"),
            Some(id(1)),
            "node 3 is not alive"
        );
        assert_eq!(pick("attr(site=north)"), Some(id(1)));
        assert_eq!(pick("replica() & ~leader()"), Some(id(0)));
        assert_eq!(pick("capability(python)"), Some(id(0)));
        assert_eq!(pick(&format!("node({})", id(1))), Some(id(1)));
        assert_eq!(pick(&format!("node({})", id(3))), None, "not alive");
        assert_eq!(pick("tier(device)"), None);
        assert_eq!(pick("attr(site=east) | capability(gpu)"), None);
        // Among several that pass (the leader not one), the first by peer id.
        let mut passing = [id(0), id(1)];
        passing.sort();
        assert_eq!(pick("~leader()"), Some(passing[0].clone()));
    }

    #[test]
    fn all_places_one_instance_on_every_live_match_and_only_around_everything() {
        let mut nodes = vec![
            node(Tier::Edge, &[], &[]),
            node(Tier::Cloud, &[], &[]),
            node(Tier::Edge, &[], &[]),
            node(Tier::Edge, &[], &[]),
        ];
        nodes[3].alive = false;
        let leader = nodes[1].peer.to_string();
        let topic = Topic {
            leader: &leader,
            replicas: &[],
        };
        let e = Expr::parse("all(tier(edge))").unwrap();
        assert!(e.misplaced().is_none());
        let mut edges = vec![nodes[0].peer.to_string(), nodes[2].peer.to_string()];
        edges.sort();
        let placed: Vec<String> = placements(&e, &nodes, topic)
            .iter()
            .map(|c| c.peer.to_string())
            .collect();
        assert_eq!(placed, edges, "live edge nodes, by peer id");
        let one = placements(&Expr::parse("tier(edge)").unwrap(), &nodes, topic);
        assert_eq!(one.len(), 1);
        assert!(
            placements(&Expr::parse("all(capability(gpu))").unwrap(), &nodes, topic).is_empty()
        );
        for bad in [
            "tier(edge) & all(leader())",
            "~all(tier(edge))",
            "all(all(tier(edge)))",
            "all(adaptive())",
        ] {
            assert!(Expr::parse(bad).unwrap().misplaced().is_some(), "{bad}");
        }
    }
}
