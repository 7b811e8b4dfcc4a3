//! Making root keys and tokens, narrowing tokens offline, and reading their
//! ids: `woof token keygen | create | attenuate | inspect`.
//!
//! Keys are Ed25519, written as biscuit's prefixed hex text
//! (`ed25519-private/HEX`, `ed25519/HEX`). A token is biscuit's URL-safe
//! base64 text.

use std::path::Path;
use std::time::{Duration, SystemTime};

use biscuit_auth::builder::{date, fact, string};
use biscuit_auth::{Biscuit, BlockBuilder, KeyPair, PrivateKey, PublicKey, UnverifiedBiscuit};

use super::{Op, TOKEN_BYTES_MAX, check_pattern, hex};
use crate::error::{Error, Result};

/// Key files are a line of text; anything bigger is the wrong file.
const KEY_FILE_BYTES_MAX: u64 = 4096;
/// The most topic patterns a token or an attenuation names.
pub const PATTERNS_MAX: usize = 64;
/// The longest lifetime a token is given (ten years).
const LIFETIME_MAX: Duration = Duration::from_secs(10 * 365 * 86_400);

/// What a token grants, as `woof token create` takes it.
#[derive(Debug, Clone)]
pub struct Grant {
    pub topics: Vec<String>,
    pub ops: Vec<Op>,
    pub expires_in: Duration,
}

/// A new root key pair: (private file text, public text).
pub fn keygen() -> (String, String) {
    let pair = KeyPair::new();
    (
        format!("{}\n", pair.private().to_prefixed_string()),
        public_text(&pair.public()),
    )
}

/// `ed25519/HEX`.
pub fn public_text(key: &PublicKey) -> String {
    key.to_string()
}

/// Writes a new root key pair to `out` (mode 0600) and `out.pub`; returns
/// the public key's text.
pub fn keygen_to(out: &Path) -> Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (private, public) = keygen();
    let io = |what: &Path| {
        let what = what.display().to_string();
        move |source| Error::Io {
            context: format!("writing {what}"),
            source,
        }
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(io(out))?;
    file.write_all(private.as_bytes()).map_err(io(out))?;
    let public_path = pub_path(out);
    std::fs::write(&public_path, format!("{public}\n")).map_err(io(&public_path))?;
    Ok(public)
}

/// `FILE.pub`.
pub fn pub_path(private: &Path) -> std::path::PathBuf {
    let mut name = private.as_os_str().to_owned();
    name.push(".pub");
    name.into()
}

fn read_key_file(path: &Path) -> Result<String> {
    let bad = |reason: String| Error::Usage(format!("key file {}: {reason}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if meta.len() > KEY_FILE_BYTES_MAX {
        return Err(bad(format!("{} bytes is too large for a key", meta.len())));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    Ok(text.trim().to_string())
}

/// Reads a private root key (`woof token keygen`'s file).
pub fn load_private(path: &Path) -> Result<KeyPair> {
    let text = read_key_file(path)?;
    let key: PrivateKey = text.parse().map_err(|e| {
        Error::Usage(format!(
            "key file {}: not a private key from `woof token keygen` ({e})",
            path.display()
        ))
    })?;
    Ok(KeyPair::from(&key))
}

/// Reads a public root key (`root.key.pub`, or the text itself).
pub fn load_public(path: &Path) -> Result<PublicKey> {
    let text = read_key_file(path)?;
    parse_public(&text).map_err(|e| Error::Usage(format!("key file {}: {e}", path.display())))
}

pub fn parse_public(text: &str) -> Result<PublicKey, String> {
    if text.starts_with("ed25519-private/") || text.starts_with("secp256r1-private/") {
        return Err("this is a private key: nodes take the public one (root.key.pub)".into());
    }
    text.trim()
        .parse()
        .map_err(|e| format!("not a public key such as ed25519/HEX ({e})"))
}

/// Parses `--ops read,append`.
pub fn parse_ops(text: &str) -> Result<Vec<Op>> {
    let mut ops = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let op = Op::parse(part).ok_or_else(|| {
            Error::Usage(format!(
                "{part:?} is not an operation: read, append, subscribe, admin or deploy"
            ))
        })?;
        if !ops.contains(&op) {
            ops.push(op);
        }
    }
    if ops.is_empty() {
        return Err(Error::Usage("--ops names no operation".into()));
    }
    Ok(ops)
}

/// Parses `--topics 'farm/**,lab/x'` (or repeated).
pub fn parse_topics(list: &[String]) -> Result<Vec<String>> {
    let mut topics = Vec::new();
    for part in list
        .iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        check_pattern(part).map_err(Error::Usage)?;
        if !topics.iter().any(|t| t == part) {
            topics.push(part.to_string());
        }
    }
    if topics.is_empty() {
        return Err(Error::Usage("--topics names no topic pattern".into()));
    }
    if topics.len() > PATTERNS_MAX {
        return Err(Error::Usage(format!(
            "at most {PATTERNS_MAX} topic patterns"
        )));
    }
    Ok(topics)
}

