//! `swarmkv txn [--file F]`: a transaction within one partition, written as etcdctl writes
//! one: compares, a blank line, the operations run if every compare holds, a blank line, the
//! operations run otherwise.
//!
//! ```text
//! mod("{acct}/a") = "7"
//! value("{acct}/b") != "frozen"
//!
//! put {acct}/a "3"
//! put {acct}/b "9"
//!
//! get {acct}/a
//! ```
//!
//! A compare is `TARGET("KEY") OP "GIVEN"`: TARGET is `value`, `version`, `create`, `mod` or
//! `lease` (a hex id, "0" for none), OP is `=`, `!=`, `<` or `>`. An operation is `put KEY
//! VALUE [--lease=ID]`, `get KEY`, `del KEY` or `del --prefix PREFIX`. Keys and values are bare
//! words or double-quoted strings (`\"` and `\\` inside).

use std::io::Read as _;
use std::path::PathBuf;

use clap::Args;
use swarmkv::core::parse_lease_id;
use swarmkv_store::{CompareOp, CompareTarget, Txn, TxnCompare, TxnOp, TxnOpResult};

use super::transport::{Need, TransportArgs};
use super::{say, show, CliError};

/// Run a transaction: compares, then one of two lists of operations, atomically
///
/// Reads the transaction from --file or stdin in etcdctl's form: compare lines, a blank line,
/// the success operations, a blank line, the failure operations. Every key must live in one
/// partition: give keys that belong together a common hash tag, e.g. {user:42}/name and
/// {user:42}/email. Prints SUCCESS or FAILURE and what each operation of that branch did;
/// exits 0 when the compares held, 1 when they did not (the failure branch ran).
#[derive(Args, Debug)]
pub struct TxnCmd {
    /// Read the transaction from this file instead of stdin.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub transport: TransportArgs,
}

impl TxnCmd {
    pub async fn run(self) -> Result<(), CliError> {
        let text = match &self.file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?,
            None => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| CliError::Usage(format!("cannot read stdin: {e}")))?;
                text
            }
        };
        let txn = parse_txn(&text).map_err(CliError::Usage)?;
        let target = self.transport.connect(Need::Keys).await?;
        let ran = txn.clone();
        let r = target
            .client
            .txn(txn)
            .await
            .map_err(|e| CliError::from_client(e, format!("txn via {}", target.via)))?;
        say(if r.succeeded { "SUCCESS" } else { "FAILURE" })?;
        let branch = if r.succeeded {
            &ran.success
        } else {
            &ran.failure
        };
        for (op, result) in branch.iter().zip(&r.results) {
            say(describe(op, result))?;
        }
        say(format!("rev {}", r.revision))?;
        if r.succeeded {
            Ok(())
        } else {
            Err(CliError::CasFailed("the failure branch ran".into()))
        }
    }
}

/// One line of output per operation.
fn describe(op: &TxnOp, result: &TxnOpResult) -> String {
    match (op, result) {
        (TxnOp::Put { key, .. }, _) => format!("put {}", show(key)),
        (TxnOp::Delete { key }, TxnOpResult::Delete { deleted }) => {
            format!("del {}: {}", show(key), if *deleted { 1 } else { 0 })
        }
        (TxnOp::Get { key }, TxnOpResult::Get(Some(r))) => format!(
            "get {}: {} (mod_rev {}, version {})",
            show(key),
            show(&r.value),
            r.mod_rev,
            r.version
        ),
        (TxnOp::Get { key }, TxnOpResult::Get(None)) => format!("get {}: absent", show(key)),
        (TxnOp::DeleteRange { start, .. }, TxnOpResult::DeleteRange { deleted }) => {
            format!("del --prefix {}: {deleted}", show(start))
        }
        (op, result) => format!("{op:?}: {result:?}"),
    }
}

/// Splits a line into words: bare runs of non-space, or double-quoted strings with `\"` and
/// `\\` escapes.
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(e @ ('"' | '\\')) => word.push(e),
                        Some(e) => return Err(format!("unknown escape \\{e} in {line:?}")),
                        None => return Err(format!("unterminated string in {line:?}")),
                    },
                    Some(c) => word.push(c),
                    None => return Err(format!("unterminated string in {line:?}")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        out.push(word);
    }
    Ok(out)
}

/// `TARGET("KEY") OP "GIVEN"`.
fn parse_compare(line: &str) -> Result<TxnCompare, String> {
    let bad = |why: &str| format!("compare {line:?}: {why}; e.g. mod(\"k\") = \"7\"");
    let open = line.find('(').ok_or_else(|| bad("no ("))?;
    let target = line[..open].trim();
    let rest = &line[open + 1..];
    let close = rest.rfind(')').ok_or_else(|| bad("no )"))?;
    let key = match words(&rest[..close])?.as_slice() {
        [k] => k.clone(),
        _ => return Err(bad("one key inside the parentheses")),
    };
    let tail = words(&rest[close + 1..])?;
    let [op, given] = tail.as_slice() else {
        return Err(bad("an operator and a value after the key"));
    };
    let op = match op.as_str() {
        "=" | "==" => CompareOp::Equal,
        "!=" => CompareOp::NotEqual,
        "<" => CompareOp::Less,
        ">" => CompareOp::Greater,
        _ => return Err(bad("the operator is one of = != < >")),
    };
    let number = || {
        given
            .parse::<u64>()
            .map_err(|_| bad("this target compares with a number"))
    };
    let target = match target {
        "value" | "val" => CompareTarget::Value(given.clone().into_bytes()),
        "version" | "ver" => CompareTarget::Version(number()?),
        "create" | "create_rev" | "c" => CompareTarget::CreateRevision(number()?),
        "mod" | "mod_rev" | "m" => CompareTarget::ModRevision(number()?),
        "lease" => CompareTarget::Lease(if given == "0" {
            0
        } else {
            parse_lease_id(given).ok_or_else(|| bad("not a lease id"))?
        }),
        _ => return Err(bad("the target is value, version, create, mod or lease")),
    };
    Ok(TxnCompare {
        key: key.into_bytes(),
        target,
        op,
    })
}

/// `put KEY VALUE [--lease=ID]`, `get KEY`, `del KEY`, `del --prefix PREFIX`.
fn parse_op(line: &str) -> Result<TxnOp, String> {
    let w = words(line)?;
    let bad = |why: &str| format!("operation {line:?}: {why}");
    match w.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["put", key, value] => Ok(TxnOp::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            lease: 0,
        }),
        ["put", key, value, flag] if flag.starts_with("--lease=") => Ok(TxnOp::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            lease: parse_lease_id(&flag["--lease=".len()..])
                .ok_or_else(|| bad("--lease takes a hex lease id"))?,
        }),
        ["get", key] => Ok(TxnOp::Get {
            key: key.as_bytes().to_vec(),
        }),
        ["del" | "delete", "--prefix", prefix] => {
            if prefix.is_empty() {
                return Err(bad("an empty prefix would delete everything"));
            }
            Ok(TxnOp::DeleteRange {
                start: prefix.as_bytes().to_vec(),
                end: swarmkv_store::keys::prefix_end(prefix.as_bytes()),
            })
        }
        ["del" | "delete", key] => Ok(TxnOp::Delete {
            key: key.as_bytes().to_vec(),
        }),
        _ => Err(bad(
            "use put KEY VALUE [--lease=ID], get KEY, del KEY or del --prefix PREFIX",
        )),
    }
}

/// The transaction of etcdctl's text form: three blocks separated by blank lines (lines
/// starting with `#` are comments).
pub fn parse_txn(text: &str) -> Result<Txn, String> {
    // Each blank line ends a block; blank lines at the end end nothing.
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let used = lines
        .iter()
        .rposition(|l| !l.is_empty())
        .map_or(0, |i| i + 1);
    let mut blocks: Vec<Vec<&str>> = vec![Vec::new()];
    for line in &lines[..used] {
        match (line.is_empty(), blocks.last_mut()) {
            (true, _) => blocks.push(Vec::new()),
            (false, Some(block)) => block.push(line),
            (false, None) => {}
        }
    }
    if blocks.len() > 3 {
        return Err(
            "a transaction has three blocks separated by blank lines: compares, success \
             operations, failure operations"
                .into(),
        );
    }
    blocks.resize(3, Vec::new());
    let ops = |lines: &[&str]| -> Result<Vec<TxnOp>, String> {
        lines.iter().map(|l| parse_op(l)).collect()
    };
    Ok(Txn {
        compares: blocks[0]
            .iter()
            .map(|l| parse_compare(l))
            .collect::<Result<_, _>>()?,
        success: ops(&blocks[1])?,
        failure: ops(&blocks[2])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcdctl_text_parses_into_compares_and_branches() -> Result<(), String> {
        let txn = parse_txn(
            "mod(\"{a}/x\") = \"7\"\nvalue(\"{a}/y\") != \"say \\\"hi\\\"\"\n\n\
             put {a}/x 3\nput \"{a}/y\" \"two words\" --lease=4d2\ndel --prefix {a}/tmp/\n\n\
             get {a}/x\ndel {a}/y\n",
        )?;
        assert_eq!(txn.compares.len(), 2);
        assert_eq!(txn.compares[0].target, CompareTarget::ModRevision(7));
        assert_eq!(
            txn.compares[1].target,
            CompareTarget::Value(b"say \"hi\"".to_vec())
        );
        assert_eq!(txn.compares[1].op, CompareOp::NotEqual);
        assert_eq!(
            txn.success[1],
            TxnOp::Put {
                key: b"{a}/y".to_vec(),
                value: b"two words".to_vec(),
                lease: 0x4d2
            }
        );
        assert!(
            matches!(&txn.success[2], TxnOp::DeleteRange { end: Some(e), .. } if e == b"{a}/tmp0")
        );
        assert_eq!(txn.failure.len(), 2);
        // No compares: the first block is empty and the success branch always runs.
        let t = parse_txn("\nput k v\n")?;
        assert!(t.compares.is_empty());
        assert_eq!(t.success.len(), 1);
        Ok(())
    }

    #[test]
    fn malformed_lines_are_refused_with_the_line() {
        for bad in [
            "mod(k) = \n\n",
            "age(\"k\") = \"1\"\n\n",
            "mod(\"k\") ~ \"1\"\n\n",
            "version(\"k\") = \"x\"\n\n",
            "\nput k\n",
            "\nupsert k v\n",
            "\ndel --prefix \"\"\n",
            "\nput \"k v\n",
            "a(\"k\") = \"1\"\n\nput k v\n\nget k\n\nget j\n",
        ] {
            assert!(parse_txn(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