/// Parses `--expires 30d` (also `s`, `m`, `h`, `w`).
pub fn parse_lifetime(text: &str) -> Result<Duration> {
    let text = text.trim();
    let bad = || {
        Error::Usage(format!(
            "--expires {text:?}: a lifetime such as 90s, 15m, 1h, 30d or 2w"
        ))
    };
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    let secs = number.checked_mul(unit_secs).ok_or_else(bad)?;
    let lifetime = Duration::from_secs(secs);
    if lifetime.is_zero() || lifetime > LIFETIME_MAX {
        return Err(Error::Usage(format!(
            "--expires {text:?}: more than 0 and at most 10 years"
        )));
    }
    Ok(lifetime)
}

fn token_error(what: &str) -> impl Fn(biscuit_auth::error::Token) -> Error + '_ {
    move |e| Error::Usage(format!("{what}: {e}"))
}

/// The expiry check a block carries.
fn expiry_check(lifetime: Duration) -> String {
    let at = SystemTime::now() + lifetime;
    // `date` gives the Datalog term; its text form is what checks take.
    format!("check if time($time), $time <= {}", date(&at))
}

/// A new token signed by `root`.
pub fn create(root: &KeyPair, grant: &Grant) -> Result<String> {
    let mut builder = Biscuit::builder();
    for topic in &grant.topics {
        for op in &grant.ops {
            builder = builder
                .fact(fact("right", &[string(topic), string(op.as_str())]))
                .map_err(token_error("making the token"))?;
        }
    }
    builder = builder
        .check(expiry_check(grant.expires_in).as_str())
        .map_err(token_error("making the token"))?;
    let token = builder
        .build(root)
        .map_err(token_error("making the token"))?;
    encode(&token)
}

fn encode(token: &Biscuit) -> Result<String> {
    let text = token
        .to_base64()
        .map_err(token_error("encoding the token"))?;
    if text.len() > TOKEN_BYTES_MAX {
        return Err(Error::Usage(format!(
            "the token would be {} bytes; nodes read at most {TOKEN_BYTES_MAX}",
            text.len()
        )));
    }
    Ok(text)
}

/// What an attenuation narrows a token to; `None` leaves that part as it
/// was.
#[derive(Debug, Clone, Default)]
pub struct Narrowing {
    pub topics: Option<Vec<String>>,
    pub ops: Option<Vec<Op>>,
    pub expires_in: Option<Duration>,
}

/// A narrower token made from `token` by its holder: one more block of
/// checks, signed with the token's own ephemeral key. No root key is needed,
/// and the result cannot grant more than `token` did.
pub fn attenuate(token: &str, narrowing: &Narrowing) -> Result<String> {
    if narrowing.topics.is_none() && narrowing.ops.is_none() && narrowing.expires_in.is_none() {
        return Err(Error::Usage(
            "give --topics, --ops or --expires to narrow the token by".into(),
        ));
    }
    let token =
        UnverifiedBiscuit::from_base64(token.trim()).map_err(token_error("reading the token"))?;
    let mut block = BlockBuilder::new();
    if let Some(topics) = &narrowing.topics {
        // A listing (topic list, cluster status) names no topic: it stays
        // allowed, and the node cuts its answer to what the token may read.
        let mut check = String::from("check if listing(true)");
        for t in topics {
            check.push_str(&format!(" or topic_match(\"{t}\")"));
        }
        block = block
            .check(check.as_str())
            .map_err(token_error("narrowing the token"))?;
    }
    if let Some(ops) = &narrowing.ops {
        let check = ops
            .iter()
            .map(|op| format!("operation(\"{op}\")"))
            .collect::<Vec<_>>()
            .join(" or ");
        block = block
            .check(format!("check if {check}").as_str())
            .map_err(token_error("narrowing the token"))?;
    }
    if let Some(lifetime) = narrowing.expires_in {
        block = block
            .check(expiry_check(lifetime).as_str())
            .map_err(token_error("narrowing the token"))?;
    }
    let narrowed = token
        .append(block)
        .map_err(token_error("narrowing the token"))?;
    let text = narrowed
        .to_base64()
        .map_err(token_error("encoding the token"))?;
    if text.len() > TOKEN_BYTES_MAX {
        return Err(Error::Usage(format!(
            "the token would be {} bytes; nodes read at most {TOKEN_BYTES_MAX}",
            text.len()
        )));
    }
    Ok(text)
}

/// A token's revocation ids, one per block, oldest first: revoking the
/// first revokes it and everything made from it; revoking the last only
/// this attenuation. And its Datalog, block by block.
pub fn inspect(token: &str) -> Result<(Vec<String>, String)> {
    let token =
        UnverifiedBiscuit::from_base64(token.trim()).map_err(token_error("reading the token"))?;
    let ids = token
        .revocation_identifiers()
        .iter()
        .map(|id| hex(id))
        .collect();
    let mut source = String::new();
    for i in 0..token.block_count() {
        let text = token.print_block_source(i).unwrap_or_default();
        source.push_str(&format!("block {i}:\n{text}\n"));
    }
    Ok((ids, source))
}

/// The id that revokes `token` and all made from it (its first block's).
pub fn token_id(token: &str) -> Result<String> {
    let (ids, _) = inspect(token)?;
    ids.into_iter()
        .next()
        .ok_or_else(|| Error::Usage("the token has no blocks".into()))
}

#[cfg(test)]
mod tests {
    use super::super::{Authority, Refusal, Revoked, Scope};
    use super::*;

    fn authority(root: &KeyPair) -> Authority {
        Authority::new(root.public(), Revoked::default())
    }

    fn grant(token: &str, a: &Authority) -> super::super::Grant {
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert("authorization", format!("Bearer {token}").parse().unwrap());
        a.check(&md, Op::Read, Scope::Listing)
            .or_else(|_| a.check(&md, Op::Append, Scope::Listing))
            .expect("a good token")
    }

    #[test]
    fn a_token_grants_what_it_names_and_an_attenuation_narrows_it() {
        let root = KeyPair::new();
        let a = authority(&root);
        let token = create(
            &root,
            &Grant {
                topics: vec!["farm/**".into()],
                ops: vec![Op::Read, Op::Append],
                expires_in: Duration::from_secs(3600),
            },
        )
        .unwrap();
        let g = grant(&token, &a);
        assert_eq!(
            a.allowed(&g, Op::Read, Scope::Topic("farm/south/x")),
            Ok(())
        );
        assert_eq!(a.allowed(&g, Op::Append, Scope::Topic("farm")), Ok(()));
        assert!(matches!(
            a.allowed(&g, Op::Admin, Scope::Topic("farm/x")),
            Err(Refusal::Denied(_))
        ));
        assert!(matches!(
            a.allowed(&g, Op::Read, Scope::Topic("lab/x")),
            Err(Refusal::Denied(_))
        ));
        assert!(matches!(
            a.allowed(&g, Op::Read, Scope::Cluster),
            Err(Refusal::Denied(_))
        ));

        let north = attenuate(
            &token,
            &Narrowing {
                topics: Some(vec!["farm/north/**".into()]),
                ops: Some(vec![Op::Read]),
                expires_in: None,
            },
        )
        .unwrap();
        let n = grant(&north, &a);
        assert_eq!(
            a.allowed(&n, Op::Read, Scope::Topic("farm/north/x")),
            Ok(())
        );
        assert_eq!(a.allowed(&n, Op::Read, Scope::Listing), Ok(()));
        let Err(Refusal::Denied(why)) = a.allowed(&n, Op::Read, Scope::Topic("farm/south/x"))
        else {
            panic!("farm/south/x allowed");
        };
        assert!(
            why.contains("read") && why.contains("farm/south/x"),
            "{why}"
        );
        assert!(matches!(
            a.allowed(&n, Op::Append, Scope::Topic("farm/north/x")),
            Err(Refusal::Denied(_))
        ));
        // Its ids: the original's, then its own block's.
        let (ids, _) = inspect(&north).unwrap();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0], token_id(&token).unwrap());
    }

    #[test]
    fn expired_revoked_and_foreign_tokens_are_unauthenticated() {
        let root = KeyPair::new();
        let a = authority(&root);
        let token = create(
            &root,
            &Grant {
                topics: vec!["**".into()],
                ops: vec![Op::Read],
                expires_in: Duration::from_secs(1),
            },
        )
        .unwrap();
        let g = grant(&token, &a);
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(
            a.allowed(&g, Op::Read, Scope::Topic("x")),
            Err(Refusal::Unauthenticated("the token has expired".into()))
        );

        let token = create(
            &root,
            &Grant {
                topics: vec!["**".into()],
                ops: vec![Op::Read],
                expires_in: Duration::from_secs(3600),
            },
        )
        .unwrap();
        let g = grant(&token, &a);
        assert_eq!(a.allowed(&g, Op::Read, Scope::Topic("x")), Ok(()));
        a.revoked()
            .insert(super::super::unhex(&token_id(&token).unwrap()).unwrap());
        assert!(matches!(
            a.allowed(&g, Op::Read, Scope::Topic("x")),
            Err(Refusal::Unauthenticated(_))
        ));

        let other = authority(&KeyPair::new());
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert("authorization", format!("Bearer {token}").parse().unwrap());
        let refused = other.check(&md, Op::Read, Scope::Topic("x")).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        md.insert("authorization", "Bearer AAAA".parse().unwrap());
        assert_eq!(
            a.check(&md, Op::Read, Scope::Topic("x"))
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn lifetimes_ops_and_keys_parse() {
        assert_eq!(
            parse_lifetime("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert!(parse_lifetime("0s").is_err());
        assert!(parse_lifetime("5y").is_err());
        assert_eq!(
            parse_ops("read, append,read").unwrap(),
            [Op::Read, Op::Append]
        );
        assert!(parse_ops("write").is_err());
        let (private, public) = keygen();
        let pair = KeyPair::from(&private.trim().parse::<PrivateKey>().unwrap());
        assert_eq!(parse_public(&public).unwrap(), pair.public());
        assert!(parse_public(private.trim()).is_err());
    }
}
